"""Reading source MR / CT / CBCT DICOM series into a SimpleITK image with exact patient geometry.

Rules (see docs/reference ``dicom-output.md`` §1.2 and §2.7):

* Non-image objects (RTSTRUCT, RTDOSE, SEG, SR, DICOMDIR, non-DICOM files) are ignored silently.
* Images are grouped by SeriesInstanceUID and then split by (ImageOrientationPatient, Rows,
  Columns); localizers and minority stacks are dropped with a logged warning.
* Slices are sorted by their position along the slice normal ``cross(row_cosine, col_cosine)``,
  never by InstanceNumber or z. Gaps, uneven spacing (> 1 %), duplicate positions and gantry tilt
  are refused with a message that names the problem; with ``allow_uneven`` gaps and uneven
  spacing are resampled instead (linearly along the normal, onto the most common step).
* A single file stands for its series: the series it belongs to is read from its folder.
* The image is built from numpy with origin = IPP of the first sorted slice, direction columns =
  (row cosine, column cosine, normal) and spacing = (column spacing, row spacing, slice step), so
  that sitk index (i, j, k) is column i, row j, slice k.
* Classic single-frame images and enhanced multi-frame images (geometry from the shared /
  per-frame functional groups) are supported.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from sctconv.errors import SctconvError
from sctconv.io.output_dir import is_staging_name

log = logging.getLogger(__name__)

__all__ = [
    "Resampling",
    "SeriesSummary",
    "SourceSeries",
    "list_series",
    "read_dicom_series",
    "read_series_header",
    "is_dicom_path",
]

# Objects that carry Rows/Columns or pixel data but are not cross-sectional images to convert.
_NON_IMAGE_MODALITIES = {
    "RTSTRUCT", "RTDOSE", "RTPLAN", "RTRECORD", "RTIMAGE", "SEG", "SR", "KO", "PR", "REG",
    "RWV", "DOC", "FID", "PLAN", "AU", "ECG", "HD", "RESP", "SMR", "OSS",
}
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.1.3.10",            # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.481.",    # RT objects (dose, structures, plans, RT image)
    "1.2.840.10008.5.1.4.1.1.66",      # raw data, spatial registration, fiducials, SEG
    "1.2.840.10008.5.1.4.1.1.88.",     # structured reports
    "1.2.840.10008.5.1.4.1.1.11.",     # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",    # encapsulated documents
)
_ENHANCED_KEYWORDS = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")

# Tolerances
_IOP_TOL = 1e-3          # cosines of two slices that belong to the same stack
_SPACING_REL_TOL = 0.01  # uneven slice spacing / gap detection (1 %)
_DUPLICATE_TOL_MM = 1e-3


# --------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------


@dataclass
class SeriesSummary:
    """One line of ``sctconv series DIR``."""

    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    slices: int
    orientation: str  # "axial", "sagittal", "coronal", "oblique" or "unknown"
    rows: int
    columns: int


@dataclass
class Resampling:
    """How an irregular slice stack was put onto a regular grid (``allow_uneven``)."""

    reason: str  # the irregularity, as the refusal would have named it
    original_slice_positions: int
    slices: int
    step_mm: float


@dataclass
class SourceSeries:
    """A source image series, ready for conversion."""

    image: sitk.Image  # float32 values after Rescale Slope/Intercept
    # Headers without pixel data in slice order; index k = image slice k (array axis 0) unless
    # the stack was resampled (then see slice_sources).
    datasets: list[Dataset]
    modality: str
    series_instance_uid: str
    description: str
    # For enhanced multi-frame sources: the 1-based frame number of datasets[k] in its file
    # (for SourceImageSequence > ReferencedFrameNumber); None for single-frame images.
    frame_numbers: list[int | None] | None = None
    resampled: Resampling | None = None  # set when the image is not on the slices' own grid
    # For a resampled image: the indices into datasets that slice k was interpolated from.
    slice_sources: list[tuple[int, ...]] | None = None


# --------------------------------------------------------------------------------------------
# File access (folder, single file, zip)
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
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


def _is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _file_source(path: Path) -> _Source:
    return _Source(str(path), lambda: open(path, "rb"))


def _iter_sources(path: Path) -> Iterator[_Source]:
    """Every file of a folder (recursively) or zip; for another file, every file of its folder."""
    path = Path(path)
    if not path.exists():
        raise SctconvError(f"input {path} does not exist")
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not is_staging_name(d))  # unfinished or abandoned outputs
            for name in sorted(files):
                yield _file_source(Path(root) / name)
        return
    if _is_zip(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SctconvError(f"cannot open zip archive {path}: {exc}") from exc
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            yield _Source(
                f"{path}:{info.filename}",
                lambda info=info: io.BytesIO(archive.read(info)),
            )
        return
    for sibling in sorted(path.parent.iterdir()):
        if sibling.is_file():
            yield _file_source(sibling)


def _read_header(src: _Source) -> Dataset | None:
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


def _read_full(src: _Source) -> Dataset:
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


def _decode(src: _Source, label: str) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Header helpers
# --------------------------------------------------------------------------------------------


def _sop_class(ds: Dataset) -> str:
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def _sop_instance(ds: Dataset) -> str:
    value = str(ds.get("SOPInstanceUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return value


def _transfer_syntax(ds: Dataset) -> str:
    if hasattr(ds, "file_meta"):
        return str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    return ""


def _is_image(ds: Dataset) -> bool:
    if "Rows" not in ds or "Columns" not in ds:
        return False
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return False
    sop = _sop_class(ds)
    if any(sop.startswith(p) for p in _NON_IMAGE_SOP_PREFIXES):
        return False
    return True


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType", None)
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    return [str(v).strip().upper() for v in value]


def int_or_none(value: Any) -> int | None:
    """An IS/US-like value as int, or None when empty or not a number."""
    try:
        if value is None or value == "":
            return None
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_list(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _fmt_mm(x: float) -> str:
    s = f"{x:.3f}".rstrip("0")
    if s.endswith("."):
        s += "0"
    return s


def _orientation_name(iop: np.ndarray | None) -> str:
    if iop is None:
        return "unknown"
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        return "unknown"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < np.cos(np.deg2rad(1.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _item(seq_holder: Dataset | None, seq_keyword: str) -> Dataset | None:
    if seq_holder is None:
        return None
    seq = seq_holder.get(seq_keyword, None)
    if not seq:
        return None
    return seq[0]


# --------------------------------------------------------------------------------------------
# Image entries: one per 2D slice (a single-frame file or one frame of a multi-frame file)
# --------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    src: _Source
    header: Dataset
    frame: int | None  # 1-based frame number for multi-frame files
    rows: int
    cols: int
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: np.ndarray | None  # (row spacing, column spacing)
    slice_thickness: float | None
    slope: float
    intercept: float
    problem: str | None = None  # a reason why this entry's geometry cannot be used


def _entries_from_header(src: _Source, ds: Dataset) -> list[_Entry]:
    rows = int(ds.Rows)
    cols = int(ds.Columns)
    nframes = int_or_none(ds.get("NumberOfFrames", None)) or 1
    enhanced = any(k in ds for k in _ENHANCED_KEYWORDS)
    if nframes > 1 or enhanced:
        return _entries_multiframe(src, ds, rows, cols, nframes)
    thickness = ds.get("SliceThickness", None)
    return [
        _Entry(
            src=src,
            header=ds,
            frame=None,
            rows=rows,
            cols=cols,
            ipp=_float_list(ds.get("ImagePositionPatient", None), 3),
            iop=_float_list(ds.get("ImageOrientationPatient", None), 6),
            pixel_spacing=_float_list(ds.get("PixelSpacing", None), 2),
            slice_thickness=float(thickness) if thickness not in (None, "") else None,
            slope=float(ds.get("RescaleSlope", 1) or 1),
            intercept=float(ds.get("RescaleIntercept", 0) or 0),
        )
    ]


def _entries_multiframe(src: _Source, ds: Dataset, rows: int, cols: int,
                        nframes: int) -> list[_Entry]:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None) or []
    problem = None
    if not per_frame and shared is None:
        problem = (
            f"enhanced multi-frame file {src.name} ({nframes} frames) has no "
            "Shared/PerFrameFunctionalGroupsSequence, so its slice geometry is unknown; "
            "export the series as classic single-frame images"
        )
    elif per_frame and len(per_frame) != nframes:
        problem = (
            f"multi-frame file {src.name} has {len(per_frame)} per-frame functional groups "
            f"for {nframes} frames"
        )

    # A compact header per frame: the top level without the (large) functional groups.
    base = Dataset()
    for elem in ds:
        if elem.keyword in _ENHANCED_KEYWORDS or elem.tag == 0x7FE00010:
            continue
        base.add(elem)
    if hasattr(ds, "file_meta"):
        base.file_meta = ds.file_meta
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if kw in base:
            del base[kw]

    def lookup(frame_groups: Dataset | None, seq_kw: str, attr: str) -> Any:
        for holder in (frame_groups, shared):
            item = _item(holder, seq_kw)
            if item is not None and attr in item:
                return item.get(attr)
        return None

    entries: list[_Entry] = []
    for f in range(nframes):
        groups = per_frame[f] if f < len(per_frame) else None
        ipp = _float_list(lookup(groups, "PlanePositionSequence", "ImagePositionPatient"), 3)
        iop = _float_list(
            lookup(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        )
        spacing = _float_list(lookup(groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
        thickness = lookup(groups, "PixelMeasuresSequence", "SliceThickness")
        slope = lookup(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope in (None, ""):
            slope = ds.get("RescaleSlope", 1) or 1
        if intercept in (None, ""):
            intercept = ds.get("RescaleIntercept", 0) or 0
        header = copy.copy(base)
        if ipp is not None:
            header.ImagePositionPatient = [float(v) for v in ipp]
        if iop is not None:
            header.ImageOrientationPatient = [float(v) for v in iop]
        if spacing is not None:
            header.PixelSpacing = [float(v) for v in spacing]
        entries.append(
            _Entry(
                src=src,
                header=header,
                frame=f + 1,
                rows=rows,
                cols=cols,
                ipp=ipp,
                iop=iop,
                pixel_spacing=spacing,
                slice_thickness=float(thickness) if thickness not in (None, "") else None,
                slope=float(slope),
                intercept=float(intercept),
                problem=problem,
            )
        )
    return entries


# --------------------------------------------------------------------------------------------
# Scanning and grouping
# --------------------------------------------------------------------------------------------


@dataclass
class _Stack:
    """One candidate series: images of one SeriesInstanceUID with one orientation and size."""

    uid: str
    entries: list[_Entry]
    problem: str | None = None

    @property
    def first(self) -> Dataset:
        return self.entries[0].header

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "")

    @property
    def series_number(self) -> int | None:
        return int_or_none(self.first.get("SeriesNumber", None))

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    def summary(self) -> SeriesSummary:
        return SeriesSummary(
            series_instance_uid=self.uid,
            series_number=self.series_number,
            modality=self.modality,
            description=self.description,
            slices=len(self.entries),
            orientation=_orientation_name(self.entries[0].iop),
            rows=self.entries[0].rows,
            columns=self.entries[0].cols,
        )

    def label(self) -> str:
        number = self.series_number
        num = f"#{number}" if number is not None else "#-"
        desc = f" '{self.description}'" if self.description else ""
        uid = self.uid or "(no SeriesInstanceUID)"
        return f"{uid} ({num}, {self.modality or '?'}{desc}, {len(self.entries)} images)"


def _scan(path: Path) -> list[_Stack]:
    by_series: dict[str, list[_Entry]] = {}
    seen_sops: dict[str, str] = {}
    n_files = 0
    for src in _iter_sources(path):
        ds = _read_header(src)
        if ds is None:
            continue
        n_files += 1
        if not _is_image(ds):
            log.debug("ignoring non-image object %s (%s)", src.name, ds.get("Modality", ""))
            continue
        sop = _sop_instance(ds)
        if sop and sop in seen_sops:
            log.warning("ignoring %s: same SOPInstanceUID as %s", src.name, seen_sops[sop])
            continue
        if sop:
            seen_sops[sop] = src.name
        # Normalise SOP Class/Instance UIDs that some exporters keep only in the file meta.
        if not str(ds.get("SOPClassUID", "") or "") and _sop_class(ds):
            ds.SOPClassUID = _sop_class(ds)
        if not str(ds.get("SOPInstanceUID", "") or "") and sop:
            ds.SOPInstanceUID = sop
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        try:
            entries = _entries_from_header(src, ds)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring %s: unreadable image header (%s)", src.name, exc)
            continue
        by_series.setdefault(uid, []).extend(entries)

    stacks: list[_Stack] = []
    for uid, entries in by_series.items():
        stacks.extend(_split_series(uid, entries))
    return stacks


def _split_series(uid: str, entries: list[_Entry]) -> list[_Stack]:
    label = uid or "(no SeriesInstanceUID)"
    localizers = [e for e in entries if "LOCALIZER" in _image_type(e.header)]
    if localizers:
        entries = [e for e in entries if "LOCALIZER" not in _image_type(e.header)]
        log.warning("series %s: ignoring %d localizer image(s)", label, len(localizers))
        if not entries:
            return []

    # Cluster by orientation (tolerant to rounding jitter) and matrix size.
    groups: list[tuple[np.ndarray | None, int, int, list[_Entry]]] = []
    for e in entries:
        for g in groups:
            iop, rows, cols, members = g
            same_iop = (iop is None and e.iop is None) or (
                iop is not None and e.iop is not None and np.max(np.abs(iop - e.iop)) < _IOP_TOL
            )
            if same_iop and rows == e.rows and cols == e.cols:
                members.append(e)
                break
        else:
            groups.append((e.iop, e.rows, e.cols, [e]))

    if len(groups) == 1:
        return [_Stack(uid, groups[0][3])]

    groups.sort(key=lambda g: len(g[3]), reverse=True)
    if len(groups[0][3]) == len(groups[1][3]):
        # No majority: present every stack; reading this UID will ask for a cleaner export.
        desc = "; ".join(
            f"{len(g[3])} images {g[2]}x{g[1]} {_orientation_name(g[0])}" for g in groups
        )
        problem = (
            f"series {label} mixes stacks of different orientation or size ({desc}); "
            "export each stack as its own series"
        )
        return [_Stack(uid, g[3], problem=problem) for g in groups]
    kept = groups[0]
    dropped = groups[1:]
    note = ", ".join(
        f"{len(g[3])} image(s) {g[2]}x{g[1]} {_orientation_name(g[0])}" for g in dropped
    )
    log.warning(
        "series %s: keeping the %d images %dx%d %s and dropping %s",
        label, len(kept[3]), kept[2], kept[1], _orientation_name(kept[0]), note,
    )
    return [_Stack(uid, kept[3])]


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def list_series(path: Path) -> list[SeriesSummary]:
    """Image series under ``path``: a folder (searched recursively), a .zip, or a file's folder."""
    stacks = _scan(Path(path))
    summaries = [s.summary() for s in stacks]
    summaries.sort(key=lambda s: (s.series_number is None, s.series_number or 0,
                                  s.series_instance_uid))
    return summaries


