"""The sCT as a CT Image IOD (PS3.3 §A.3), one function per module.

Each ``*_module`` function returns the attributes of one PS3.3 module as a :class:`~pydicom.dataset.Dataset`.
``header`` is the first header of the source series, else the ``--like`` header, else None (a new patient
and study). Patient, Study and Frame of Reference come from it, so that a planning system shows the sCT
registered to the source; the equipment that made the instance is sctconv.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, generate_uid

from sctconv.io.dicom.entries import int_or_none
from sctconv.io.dicom.series import SourceSeries
from sctconv.io.dicom.values import code_item, copy_value, fit, fit_person_name, format_ds

log = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024
"""Stored value 0 is -1024 HU: 12-bit unsigned pixels hold -1024..3071 HU."""

_DERIVED_NOTE = (
    "SYNTHETIC CT computed from another imaging modality - not an acquired CT; "
    "not for clinical use without verification."
)


@dataclass
class SeriesOptions:
    """What the user chose for the sCT series (the rest comes from the source)."""

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


def patient_module(header: Dataset | None, options: SeriesOptions) -> Dataset:
    """Patient Module (PS3.3 §C.7.1.1): copied from ``header``, else the options' new patient."""
    ds = Dataset()
    if header is None:
        ds.PatientName = fit_person_name(options.patient_name or "sctconv^synthetic")
        ds.PatientID = fit(options.patient_id or "SCTCONV", "LO")
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        return ds
    copy_value(ds, header, "PatientName", "PN")
    copy_value(ds, header, "PatientID", "LO")
    copy_value(ds, header, "PatientBirthDate", "DA")
    sex = str(header.get("PatientSex", "") or "").strip().upper()
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    for keyword, vr in (("IssuerOfPatientID", "LO"), ("PatientIdentityRemoved", "CS")):
        if header.get(keyword, None):
            copy_value(ds, header, keyword, vr)
    if header.get("DeidentificationMethod", None):
        value = header.DeidentificationMethod
        ds.DeidentificationMethod = [fit(v, "LO") for v in value] if not isinstance(value, str) else fit(value, "LO")
    return ds


def general_study_module(header: Dataset | None, date: str, time: str) -> Dataset:
    """General Study Module (PS3.3 §C.7.2.1): the source's study, else a new one created now."""
    ds = Dataset()
    if header is None:
        ds.StudyInstanceUID = generate_uid()
        ds.StudyDate = date
        ds.StudyTime = time
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        return ds
    study_uid = str(header.get("StudyInstanceUID", "") or "")
    if not study_uid:
        study_uid = generate_uid()
        log.warning("the source series has no StudyInstanceUID; the sCT gets a new study")
    ds.StudyInstanceUID = study_uid
    copy_value(ds, header, "StudyDate", "DA")
    copy_value(ds, header, "StudyTime", "TM")
    copy_value(ds, header, "AccessionNumber", "SH")
    copy_value(ds, header, "ReferringPhysicianName", "PN")
    copy_value(ds, header, "StudyID", "SH")
    if header.get("StudyDescription", None):
        copy_value(ds, header, "StudyDescription", "LO")
    return ds


def general_series_module(header: Dataset | None, options: SeriesOptions, series_uid: str, date: str,
                          time: str) -> Dataset:
    """General Series Module (PS3.3 §C.7.3.1): a new CT series; position, laterality and body part
    from the source."""
    ds = Dataset()
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = str(_series_number(header, options))
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = fit(options.series_description, "LO")
    if header is None:
        ds.PatientPosition = "HFS"
        return ds
    position = str(header.get("PatientPosition", "") or "").strip().upper()
    if not position:
        log.warning("the source series has no PatientPosition; it is written empty in the sCT (the TPS may ask for it)")
    ds.PatientPosition = fit(position, "CS")
    if _laterality(header):
        ds.Laterality = _laterality(header)
    body_part = str(header.get("BodyPartExamined", "") or "").strip()
    if body_part:
        ds.BodyPartExamined = fit(body_part, "CS")
    return ds


