"""What ITK's NIfTI reader lets through, checked on the file itself.

For NIfTI-1 and Analyze 7.5 files (.nii, .nii.gz, .hdr/.img pairs) ITK fills data missing from a
truncated file with zeros, reads NaN and infinite voxels as 0, and reads a zero voxel size as 1 and
a negative one as its absolute value with the axis flipped. :func:`check_nifti` refuses all three.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sctconv.errors import SctconvError

HEADER_BYTES = 348
"""sizeof_hdr of NIfTI-1 and Analyze 7.5 (NIfTI-2's 540 is not read by ITK)."""

VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
               1536: 16, 1792: 16, 2048: 32, 2304: 4}
"""Bytes per voxel of each NIfTI datatype code."""

_FLOAT_TYPES = {16: "f4", 64: "f8"}
_CHUNK = 1 << 24
_PAIR = {".hdr": ".img", ".img": ".hdr"}


@dataclass(frozen=True)
class Header:
    """The fields of a NIfTI-1 / Analyze header that say how much data follows and at what size."""

    order: str  # byte order: "<" or ">"
    datatype: int
    dims: tuple[int, ...]  # dim[1..dim[0]]
    pixdim: tuple[float, ...]  # pixdim[1..dim[0]]
    offset: int  # vox_offset: where the data start in the data file

    @property
    def data_bytes(self) -> int:
        return math.prod(self.dims) * VOXEL_BYTES[self.datatype]


def check_nifti(path: Path, what: str) -> None:
    """Refuse a NIfTI-1 or Analyze file (``what``: input, mask...) with a zero or negative voxel size,
    less data than its header says, or NaN or infinite voxels; any other file passes untouched."""
    files = nifti_files(path)
    if files is None:
        return
    header = read_header(files[0])
    if header is None or header.datatype not in VOXEL_BYTES:
        return
    spatial = header.pixdim[:3]
    if not all(math.isfinite(size) and size > 0 for size in spatial):
        raise SctconvError(f"{what} {path} declares a voxel size of {' x '.join(f'{s:g}' for s in spatial)} mm; "
                           "voxel sizes must be positive (fix the file's header)")
    found, nonfinite = scan_data(files[1], header)
    if found < header.data_bytes:
        raise SctconvError(f"{what} {path} is truncated: it holds less voxel data than its header declares "
                           f"({header.data_bytes} bytes); copy or export it again")
    if nonfinite:
        raise SctconvError(f"{what} {path} holds {nonfinite} NaN or infinite voxel(s); fix the file first")


def nifti_files(path: Path) -> tuple[Path, Path] | None:
    """(header file, data file) of a .nii, .nii.gz or .hdr/.img pair (either named, either gzipped),
    or None for other files and pairs with a half missing."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return path, path
    gz = ".gz" if name.endswith(".gz") else ""
    base = path.name[:len(path.name) - len(gz)]
    stem, suffix = base[:-4], base[-4:].lower()
    if suffix not in _PAIR:
        return None
    candidates = [path.with_name(stem + _PAIR[suffix] + z) for z in ((gz, "") if gz else ("", ".gz"))]
    other = next((p for p in candidates if p.is_file()), None)
    if other is None:
        return None
    return (path, other) if suffix == ".hdr" else (other, path)


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def read_header(path: Path) -> Header | None:
    """The header of a NIfTI-1 or Analyze file, or None when ``path`` holds none."""
    try:
        with _open(path) as handle:
            raw = handle.read(HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        return None
    if len(raw) < HEADER_BYTES:
        return None
    order = next((o for o in "<>" if int(np.frombuffer(raw, f"{o}i4", 1)[0]) == HEADER_BYTES), None)
    if order is None:
        return None
    dim = np.frombuffer(raw, f"{order}i2", 8, 40).astype(int)
    if not 1 <= dim[0] <= 7:
        return None
    pixdim = np.frombuffer(raw, f"{order}f4", 8, 76).astype(float)
    return Header(order=order, datatype=int(np.frombuffer(raw, f"{order}i2", 1, 70)[0]),
                  dims=tuple(int(d) for d in dim[1:dim[0] + 1]), pixdim=tuple(float(p) for p in pixdim[1:dim[0] + 1]),
                  offset=max(0, int(np.frombuffer(raw, f"{order}f4", 1, 108)[0])))


def scan_data(path: Path, header: Header) -> tuple[int, int]:
    """(bytes of voxel data read, at most what the header declares; NaN or infinite voxels among them).

    A gzip stream that ends early stops the count (at or below the data it held); a corrupt one is an error.
    """
    dtype = _FLOAT_TYPES.get(header.datatype)
    itemsize = VOXEL_BYTES[header.datatype]
    found = nonfinite = 0
    try:
        with _open(path) as handle:
            handle.seek(header.offset)
            while found < header.data_bytes and (chunk := handle.read(min(_CHUNK, header.data_bytes - found))):
                found += len(chunk)
                if dtype:
                    values = np.frombuffer(chunk, f"{header.order}{dtype}", len(chunk) // itemsize)
                    nonfinite += int(np.count_nonzero(~np.isfinite(values)))
    except EOFError:  # a truncated gzip stream
        pass
    except (OSError, zlib.error) as exc:
        raise SctconvError(f"{path} holds corrupt compressed data ({exc})") from None
    return found, nonfinite