def read_dicom_series(path: Path, series: str | None = None,
                      allow_uneven: bool = False) -> SourceSeries:
    """Read one image series under ``path`` into a float32 SimpleITK image.

    ``series`` is a SeriesInstanceUID or a SeriesNumber (as a string); None picks the only image
    series, else the only MR series, else the only CT series. A single file picks its own series
    (read from the file's folder). ``allow_uneven`` resamples a stack with gaps or uneven
    spacing onto a regular grid instead of refusing it.
    """
    return _load_stack(_find_stack(Path(path), series), allow_uneven)


def read_series_header(path: Path, series: str | None = None) -> Dataset:
    """The header (no pixel data) of one image series under ``path``, picked as by
    :func:`read_dicom_series` but without reading pixels or checking the slice grid."""
    return _find_stack(Path(path), series).first


def _find_stack(path: Path, series: str | None) -> _Stack:
    if path.is_file() and not _is_zip(path):
        series = _series_of_file(path, series)
    stacks = _scan(path)
    if not stacks:
        raise SctconvError(f"no DICOM image series found in {path}")
    return _select(stacks, series, path)


def _series_of_file(path: Path, series: str | None) -> str:
    """The SeriesInstanceUID of the image file ``path`` (which names its own series)."""
    header = _read_header(_file_source(path))
    if header is None or not _is_image(header):
        kind = f" (it is a {header.get('Modality', '') or 'non-image'} object)" if header else ""
        raise SctconvError(f"no DICOM image series found in {path}{kind}")
    if series is not None:
        raise SctconvError(
            f"--series picks a series in a folder or zip, but {path} is a single file of its "
            "own series; give its folder to choose another series"
        )
    return str(header.get("SeriesInstanceUID", "") or "")