def frame_of_reference_module(header: Dataset | None) -> Dataset:
    """Frame of Reference Module (PS3.3 §C.7.4.1): the source's, else a new one."""
    ds = Dataset()
    if header is not None and str(header.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = str(header.FrameOfReferenceUID)
        copy_value(ds, header, "PositionReferenceIndicator", "LO")
        return ds
    if header is not None:
        log.warning("the source series has no FrameOfReferenceUID; the sCT gets a new one and is not registered "
                    "to the source in the TPS")
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    return ds


def general_equipment_module(header: Dataset | None, options: SeriesOptions) -> Dataset:
    """General Equipment Module (PS3.3 §C.7.5.1): the equipment that made this instance, sctconv."""
    ds = Dataset()
    ds.Manufacturer = fit(options.manufacturer, "LO")
    institution = options.institution_name
    if institution is None and header is not None:
        institution = str(header.get("InstitutionName", "") or "") or None
    if institution:
        ds.InstitutionName = fit(institution, "LO")
    ds.ManufacturerModelName = fit(options.manufacturer_model_name, "LO")
    if options.station_name:
        ds.StationName = fit(options.station_name, "SH")
    if _software_versions(options):
        ds.SoftwareVersions = _software_versions(options)
    return ds


def general_acquisition_module(header: Dataset | None) -> Dataset:
    """General Acquisition Module (PS3.3 §C.7.10.1): the source's AcquisitionNumber (which the CT Image
    Module makes Type 2), else 1."""
    number = int_or_none(header.get("AcquisitionNumber", None)) if header is not None else None
    ds = Dataset()
    ds.AcquisitionNumber = str(number) if number is not None and abs(number) < 2**31 else "1"
    return ds


def general_image_module(header: Dataset | None, date: str, time: str) -> Dataset:
    """General Image Module (PS3.3 §C.7.6.1), the attributes every slice shares; ImageLaterality
    satisfies the General Series' Laterality condition for paired body parts when that is not written."""
    ds = Dataset()
    ds.ContentDate = date
    ds.ContentTime = time
    ds.BurnedInAnnotation = "NO"
    if header is None or not _laterality(header):
        laterality = "" if header is None else str(header.get("ImageLaterality", "")
                                                  or header.get("FrameLaterality", "") or "").strip().upper()
        ds.ImageLaterality = laterality if laterality in ("R", "L", "B", "U") else "U"
    return ds


def general_reference_module(source: SourceSeries | None, options: SeriesOptions) -> Dataset:
    """General Reference Module (PS3.3 §C.12.4), the DerivationDescription; each slice's
    SourceImageSequence is :func:`source_image_sequence`."""
    ds = Dataset()
    ds.DerivationDescription = fit(_derivation_text(source, options), "ST")
    return ds


def source_image_sequence(source: SourceSeries, k: int) -> Dataset:
    """General Reference Module (PS3.3 §C.12.4): SourceImageSequence, the source image(s) that sCT slice
    ``k`` was computed from (empty when none has SOP Class and Instance UIDs)."""
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
            [code_item("121322", "DCM", "Source image for image processing operation")]
        )
        items.append(item)
    ds = Dataset()
    if items:
        ds.SourceImageSequence = items
    return ds


def image_plane_module(position: np.ndarray, row: np.ndarray, column: np.ndarray, spacing: np.ndarray) -> Dataset:
    """Image Plane Module (PS3.3 §C.7.6.2) of the slice at ``position`` (mm, LPS) with the given row and
    column cosines and (x, y, z) ``spacing``."""
    ds = Dataset()
    ds.ImagePositionPatient = [format_ds(v) for v in position]
    ds.ImageOrientationPatient = [format_ds(v) for v in (*row, *column)]
    ds.PixelSpacing = [format_ds(spacing[1]), format_ds(spacing[0])]
    ds.SliceThickness = format_ds(spacing[2])
    ds.SpacingBetweenSlices = format_ds(spacing[2])
    ds.SliceLocation = format_ds(float(np.dot(position, np.cross(row, column))))
    return ds


def image_pixel_module(stored: np.ndarray) -> Dataset:
    """Image Pixel Module (PS3.3 §C.7.6.3) of one slice of stored values (rows, columns): 12 bits stored
    in 16, unsigned, MONOCHROME2, as the CT Image Module requires."""
    plane = np.ascontiguousarray(stored)
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(plane.min())
    ds.LargestImagePixelValue = int(plane.max())
    ds["SmallestImagePixelValue"].VR = "US"
    ds["LargestImagePixelValue"].VR = "US"
    ds.PixelData = plane.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def ct_image_module(options: SeriesOptions) -> Dataset:
    """CT Image Module (PS3.3 §C.8.2.1), the attributes not in the Image Pixel Module: a derived axial
    image in HU, KVP only when given."""
    ds = Dataset()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    kvp = _finite_float(options.kvp)
    ds.KVP = format_ds(kvp) if kvp is not None else ""
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def voi_lut_module() -> Dataset:
    """VOI LUT Module (PS3.3 §C.11.2): a soft-tissue window."""
    ds = Dataset()
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    return ds


def sop_common_module(source: SourceSeries | None, header: Dataset | None, options: SeriesOptions, date: str,
                      time: str) -> Dataset:
    """SOP Common Module (PS3.3 §C.12.1), the attributes every slice shares: CT Image Storage, the
    character set, and the contributing equipment (the source's scanner, then sctconv)."""
    ds = Dataset()
    ds.SpecificCharacterSet = specific_character_set(header, options)
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    if options.synthetic_data:
        ds.SyntheticData = "YES"
    scanner = source.datasets[0] if source is not None else None
    equipment = [_acquisition_equipment(scanner)] if scanner is not None else []
    ds.ContributingEquipmentSequence = Sequence(equipment + [_synthesizing_equipment(options, date, time)])
    return ds


