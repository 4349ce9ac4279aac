"""Image entries, one per 2D slice (a single-frame file or one frame of an enhanced multi-frame file),
with the header values that place it in the patient; the header helpers they are read with."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from sctconv.errors import SctconvError
from sctconv.io.dicom.files import DicomFile

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


def sop_class_uid(ds: Dataset) -> str:
    """SOPClassUID, else the file meta's MediaStorageSOPClassUID."""
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def sop_instance_uid(ds: Dataset) -> str:
    """SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID."""
    value = str(ds.get("SOPInstanceUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return value


def is_image(ds: Dataset) -> bool:
    """True for a cross-sectional image: rows and columns, and neither a non-image modality nor SOP class."""
    if "Rows" not in ds or "Columns" not in ds:
        return False
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return False
    sop = sop_class_uid(ds)
    if any(sop.startswith(p) for p in _NON_IMAGE_SOP_PREFIXES):
        return False
    return True


def image_type(ds: Dataset) -> list[str]:
    """The ImageType values, upper case."""
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


def orientation_name(iop: np.ndarray | None) -> str:
    """"axial", "coronal", "sagittal" (within 1 degree), "oblique" or "unknown"."""
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


@dataclass
class SliceEntry:
    """One 2D slice: a single-frame file or one frame of a multi-frame file."""

    src: DicomFile
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

    @property
    def position(self) -> np.ndarray:
        """ImagePositionPatient; an error where the slice has none."""
        return self._known(self.ipp, "ImagePositionPatient")

    @property
    def orientation(self) -> np.ndarray:
        """ImageOrientationPatient; an error where the slice has none."""
        return self._known(self.iop, "ImageOrientationPatient")

    @property
    def spacing(self) -> np.ndarray:
        """PixelSpacing (row spacing, column spacing); an error where the slice has none."""
        return self._known(self.pixel_spacing, "PixelSpacing")

    def _known(self, value: np.ndarray | None, keyword: str) -> np.ndarray:
        if value is None:
            where = self.src.name + (f" frame {self.frame}" if self.frame else "")
            raise SctconvError(f"{where} has no valid {keyword}, so its position in the patient is unknown")
        return value


def slice_entries(src: DicomFile, ds: Dataset) -> list[SliceEntry]:
    """The slices of the file ``src`` with header ``ds``: one, or one per frame."""
    rows = int(ds.Rows)
    cols = int(ds.Columns)
    nframes = int_or_none(ds.get("NumberOfFrames", None)) or 1
    enhanced = any(k in ds for k in _ENHANCED_KEYWORDS)
    if nframes > 1 or enhanced:
        return _entries_multiframe(src, ds, rows, cols, nframes)
    thickness = ds.get("SliceThickness", None)
    return [
        SliceEntry(
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


def _multiframe_problem(src: DicomFile, per_frame: Any, shared: Dataset | None, nframes: int) -> str | None:
    """Why the frames of an enhanced multi-frame file cannot be placed, or None."""
    if not per_frame and shared is None:
        return (
            f"enhanced multi-frame file {src.name} ({nframes} frames) has no "
            "Shared/PerFrameFunctionalGroupsSequence, so its slice geometry is unknown; "
            "export the series as classic single-frame images"
        )
    if per_frame and len(per_frame) != nframes:
        return (
            f"multi-frame file {src.name} has {len(per_frame)} per-frame functional groups "
            f"for {nframes} frames"
        )
    return None


def _frame_template(ds: Dataset) -> Dataset:
    """A compact header per frame: the top level without the (large) functional groups, pixel data
    and the geometry each frame sets."""
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
    return base


def _group_value(frame_groups: Dataset | None, shared: Dataset | None, seq_kw: str, attr: str) -> Any:
    """``attr`` of the frame's functional group ``seq_kw``, else of the shared one; None when neither has it."""
    for holder in (frame_groups, shared):
        item = _item(holder, seq_kw)
        if item is not None and attr in item:
            return item.get(attr)
    return None


def _frame_entry(src: DicomFile, ds: Dataset, template: Dataset, groups: Dataset | None,
                 shared: Dataset | None, frame: int, rows: int, cols: int, problem: str | None) -> SliceEntry:
    """The entry of frame number ``frame`` (1-based), with its functional groups ``groups``."""
    ipp = _float_list(_group_value(groups, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
    iop = _float_list(_group_value(groups, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _float_list(_group_value(groups, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _group_value(groups, shared, "PixelMeasuresSequence", "SliceThickness")
    slope = _group_value(groups, shared, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _group_value(groups, shared, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope in (None, ""):
        slope = ds.get("RescaleSlope", 1) or 1
    if intercept in (None, ""):
        intercept = ds.get("RescaleIntercept", 0) or 0
    header = copy.copy(template)
    if ipp is not None:
        header.ImagePositionPatient = [float(v) for v in ipp]
    if iop is not None:
        header.ImageOrientationPatient = [float(v) for v in iop]
    if spacing is not None:
        header.PixelSpacing = [float(v) for v in spacing]
    return SliceEntry(
        src=src,
        header=header,
        frame=frame,
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


def _entries_multiframe(src: DicomFile, ds: Dataset, rows: int, cols: int,
                        nframes: int) -> list[SliceEntry]:
    """The entries of an enhanced multi-frame file, one per frame."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None) or []
    problem = _multiframe_problem(src, per_frame, shared, nframes)
    template = _frame_template(ds)
    return [
        _frame_entry(src, ds, template, per_frame[f] if f < len(per_frame) else None, shared, f + 1, rows, cols,
                     problem)
        for f in range(nframes)
    ]