def _select(stacks: list[_Stack], series: str | None, path: Path) -> _Stack:
    def listing(cands: list[_Stack]) -> str:
        return "; ".join(s.label() for s in cands)

    if series is not None:
        key = str(series).strip()
        chosen = [s for s in stacks if s.uid == key]
        if not chosen and key.lstrip("+-").isdigit():
            chosen = [s for s in stacks if s.series_number == int(key)]
        if not chosen:
            raise SctconvError(
                f"series {key} not found in {path}; available: {listing(stacks)}"
            )
        uids = {s.uid for s in chosen}
        if len(uids) > 1:
            raise SctconvError(
                f"series number {key} is used by {len(uids)} series in {path}; pick one by "
                f"SeriesInstanceUID: {listing(chosen)}"
            )
        return _single_stack(chosen)

    if len({s.uid for s in stacks}) == 1:
        return _single_stack(stacks)
    for modality in ("MR", "CT"):
        cands = [s for s in stacks if s.modality.upper() == modality]
        if len({s.uid for s in cands}) == 1:
            log.info("several image series found; using the only %s series %s", modality,
                     cands[0].label())
            return _single_stack(cands)
        if cands:
            break
    raise SctconvError(
        f"{path} holds {len(stacks)} image series; choose one with --series "
        f"(SeriesInstanceUID or SeriesNumber): {listing(stacks)}"
    )


