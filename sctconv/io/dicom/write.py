"""Writing a synthetic CT as a classic CT Image Storage series (one file per slice).

Follows the reference recipe (``dicom-output.md`` §6): same Patient, Study and Frame of Reference
as the source series so that a TPS shows sCT and MR registered; new Series/SOP Instance UIDs;
12-bit unsigned pixels with RescaleIntercept -1024 (HU -1024..3071); every Type 1/2 attribute of
the CT Image IOD; DS values of at most 16 characters; no private tags.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from sctconv.io.dicom.read import SourceSeries, int_or_none
from sctconv.errors import SctconvError
from sctconv.hu import HU_MAX, HU_MIN

log = logging.getLogger(__name__)

__all__ = ["SeriesOptions", "write_sct_series", "format_ds"]

RESCALE_INTERCEPT = -1024

# Maximum value lengths (characters) of the string VRs we write (PS3.5 Table 6.2-1).
_VR_MAX = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "SH": 16, "ST": 1024, "TM": 16, "UI": 64,
}

_DERIVED_NOTE = (
    "SYNTHETIC CT computed from another imaging modality - not an acquired CT; "
    "not for clinical use without verification."
)


@dataclass
class SeriesOptions:
    series_description: str = "sCT"
    model_name: str = ""
    model_version: str = ""
    software_version: str = ""  # sctconv version
    series_number: int | None = None  # default: source SeriesNumber + 1000, else 1000
    manufacturer: str = "sctconv"
    manufacturer_model_name: str = "sctconv"
    station_name: str | None = None  # a planning system may pick its CT-to-density table by it
    institution_name: str | None = None
    patient_id: str | None = None  # for non-DICOM sources (default "SCTCONV")
    patient_name: str | None = None  # for non-DICOM sources (default "sctconv^synthetic")
    synthetic_data: bool = False  # write SyntheticData (0008,001C) = YES only when asked
    kvp: str | None = None


# --------------------------------------------------------------------------------------------
# Value formatting
# --------------------------------------------------------------------------------------------


def format_ds(value: float) -> str:
    """A Decimal String of at most 16 characters for ``value``.

    Rounds to 8 decimals first (pydicom's own formatter can produce the 17-character
    ``'10.00000000000000'`` for 9.999999999999998), then drops decimals until it fits.
    """
    v = float(value)
    if not math.isfinite(v):
        raise SctconvError(f"cannot write the non-finite number {value!r} as a DICOM DS value")
    for decimals in range(8, -1, -1):
        r = round(v, decimals)
        s = f"{r:.{decimals}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        if s in ("-0", ""):
            s = "0"
        if len(s) <= 16:
            return s
    for digits in range(10, -1, -1):
        mantissa, exponent = f"{v:.{digits}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        s = f"{mantissa}e{exponent}"
        if len(s) <= 16:
            return s
    raise SctconvError(f"cannot write {value!r} as a DICOM DS value of at most 16 characters")


def _fit(value: Any, vr: str) -> str:
    """``value`` as a string within the maximum length of ``vr`` (truncated, stripped)."""
    s = "" if value is None else str(value)
    s = s.replace("\x00", "").strip()
    if vr in ("LO", "SH", "CS", "AE", "PN"):
        s = s.replace("\\", "/")  # a backslash would split the value in two
    if vr == "CS":
        s = "".join(ch for ch in s.upper() if ch.isalnum() or ch in " _")[:16]
    limit = _VR_MAX.get(vr)
    if limit is not None and len(s) > limit:
        s = s[:limit].rstrip()
    return s


def _fit_pn(value: Any) -> str:
    """A Person Name string with at most 64 characters per component group."""
    if value is None or value == "":
        return ""
    text = str(value).replace("\\", "/").strip()
    groups = [g[:64] for g in text.split("=")[:3]]
    return "=".join(groups)


def _copy_str(dst: Dataset, src: Dataset | None, keyword: str, vr: str, default: str = "") -> None:
    value = src.get(keyword, None) if src is not None else None
    if value is None or value == "":
        value = default
    if vr == "PN":
        dst.add_new(_tag(keyword), "PN", _fit_pn(value))
    else:
        dst.add_new(_tag(keyword), vr, _fit(value, vr))


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - programming error
        raise KeyError(keyword)
    return tag


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _geometry(sct: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine, slice vector (unit), spacing (x, y, z) and origin of ``sct``."""
    if sct.GetDimension() != 3:
        raise SctconvError(f"the sCT must be a 3D image, got {sct.GetDimension()}D")
    d = np.array(sct.GetDirection(), dtype=np.float64).reshape(3, 3)
    r, c, s = d[:, 0], d[:, 1], d[:, 2]
    norms = np.linalg.norm(d, axis=0)
    if np.any(norms < 1e-6):
        raise SctconvError("the sCT has a degenerate direction matrix")
    r, c, s = r / norms[0], c / norms[1], s / norms[2]
    if abs(float(np.dot(r, c))) > 1e-4:
        raise SctconvError(
            "the sCT grid has non-perpendicular row and column axes, which DICOM cannot store; "
            "resample it to an orthogonal grid"
        )
    normal = np.cross(r, c)
    if abs(float(np.dot(normal, s))) < 1 - 1e-4:
        angle = math.degrees(math.acos(min(1.0, abs(float(np.dot(normal, s))))))
        raise SctconvError(
            f"the sCT grid is sheared (slice axis {angle:.2f} degrees off the slice normal), "
            "which a CT series cannot store; resample it to an orthogonal grid"
        )
    spacing = np.array(sct.GetSpacing(), dtype=np.float64)
    origin = np.array(sct.GetOrigin(), dtype=np.float64)
    return r, c, s, spacing, origin


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def write_sct_series(
    sct: sitk.Image, out_dir: Path, source: SourceSeries | None, options: SeriesOptions,
    like: Dataset | None = None,
) -> list[Path]:
    """Write ``sct`` (HU) as a CT Image Storage series into ``out_dir``; returns the file paths.

    With a DICOM ``source``, ``sct`` must lie on the source grid (same size); Patient, Study and
    Frame of Reference are copied so that the sCT stays registered to the source images; each
    slice references the source images it was made from (and the series), unless the grid moved.
    Without a source, ``like`` (a header of another series) gives Patient, Study and Frame of
    Reference.
    """
    out_dir = Path(out_dir)
    r, c, s, spacing, origin = _geometry(sct)
    size = sct.GetSize()
    slice_refs = source is not None and _slice_references(sct, source)

    hu = sitk.GetArrayFromImage(sct).astype(np.float64)  # (k, j, i)
    hu = np.nan_to_num(hu, nan=float(HU_MIN), posinf=float(HU_MAX), neginf=float(HU_MIN))
    stored = (np.rint(np.clip(hu, HU_MIN, HU_MAX)) - RESCALE_INTERCEPT).astype(np.uint16)

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")[:13]
    series_uid = generate_uid()
    common = _common_dataset(source, like, options, date, time, series_uid, slice_refs)

    out_dir.mkdir(parents=True, exist_ok=True)
    iop = [format_ds(v) for v in (*r, *c)]
    pixel_spacing = [format_ds(spacing[1]), format_ds(spacing[0])]
    thickness = format_ds(spacing[2])
    normal = np.cross(r, c)

    paths: list[Path] = []
    n_slices = size[2]
    width = max(4, len(str(n_slices)))
    for k in range(n_slices):
        ds = Dataset()
        ds.update(common)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = str(k + 1)
        ipp = np.array(sct.TransformIndexToPhysicalPoint((0, 0, k)), dtype=np.float64)
        ds.ImagePositionPatient = [format_ds(v) for v in ipp]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SliceLocation = format_ds(float(np.dot(ipp, normal)))
        if slice_refs:
            _add_source_reference(ds, source, k)
        # Image Pixel module
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size[1]
        ds.Columns = size[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        plane = np.ascontiguousarray(stored[k])
        ds.SmallestImagePixelValue = int(plane.min())
        ds.LargestImagePixelValue = int(plane.max())
        ds["SmallestImagePixelValue"].VR = "US"
        ds["LargestImagePixelValue"].VR = "US"
        ds.PixelData = plane.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = _fit(f"SCTCONV_{options.software_version}", "SH")
        ds.file_meta = meta
        path = out_dir / f"CT.{k + 1:0{width}d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_references(sct: sitk.Image, source: SourceSeries) -> bool:
    """Whether sCT slice k can reference the source images of source slice k.

    A grid of another size is refused; a moved grid (same size) gets no references, with a
    warning.
    """
    size, src_size = sct.GetSize(), source.image.GetSize()
    if tuple(src_size) != tuple(size):
        raise SctconvError(
            f"the sCT grid {size[0]}x{size[1]}x{size[2]} differs from the source series grid "
            f"{src_size[0]}x{src_size[1]}x{src_size[2]}"
        )
    if source.slice_sources is None and len(source.datasets) != size[2]:
        raise SctconvError(
            f"the source series has {len(source.datasets)} headers for {size[2]} slices"
        )
    same_grid = (
        np.allclose(sct.GetOrigin(), source.image.GetOrigin(), atol=1e-3)
        and np.allclose(sct.GetDirection(), source.image.GetDirection(), atol=1e-4)
        and np.allclose(sct.GetSpacing(), source.image.GetSpacing(), atol=1e-4)
    )
    if not same_grid:
        log.warning(
            "the sCT grid is not the source grid (same size, other origin/direction/"
            "spacing); writing it in the source Frame of Reference without references to "
            "the source images"
        )
    return same_grid


def _common_dataset(source: SourceSeries | None, like: Dataset | None, options: SeriesOptions,
                    date: str, time: str, series_uid: str, slice_refs: bool) -> Dataset:
    """Attributes shared by every slice of the sCT series.

    Patient, Study, Frame of Reference and position come from the source series, else from
    ``like``; the acquisition equipment only from a source series; the ReferencedSeriesSequence
    only with per-slice references (``slice_refs``), which its condition (Type 1C) requires.
    """
    src = source.datasets[0] if source is not None else like
    ds = Dataset()

    # --- SOP Common
    ds.SpecificCharacterSet = _charset(src, options)
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    if options.synthetic_data:
        ds.SyntheticData = "YES"

    # --- Patient
    if src is not None:
        _copy_str(ds, src, "PatientName", "PN")
        _copy_str(ds, src, "PatientID", "LO")
        _copy_str(ds, src, "PatientBirthDate", "DA")
        sex = str(src.get("PatientSex", "") or "").strip().upper()
        ds.PatientSex = sex if sex in ("M", "F", "O") else ""
        for kw, vr in (("IssuerOfPatientID", "LO"), ("PatientIdentityRemoved", "CS")):
            if src.get(kw, None):
                _copy_str(ds, src, kw, vr)
        if src.get("DeidentificationMethod", None):
            value = src.DeidentificationMethod
            ds.DeidentificationMethod = (
                [_fit(v, "LO") for v in value] if not isinstance(value, str) else _fit(value, "LO")
            )
    else:
        ds.PatientName = _fit_pn(options.patient_name or "sctconv^synthetic")
        ds.PatientID = _fit(options.patient_id or "SCTCONV", "LO")
        ds.PatientBirthDate = ""
        ds.PatientSex = ""

    # --- General Study
    if src is not None:
        study_uid = str(src.get("StudyInstanceUID", "") or "")
        if not study_uid:
            study_uid = generate_uid()
            log.warning("the source series has no StudyInstanceUID; the sCT gets a new study")
        ds.StudyInstanceUID = study_uid
        _copy_str(ds, src, "StudyDate", "DA")
        _copy_str(ds, src, "StudyTime", "TM")
        _copy_str(ds, src, "AccessionNumber", "SH")
        _copy_str(ds, src, "ReferringPhysicianName", "PN")
        _copy_str(ds, src, "StudyID", "SH")
        if src.get("StudyDescription", None):
            _copy_str(ds, src, "StudyDescription", "LO")
    else:
        ds.StudyInstanceUID = generate_uid()
        ds.StudyDate = date
        ds.StudyTime = time
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"

    # --- General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = str(_series_number(src, options))
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = _fit(options.series_description, "LO")
    if src is not None:
        position = str(src.get("PatientPosition", "") or "").strip().upper()
        if not position:
            log.warning(
                "the source series has no PatientPosition; it is written empty in the sCT "
                "(the TPS may ask for it)"
            )
        ds.PatientPosition = _fit(position, "CS")
        laterality = str(src.get("Laterality", "") or "").strip().upper()
        if laterality in ("R", "L"):
            ds.Laterality = laterality
        body_part = str(src.get("BodyPartExamined", "") or "").strip()
        if body_part:
            ds.BodyPartExamined = _fit(body_part, "CS")
    else:
        ds.PatientPosition = "HFS"
    # ImageLaterality (General Image) satisfies the Laterality condition for paired body parts.
    image_laterality = ""
    if src is not None:
        image_laterality = str(src.get("ImageLaterality", "") or src.get("FrameLaterality", "")
                               or "").strip().upper()
    if "Laterality" not in ds:
        ds.ImageLaterality = image_laterality if image_laterality in ("R", "L", "B", "U") else "U"

    # --- Frame of Reference
    if src is not None and str(src.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = str(src.FrameOfReferenceUID)
        _copy_str(ds, src, "PositionReferenceIndicator", "LO")
    else:
        if src is not None:
            log.warning(
                "the source series has no FrameOfReferenceUID; the sCT gets a new one and is "
                "not registered to the source in the TPS"
            )
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""

    # --- General Equipment (the equipment that produced this instance: sctconv)
    ds.Manufacturer = _fit(options.manufacturer, "LO")
    institution = options.institution_name
    if institution is None and src is not None:
        institution = str(src.get("InstitutionName", "") or "") or None
    if institution:
        ds.InstitutionName = _fit(institution, "LO")
    ds.ManufacturerModelName = _fit(options.manufacturer_model_name, "LO")
    if options.station_name:
        ds.StationName = _fit(options.station_name, "SH")
    versions = [v for v in (options.software_version, _model_label(options)) if v]
    if versions:
        ds.SoftwareVersions = [_fit(v, "LO") for v in versions]

    # --- General Image / CT Image
    ds.ContentDate = date
    ds.ContentTime = time
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.AcquisitionNumber = _acquisition_number(src)
    ds.KVP = format_ds(float(options.kvp)) if _is_number(options.kvp) else ""
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = _fit(_derivation_text(source, options), "ST")
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"

    # --- Contributing equipment: the source scanner and sctconv
    scanner = source.datasets[0] if source is not None else None
    ds.ContributingEquipmentSequence = _contributing_equipment(scanner, options, date, time)

    # --- Common Instance Reference: the source series
    if slice_refs and source.series_instance_uid:
        ref_series = Dataset()
        ref_series.SeriesInstanceUID = source.series_instance_uid
        seen: set[str] = set()
        instances = Sequence()
        for h in source.datasets:
            uid = str(h.get("SOPInstanceUID", "") or "")
            cls = str(h.get("SOPClassUID", "") or "")
            if not uid or not cls or uid in seen:
                continue
            seen.add(uid)
            item = Dataset()
            item.ReferencedSOPClassUID = cls
            item.ReferencedSOPInstanceUID = uid
            instances.append(item)
        if instances:
            ref_series.ReferencedInstanceSequence = instances
            ds.ReferencedSeriesSequence = Sequence([ref_series])
    return ds


def _add_source_reference(ds: Dataset, source: SourceSeries, k: int) -> None:
    """SourceImageSequence: the source image(s) that sCT slice ``k`` was computed from."""
    indices = source.slice_sources[k] if source.slice_sources is not None else (k,)
    items = Sequence()
    for i in indices:
        header = source.datasets[i]
        uid = str(header.get("SOPInstanceUID", "") or "")
        cls = str(header.get("SOPClassUID", "") or "")
        if not uid or not cls:
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        frames = source.frame_numbers
        if frames is not None and frames[i] is not None:
            item.ReferencedFrameNumber = str(frames[i])
        item.PurposeOfReferenceCodeSequence = Sequence(
            [_code_item("121322", "DCM", "Source image for image processing operation")]
        )
        items.append(item)
    if items:
        ds.SourceImageSequence = items


def _contributing_equipment(src: Dataset | None, options: SeriesOptions, date: str,
                            time: str) -> Sequence:
    items = Sequence()
    if src is not None:
        scanner = Dataset()
        scanner.Manufacturer = _fit(src.get("Manufacturer", "") or "unknown", "LO")
        for kw, vr in (("InstitutionName", "LO"), ("StationName", "SH"),
                       ("ManufacturerModelName", "LO"), ("DeviceSerialNumber", "LO")):
            value = src.get(kw, None)
            if value:
                scanner.add_new(_tag(kw), vr, _fit(value, vr))
        versions = src.get("SoftwareVersions", None)
        if versions:
            values = [versions] if isinstance(versions, str) else list(versions)
            values = [_fit(v, "LO") for v in values if str(v).strip()]
            if values:
                scanner.SoftwareVersions = values
        scanner.PurposeOfReferenceCodeSequence = Sequence(
            [_code_item("109101", "DCM", "Acquisition Equipment")]
        )
        items.append(scanner)
    tool = Dataset()
    tool.Manufacturer = _fit(options.manufacturer or "sctconv", "LO")
    tool.ManufacturerModelName = _fit(options.manufacturer_model_name or "sctconv", "LO")
    versions = [v for v in (options.software_version, _model_label(options)) if v]
    if versions:
        tool.SoftwareVersions = [_fit(v, "LO") for v in versions]
    tool.ContributionDateTime = date + time
    tool.ContributionDescription = _fit(
        f"Synthetic CT generated by sctconv{_suffix(options.software_version)}"
        f"{' with model ' + _model_label(options) if _model_label(options) else ''}", "ST"
    )
    tool.PurposeOfReferenceCodeSequence = Sequence(
        [_code_item("109100", "DCM", "Synthesizing Equipment")]
    )
    items.append(tool)
    return items


def _suffix(version: str) -> str:
    return f" {version}" if version else ""


def _model_label(options: SeriesOptions) -> str:
    return " ".join(v for v in (options.model_name, options.model_version) if v)


def _derivation_text(source: SourceSeries | None, options: SeriesOptions) -> str:
    model = _model_label(options) or "unspecified model"
    text = f"Synthetic CT generated by sctconv{_suffix(options.software_version)}, model {model}"
    if source is not None:
        desc = f" '{source.description}'" if source.description else ""
        uid = f" {source.series_instance_uid}" if source.series_instance_uid else ""
        text += f", from {source.modality or 'source'} series{uid}{desc}"
        if source.resampled is not None:
            r = source.resampled
            text += (f"; its {r.original_slice_positions} slices were resampled onto {r.slices} slices every "
                     f"{r.step_mm:g} mm ({r.reason})")
    return f"{text}. {_DERIVED_NOTE}"


def _series_number(src: Dataset | None, options: SeriesOptions) -> int:
    if options.series_number is not None:
        return int(options.series_number)
    number = int_or_none(src.get("SeriesNumber", None)) if src is not None else None
    if number is not None and 0 <= number + 1000 < 2**31:
        return number + 1000
    return 1000


def _acquisition_number(src: Dataset | None) -> str:
    number = int_or_none(src.get("AcquisitionNumber", None)) if src is not None else None
    return str(number) if number is not None and abs(number) < 2**31 else "1"


def _is_number(value: Any) -> bool:
    try:
        return value is not None and str(value).strip() != "" and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _charset(src: Dataset | None, options: SeriesOptions) -> str | list[str]:
    texts: list[str] = []
    if src is not None:
        for kw in ("PatientName", "PatientID", "StudyDescription", "ReferringPhysicianName",
                   "InstitutionName", "SeriesDescription", "Manufacturer", "StationName",
                   "DeidentificationMethod", "BodyPartExamined"):
            if kw in src:
                texts.append(str(src.get(kw, "")))
    else:
        texts += [str(options.patient_name or ""), str(options.patient_id or "")]
    texts += [options.series_description, options.model_name, options.model_version,
              options.manufacturer, options.manufacturer_model_name, options.software_version,
              str(options.institution_name or ""), str(options.station_name or "")]
    declared = src.get("SpecificCharacterSet", None) if src is not None else None
    if isinstance(declared, str):
        terms = [declared.strip()] if declared.strip() else []
    elif declared:
        terms = [str(t).strip() for t in declared]
    else:
        terms = []
    if all(t.isascii() for t in texts):
        return (terms[0] if len(terms) == 1 else terms) if terms else "ISO_IR 100"
    # Keep the source's character set when it can hold every string we write, so that the
    # copied patient/study strings stay byte-identical to the source series.
    if len(terms) == 1:
        codec = python_encoding.get(terms[0])
        if codec:
            try:
                for t in texts:
                    t.encode(codec)
                return terms[0]
            except (UnicodeError, LookupError):
                pass
    elif len(terms) > 1:
        return terms  # ISO 2022 code extensions: pydicom encodes with escape sequences
    return "ISO_IR 192"
