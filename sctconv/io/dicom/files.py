"""The files of a DICOM input (a folder searched recursively, a zip, or a single file standing for its
folder): enumeration, header reading that skips what is not DICOM, and pixel decoding with one-line errors."""

from __future__ import annotations

import io
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from sctconv.errors import SctconvError
from sctconv.io.output_dir import is_staging_name

log = logging.getLogger(__name__)


@dataclass
class DicomFile:
    """A file to read: a path, or a member of a zip archive."""

    name: str  # path or "archive.zip:member" for messages
    open: Callable[[], BinaryIO]


def is_dicom_path(path: Path) -> bool:
    """True for a directory, a .zip archive or a file that starts with the DICOM preamble."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.suffix.lower() == ".zip":
        return zipfile.is_zipfile(path)
    return _has_dicm_preamble(path)


def is_zip(path: Path) -> bool:
    """True for a zip archive named .zip."""
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_file(path: Path) -> DicomFile:
    """The file at ``path``."""
    return DicomFile(str(path), lambda: open(path, "rb"))


def iter_files(path: Path) -> Iterator[DicomFile]:
    """Every file of a folder (recursively) or zip; for another file, every file of its folder."""
    path = Path(path)
    if not path.exists():
        raise SctconvError(f"input {path} does not exist")
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not is_staging_name(d))  # unfinished or abandoned outputs
            for name in sorted(files):
                yield dicom_file(Path(root) / name)
        return
    if is_zip(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SctconvError(f"cannot open zip archive {path}: {exc}") from exc
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            yield DicomFile(f"{path}:{info.filename}", _member_opener(archive, info))
        return
    for sibling in sorted(path.parent.iterdir()):
        if sibling.is_file():
            yield dicom_file(sibling)


def _member_opener(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], BinaryIO]:
    """Opens the member ``info`` of ``archive``, read into memory."""
    return lambda: io.BytesIO(archive.read(info))


def read_header(src: DicomFile) -> Dataset | None:
    """The dataset without pixel data, or None for anything that is not a DICOM file."""
    try:
        with _pydicom_quiet(), src.open() as fh:
            head = fh.read(132)
            fh.seek(0)
            has_preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not has_preamble:
                # Old files without preamble: accept only if they parse as DICOM and look like
                # an image with a series UID; never for obviously foreign extensions.
                lower = src.name.lower()
                if lower.endswith((".nii", ".gz", ".mha", ".mhd", ".nrrd", ".png", ".jpg",
                                   ".txt", ".json", ".csv", ".zip", ".py", ".md", ".pdf")):
                    return None
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SeriesInstanceUID" not in ds or "Rows" not in ds:
                    return None
                return ds
            return pydicom.dcmread(fh, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, NotImplementedError, OverflowError) as exc:
        log.debug("ignoring %s: %s", src.name, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - corrupt files must never stop a folder scan
        log.debug("ignoring %s: %s", src.name, exc)
        return None


def _read_full(src: DicomFile) -> Dataset:
    try:
        with src.open() as fh:
            return pydicom.dcmread(fh, force=True)
    except Exception as exc:  # noqa: BLE001
        raise SctconvError(f"cannot read DICOM file {src.name}: {exc}") from exc


@contextmanager
def _pydicom_quiet() -> Iterator[None]:
    """Keep pydicom's warnings and logged decoder tracebacks from the user: a file that cannot be
    used reaches them as one SctconvError line, with the reason."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def decode_pixels(src: DicomFile, label: str) -> np.ndarray:
    """The stored pixel values of one file (all frames)."""
    with _pydicom_quiet():
        ds = _read_full(src)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise SctconvError(f"series {label}: {src.name} has no pixel data (a truncated file?)")
        try:
            return ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoder plugins raise various types
            raise _decode_error(src.name, ds, exc) from exc


def _decode_error(name: str, ds: Dataset, exc: Exception) -> SctconvError:
    """One line: the transfer syntax and why decoding failed (each plugin's reason), or that no
    decoder for it is installed."""
    ts = _transfer_syntax(ds)
    syntax = f"transfer syntax {UID(ts).name if ts else 'unknown'} ({ts})"
    if "missing dependencies" in str(exc):
        return SctconvError(f"cannot decode the pixel data of {name}: no decoder for its {syntax} is installed "
                            "(install pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm)")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines  # pydicom: "...all plugins:"
    return SctconvError(f"cannot decode the pixel data of {name} ({syntax}): "
                        f"{'; '.join(reasons) or type(exc).__name__}; the file is corrupt or truncated")


def _transfer_syntax(ds: Dataset) -> str:
    if hasattr(ds, "file_meta"):
        return str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    return ""