def _single_stack(stacks: list[_Stack]) -> _Stack:
    if len(stacks) > 1:
        # Same UID, several stacks without a majority.
        raise SctconvError(stacks[0].problem or f"series {stacks[0].uid} is ambiguous")
    return stacks[0]


def _load_stack(stack: _Stack, allow_uneven: bool) -> SourceSeries:
    label = stack.uid or "(no SeriesInstanceUID)"
    entries = stack.entries
    if stack.problem:
        raise SctconvError(stack.problem)
    for e in entries:
        if e.problem:
            raise SctconvError(e.problem)
    _check_header(stack, label)

    r, c, n = _cosines(entries[0], label)
    positions = np.array([float(np.dot(e.ipp, n)) for e in entries])
    order = np.argsort(positions, kind="stable")
    entries = [entries[i] for i in order]
    positions = positions[order]

    irregular = None
    if len(entries) == 1:
        step = _single_slice_step(entries[0], label)
    else:
        _check_stacking(entries, positions, n, label)
        irregular = _irregularity(positions, label)
        if irregular and not allow_uneven:
            raise SctconvError(
                f"{irregular}; pass --allow-uneven to resample it onto a regular grid"
            )
        step = _most_common_step(np.diff(positions)) if irregular else float(
            (positions[-1] - positions[0]) / (len(positions) - 1))
    spacing_rc = entries[0].pixel_spacing  # (row spacing, column spacing)

    array = _pixels(entries, label)
    resampled = slice_sources = None
    if irregular:
        array, slice_sources, resampled = _resample_stack(array, positions, step, irregular)
        log.warning(
            "%s; resampled its %d slices linearly along the slice normal onto a regular grid of "
            "%d slices %s mm apart (--allow-uneven)",
            irregular, len(entries), resampled.slices, _fmt_mm(step),
        )
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0]), float(step)))
    image.SetOrigin(tuple(float(v) for v in entries[0].ipp))
    image.SetDirection(tuple(float(v) for v in np.column_stack([r, c, n]).ravel()))

    headers = [e.header for e in entries]
    frames = [e.frame for e in entries]
    return SourceSeries(
        image=image,
        datasets=headers,
        modality=stack.modality,
        series_instance_uid=stack.uid,
        description=stack.description,
        frame_numbers=frames if any(f is not None for f in frames) else None,
        resampled=resampled,
        slice_sources=slice_sources,
    )


