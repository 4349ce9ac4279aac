"""All-or-nothing output folders: work in a hidden staging folder beside the output, then move it into place
with one rename that never replaces what another run wrote meanwhile.

The commit is ``renameat2`` on Linux: ``RENAME_NOREPLACE`` for a new output (plain ``rename`` would replace
an empty folder, and a check before it leaves a window for another run), ``RENAME_EXCHANGE`` with
``--overwrite`` (the previous output and the new one swap names in one step, so the name always holds one
of them). Where the C library, kernel or file system lacks ``renameat2`` (NFS, macOS), ``mkdir`` claims the
name exclusively and ``rename`` replaces that empty folder, and an overwrite takes three renames, undone on
failure (only a SIGKILL between two of them leaves the name free, both outputs in staging folders); Windows'
``rename`` never replaces. A lock file instead would be left behind by a SIGKILL and would not stop a run
that ignores it.

Staging folders are named ``.<output>.sctconv-staging-<host>-<pid>-<random>``: scans skip them, and the next
run whose output goes beside them removes those whose process (on this host) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sctconv import __version__
from sctconv.errors import SctconvError

MARKER = ".sctconv-output"
"""File that sctconv puts in each output folder it completes; --overwrite replaces only folders holding it."""

_STAGING = re.compile(r"\..*\.sctconv-staging-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _libc_renameat2() -> Callable[..., int] | None:
    """The C library's renameat2 (Linux: glibc 2.28+), else None."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


_RENAMEAT2 = _libc_renameat2()


def is_staging_name(name: str) -> bool:
    """True for the name of a staging folder (a run's unfinished output, or what a killed run left)."""
    return _STAGING.fullmatch(name) is not None


def check_output_dir(out_dir: Path, overwrite: bool, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse an existing output folder unless asked to overwrite a previous sctconv output, and any
    output folder that holds (or is) one of ``inputs``, which replacing it would delete. Call before any long work."""
    target = out_dir.resolve()
    for path in inputs:
        if path is not None and (path.resolve() == target or target in path.resolve().parents):
            raise SctconvError(f"output folder {out_dir} holds the input {path}; choose another output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise SctconvError(f"output {out_dir} exists and is not a folder")
    if out_dir.exists() and not overwrite:
        raise SctconvError(f"output folder {out_dir} exists; pass --overwrite to replace it")
    if out_dir.exists() and not (out_dir / MARKER).is_file():
        raise SctconvError(f"output folder {out_dir} exists and is not an sctconv output (no {MARKER} in it); "
                           "--overwrite replaces only those: choose another folder or remove it yourself")


@contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool, inputs: Sequence[Path | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; on success it becomes ``out_dir``.

    On any failure (Ctrl-C and SIGTERM included) the staging folder is removed and an existing ``out_dir``
    is left untouched; when another run created ``out_dir`` meanwhile, this run fails and leaves it.
    """
    check_output_dir(out_dir, overwrite, inputs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir.parent)
    staging = _staging_path(out_dir)
    try:
        staging.mkdir()
        yield staging
        (staging / MARKER).write_text(json.dumps({"sctconv": __version__}) + "\n")
        _commit(staging, out_dir, overwrite)
    finally:
        _remove(staging)  # the unfinished output, or after a swap the previous one


def remove_stale_staging(parent: Path) -> None:
    """Remove the staging folders in ``parent`` whose process on this host is gone (SIGKILL, power cut)."""
    host = socket.gethostname()
    for path in parent.iterdir():
        match = _STAGING.fullmatch(path.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Remove ``folder`` (if there), to the end even when Ctrl-C or SIGTERM come meanwhile: raised after."""
    interrupted = None
    while folder.exists():
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (always assumed on Windows, where os.kill would end it)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _staging_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name[:100]}.sctconv-staging-{socket.gethostname()}-{os.getpid()}-"
                             f"{secrets.token_hex(4)}")


def _commit(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Give the finished ``staging`` the name ``out_dir``; with ``overwrite``, swap it with a previous output."""
    try:
        if overwrite and out_dir.exists():
            check_output_dir(out_dir, overwrite)  # still a previous sctconv output
            _exchange(staging, out_dir)
        else:
            _rename_noreplace(staging, out_dir)
    except FileExistsError:
        raise SctconvError(f"output folder {out_dir} appeared while this run worked (another run writing there?); "
                           "it is left as it is and this run's output is discarded") from None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux rename with ``flags``; False where the C library, kernel or file system does not offer it."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``; FileExistsError when ``dst`` exists, even as an empty folder."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.name == "nt":  # Windows' rename never replaces
        os.rename(src, dst)
        return
    os.mkdir(dst)  # claims the name exclusively; rename then replaces this empty folder in one step
    try:
        os.rename(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(dst)  # only while empty: never a committed output
        raise


def _exchange(a: Path, b: Path) -> None:
    """Swap the names of folders ``a`` and ``b``; on failure both keep theirs."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    aside = _staging_path(b)
    try:
        os.rename(b, aside)
        _rename_noreplace(a, b)
    except BaseException:
        with contextlib.suppress(OSError):
            _rename_noreplace(aside, b)
        raise
    os.rename(aside, a)