def common_instance_reference_module(source: SourceSeries) -> Dataset:
    """Common Instance Reference Module (PS3.3 §C.12.2): the source series and its instances, which
    the slices' SourceImageSequence references (empty without a series UID or instances)."""
    ds = Dataset()
    if not source.series_instance_uid:
        return ds
    seen: set[str] = set()
    instances = Sequence()
    for header in source.datasets:
        uid = str(header.get("SOPInstanceUID", "") or "")
        cls = str(header.get("SOPClassUID", "") or "")
        if not uid or not cls or uid in seen:
            continue
        seen.add(uid)
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        instances.append(item)
    if instances:
        series = Dataset()
        series.SeriesInstanceUID = source.series_instance_uid
        series.ReferencedInstanceSequence = instances
        ds.ReferencedSeriesSequence = Sequence([series])
    return ds


def specific_character_set(header: Dataset | None, options: SeriesOptions) -> str | list[str]:
    """SpecificCharacterSet (PS3.3 §C.12.1.1.2): the source's when it holds every string written,
    ISO_IR 100 for ASCII text without one, else UTF-8 (ISO_IR 192)."""
    texts = _texts(header, options)
    declared = header.get("SpecificCharacterSet", None) if header is not None else None
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


def _texts(header: Dataset | None, options: SeriesOptions) -> list[str]:
    """The strings the sCT copies from ``header`` or takes from the options."""
    texts: list[str] = []
    if header is not None:
        for keyword in ("PatientName", "PatientID", "StudyDescription", "ReferringPhysicianName", "InstitutionName",
                        "SeriesDescription", "Manufacturer", "StationName", "DeidentificationMethod",
                        "BodyPartExamined"):
            if keyword in header:
                texts.append(str(header.get(keyword, "")))
    else:
        texts += [str(options.patient_name or ""), str(options.patient_id or "")]
    return texts + [options.series_description, options.model_name, options.model_version, options.manufacturer,
                    options.manufacturer_model_name, options.software_version, str(options.institution_name or ""),
                    str(options.station_name or "")]


def _acquisition_equipment(scanner: Dataset) -> Dataset:
    """A ContributingEquipmentSequence item for the scanner that acquired the source series."""
    item = Dataset()
    item.Manufacturer = fit(scanner.get("Manufacturer", "") or "unknown", "LO")
    for keyword, vr in (("InstitutionName", "LO"), ("StationName", "SH"), ("ManufacturerModelName", "LO"),
                        ("DeviceSerialNumber", "LO")):
        if scanner.get(keyword, None):
            copy_value(item, scanner, keyword, vr)
    versions = scanner.get("SoftwareVersions", None)
    if versions:
        values = [versions] if isinstance(versions, str) else list(versions)
        values = [fit(v, "LO") for v in values if str(v).strip()]
        if values:
            item.SoftwareVersions = values
    item.PurposeOfReferenceCodeSequence = Sequence([code_item("109101", "DCM", "Acquisition Equipment")])
    return item


def _synthesizing_equipment(options: SeriesOptions, date: str, time: str) -> Dataset:
    """A ContributingEquipmentSequence item for sctconv and its model."""
    item = Dataset()
    item.Manufacturer = fit(options.manufacturer or "sctconv", "LO")
    item.ManufacturerModelName = fit(options.manufacturer_model_name or "sctconv", "LO")
    if _software_versions(options):
        item.SoftwareVersions = _software_versions(options)
    item.ContributionDateTime = date + time
    model = _model_label(options)
    item.ContributionDescription = fit(
        f"Synthetic CT generated by sctconv{_suffix(options.software_version)}"
        f"{' with model ' + model if model else ''}", "ST"
    )
    item.PurposeOfReferenceCodeSequence = Sequence([code_item("109100", "DCM", "Synthesizing Equipment")])
    return item


def _software_versions(options: SeriesOptions) -> list[str]:
    return [fit(v, "LO") for v in (options.software_version, _model_label(options)) if v]


def _suffix(version: str) -> str:
    return f" {version}" if version else ""


def _model_label(options: SeriesOptions) -> str:
    return " ".join(v for v in (options.model_name, options.model_version) if v)


def _laterality(header: Dataset) -> str:
    """The source series' Laterality when it is R or L, else ''."""
    laterality = str(header.get("Laterality", "") or "").strip().upper()
    return laterality if laterality in ("R", "L") else ""


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


def _series_number(header: Dataset | None, options: SeriesOptions) -> int:
    if options.series_number is not None:
        return int(options.series_number)
    number = int_or_none(header.get("SeriesNumber", None)) if header is not None else None
    if number is not None and 0 <= number + 1000 < 2**31:
        return number + 1000
    return 1000


def _finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (nothing, blank text, not a number, NaN or infinite)."""
    try:
        number = float(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None