def _check_header(stack: _Stack, label: str) -> None:
    for e in stack.entries:
        missing = [
            kw for kw, v in (("ImagePositionPatient", e.ipp), ("ImageOrientationPatient", e.iop),
                             ("PixelSpacing", e.pixel_spacing))
            if v is None
        ]
        if missing:
            where = f"{e.src.name}" + (f" frame {e.frame}" if e.frame else "")
            raise SctconvError(
                f"series {label}: {where} has no valid {', '.join(missing)}, so its position "
                "in the patient is unknown"
            )
        if np.any(e.pixel_spacing <= 0):
            raise SctconvError(f"series {label}: {e.src.name} has a non-positive PixelSpacing")
        spp = int_or_none(e.header.get("SamplesPerPixel", 1)) or 1
        if spp != 1:
            raise SctconvError(
                f"series {label} is a colour image ({spp} samples per pixel); "
                "a greyscale MR or CT series is needed"
            )
        photometric = str(e.header.get("PhotometricInterpretation", "MONOCHROME2") or "")
        if photometric == "MONOCHROME1":
            raise SctconvError(
                f"series {label} uses PhotometricInterpretation MONOCHROME1 (inverted grey "
                "scale), which is not a cross-sectional MR/CT encoding sctconv supports"
            )
    ref = stack.entries[0].pixel_spacing
    for e in stack.entries[1:]:
        if np.max(np.abs(e.pixel_spacing - ref)) > 1e-4 * max(1.0, float(np.max(ref))):
            raise SctconvError(
                f"series {label} mixes pixel spacings ({_fmt_mm(ref[0])}x{_fmt_mm(ref[1])} mm "
                f"and {_fmt_mm(e.pixel_spacing[0])}x{_fmt_mm(e.pixel_spacing[1])} mm)"
            )


