"""All-or-nothing output folders: work in a hidden staging folder, rename into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sctconv.errors import SctconvError


def check_output_dir(out_dir: Path, overwrite: bool, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse an existing output folder unless asked to overwrite, and any output folder that holds
    (or is) one of ``inputs``, which replacing it would delete. Call before any long work."""
    target = out_dir.resolve()
    for path in inputs:
        if path is not None and (path.resolve() == target or target in path.resolve().parents):
            raise SctconvError(f"output folder {out_dir} holds the input {path}; choose another output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise SctconvError(f"output {out_dir} exists and is not a folder")
    if out_dir.exists() and not overwrite:
        raise SctconvError(f"output folder {out_dir} exists; pass --overwrite to replace it")


@contextmanager
def atomic_output_dir(out_dir: Path, overwrite: bool, inputs: Sequence[Path | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; on success it becomes ``out_dir``.

    On any failure the staging folder is removed and an existing ``out_dir`` is left untouched.
    """
    check_output_dir(out_dir, overwrite, inputs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