def _cosines(entry: _Entry, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = entry.iop[:3].copy()
    c = entry.iop[3:].copy()
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(float(np.dot(r, c))) / (nr * nc) > 1e-3:
        raise SctconvError(
            f"series {label} has an invalid ImageOrientationPatient "
            f"{[round(float(v), 6) for v in entry.iop]} (row and column cosines must be "
            "perpendicular unit vectors)"
        )
    r /= nr
    c = c / nc
    c = c - np.dot(c, r) * r
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    return r, c, n


def _single_slice_step(e: _Entry, label: str) -> float:
    """The slice thickness of a one-slice series (SpacingBetweenSlices, SliceThickness, or 1 mm)."""
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        value = e.slice_thickness if kw == "SliceThickness" else e.header.get(kw, None)
        try:
            step = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            step = 0.0
        if step > 0:
            return step
    log.warning("series %s has a single slice without SliceThickness; using 1 mm", label)
    return 1.0


def _check_stacking(entries: list[_Entry], positions: np.ndarray, normal: np.ndarray,
                    label: str) -> None:
    """Refuse duplicate slice positions and stacks sheared off the slice normal (gantry tilt)."""
    diffs = np.diff(positions)
    dup = np.nonzero(diffs < _DUPLICATE_TOL_MM)[0]
    if dup.size:
        k = int(dup[0])
        hint = ""
        a, b = entries[k].header, entries[k + 1].header
        for kw in ("EchoNumbers", "AcquisitionNumber", "TemporalPositionIdentifier",
                   "ImageType", "EchoTime"):
            if str(a.get(kw, "")) != str(b.get(kw, "")):
                hint = f" (they differ in {kw}: several echoes/acquisitions in one series?)"
                break
        raise SctconvError(
            f"series {label} has {dup.size + 1} images at duplicate positions, e.g. slices "
            f"{k + 1} and {k + 2} both at {_fmt_mm(positions[k])} mm along the slice "
            f"normal{hint}"
        )

    p0 = entries[0].ipp
    offsets = np.array([e.ipp - p0 for e in entries])
    along = offsets @ normal
    perp = offsets - np.outer(along, normal)
    shift = np.linalg.norm(perp, axis=1)
    tol = max(0.05, 0.1 * float(np.min(entries[0].pixel_spacing)))
    if float(np.max(shift)) > tol:
        k = int(np.argmax(shift))
        angle = float(np.degrees(np.arctan2(shift[k], abs(along[k]))))
        raise SctconvError(
            f"series {label} is sheared: its slices are not stacked along the slice normal "
            f"(gantry tilt of about {angle:.1f} degrees, {_fmt_mm(shift[k])} mm in-plane shift "
            f"at slice {k + 1}); resample it to an orthogonal grid first"
        )


def _irregularity(positions: np.ndarray, label: str) -> str | None:
    """A message naming the first gap or uneven step between sorted slice positions, or None."""
    diffs = np.diff(positions)
    dmin = float(np.min(diffs))
    ratios = diffs / dmin
    if np.all(np.abs(ratios - np.round(ratios)) <= _SPACING_REL_TOL * np.round(ratios)):
        expected = dmin
    else:
        expected = float(np.median(diffs))
    bad = np.nonzero(np.abs(diffs - expected) > _SPACING_REL_TOL * expected)[0]
    if not bad.size:
        return None
    k = int(bad[0])
    multiple = round(float(diffs[k]) / expected)
    missing = multiple >= 2 and abs(diffs[k] - multiple * expected) <= (
        _SPACING_REL_TOL * multiple * expected
    )
    kind = "a gap" if missing else "uneven slice spacing"
    more = f" ({bad.size} irregular steps in {len(diffs)})" if bad.size > 1 else ""
    return (
        f"series {label} has {kind}: {_fmt_mm(diffs[k])} mm between slices {k + 1} and "
        f"{k + 2} where {_fmt_mm(expected)} mm is expected{more}"
    )


def _most_common_step(diffs: np.ndarray) -> float:
    """The most frequent step (to 0.01 mm; the smallest on a tie), averaged over its members."""
    values, counts = np.unique(np.round(diffs, 2), return_counts=True)
    mode = float(values[int(np.argmax(counts))])
    return float(np.mean(diffs[np.abs(diffs - mode) <= _SPACING_REL_TOL * mode]))


def _resample_stack(array: np.ndarray, positions: np.ndarray, step: float, reason: str
                    ) -> tuple[np.ndarray, list[tuple[int, ...]], Resampling]:
    """Slices at ``positions`` (sorted, mm along the normal) interpolated linearly onto the
    regular positions ``positions[0] + k * step`` that lie within the stack; also the indices
    of the original slices that each new slice is made of."""
    count = int(np.floor((positions[-1] - positions[0]) / step + _SPACING_REL_TOL)) + 1
    targets = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = (targets - positions[lower]) / (positions[upper] - positions[lower])
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    out = ((1.0 - weight) * array[lower] + weight * array[upper]).astype(np.float32)
    sources = [tuple(int(i) for i, w in ((lo, 1.0 - wk), (up, wk)) if w > 0)
               for lo, up, wk in zip(lower, upper, weight.ravel())]
    return out, sources, Resampling(reason=reason, original_slice_positions=len(positions),
                                    slices=count, step_mm=step)


def _pixels(entries: list[_Entry], label: str) -> np.ndarray:
    rows, cols = entries[0].rows, entries[0].cols
    out = np.empty((len(entries), rows, cols), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for k, e in enumerate(entries):
        arr = cache.get(e.src.name)
        if arr is None:
            arr = _decode(e.src, label)
            if e.frame is not None:
                cache[e.src.name] = arr  # keep multi-frame arrays for the other frames
        if e.frame is not None and arr.ndim == 3:
            plane = arr[e.frame - 1]
        elif arr.ndim == 3 and arr.shape[0] == 1:
            plane = arr[0]
        else:
            plane = arr
        if plane.shape != (rows, cols):
            raise SctconvError(
                f"series {label}: {e.src.name} decodes to {plane.shape}, expected "
                f"{rows}x{cols} (colour or corrupt image?)"
            )
        out[k] = plane.astype(np.float64) * e.slope + e.intercept
    return out
