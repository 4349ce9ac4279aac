"""Synthetic source MR (or CT) DICOM series for reader/writer tests, generated with pydicom.

Geometry is built in a "scanner" frame (HFS = patient frame) and mapped to the patient frame for
the requested PatientPosition, so HFS/FFS/HFP/FFP series carry the cosines real scanners write.
Every series knows its expected SimpleITK geometry and voxel values (``FactorySeries``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

# Scanner frame -> patient frame (DICOM LPS) for each patient position.
POSITION_MATRIX = {
    "HFS": np.diag([1.0, 1.0, 1.0]),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "FFP": np.diag([1.0, -1.0, -1.0]),
}

# Row / column cosines in the scanner frame for the usual display of each plane.
PLANE_COSINES = {
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "coronal": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}


def _rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def cosines(orientation: str, patient_position: str = "HFS") -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines in the patient frame.

    ``orientation``: "axial", "sagittal", "coronal", "oblique" (axial tilted 10 degrees about
    the x axis) or "oblique2" (axial rotated 10 degrees about x and 20 degrees about y).
    """
    if orientation == "oblique":
        r, c = PLANE_COSINES["axial"]
        rot = _rot_x(10.0)
    elif orientation == "oblique2":
        r, c = PLANE_COSINES["axial"]
        rot = _rot_y(20.0) @ _rot_x(10.0)
    else:
        r, c = PLANE_COSINES[orientation]
        rot = np.eye(3)
    m = POSITION_MATRIX[patient_position]
    return m @ rot @ r, m @ rot @ c


@dataclass
class FactorySeries:
    folder: Path
    paths: list[Path]
    series_uid: str
    study_uid: str
    for_uid: str
    patient_id: str
    modality: str
    series_number: int
    # Expected geometry of the volume (slices sorted along the normal cross(r, c)).
    origin: np.ndarray
    direction: np.ndarray  # 3x3, columns = row cosine, column cosine, normal
    spacing: np.ndarray  # (column spacing, row spacing, slice step)
    values: np.ndarray  # (k, j, i) float physical values (after rescale) in sorted order
    sop_uids: list[str] = field(default_factory=list)  # in sorted slice order


def make_series(
    out_dir: Path,
    *,
    orientation: str = "axial",
    patient_position: str = "HFS",
    modality: str = "MR",
    rows: int = 24,
    cols: int = 20,
    n_slices: int = 6,
    pixel_spacing: tuple[float, float] = (0.9, 1.1),  # (row spacing, column spacing)
    slice_step: float = 2.5,
    center: tuple[float, float, float] = (12.3, -25.7, 40.1),
    shuffle: bool = True,
    missing: int | None = None,
    duplicate: int | None = None,
    uneven: int | None = None,
    tilt_deg: float = 0.0,
    series_number: int = 5,
    series_description: str = "T1 test",
    series_uid: str | None = None,
    study_uid: str | None = None,
    for_uid: str | None = None,
    patient_id: str = "SCT-TEST-001",
    patient_name: str = "Test^Patient",
    body_part: str = "HEAD",
    compress: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    localizer: bool = False,
    minority_size: bool = False,
    seed: int = 0,
    write_position: bool = True,
) -> FactorySeries:
    """Write a synthetic series into ``out_dir`` and return what a reader should produce.

    ``missing``: sorted index of a slice left out; ``duplicate``: sorted index written twice;
    ``uneven``: sorted index whose position is moved by 20 % of the step; ``tilt_deg``: shear the
    stack along the column direction (gantry tilt).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    r, c = cosines(orientation, patient_position)
    n = np.cross(r, c)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = for_uid or generate_uid()

    # Origin: the centre of the volume at `center`.
    extent = (
        (cols - 1) * pixel_spacing[1] * r
        + (rows - 1) * pixel_spacing[0] * c
        + (n_slices - 1) * slice_step * n
    )
    origin = np.array(center) - extent / 2.0

    kk, jj, ii = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(cols), indexing="ij")
    values = 100.0 + 7.0 * ii + 3.0 * jj + 50.0 * kk + 20.0 * ((ii + 2 * jj) % 5 == 0)
    if modality == "CT":
        values = values - 1000.0  # HU-like
        slope, intercept = 1.0, -1024.0

    slices = [k for k in range(n_slices) if k != missing]
    plan: list[tuple[int, np.ndarray]] = []
    for k in slices:
        ipp = origin + k * slice_step * n
        if tilt_deg:
            ipp = ipp + k * slice_step * np.tan(np.deg2rad(tilt_deg)) * c
        if uneven is not None and k == uneven:
            ipp = ipp + 0.2 * slice_step * n
        plan.append((k, ipp))
        if duplicate is not None and k == duplicate:
            plan.append((k, ipp.copy()))

    instance_numbers = list(range(1, len(plan) + 1))
    if shuffle:
        rng.shuffle(instance_numbers)

    sop_by_k: dict[int, str] = {}
    paths: list[Path] = []
    series_attributes = dict(
        modality=modality, series_uid=series_uid, study_uid=study_uid, for_uid=for_uid,
        patient_id=patient_id, patient_name=patient_name, series_number=series_number,
        series_description=series_description, body_part=body_part,
    )
    for (k, ipp), inst in zip(plan, instance_numbers):
        ds = _base_dataset(**series_attributes,
                           patient_position=patient_position if write_position else None)
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [round(float(v), 6) for v in ipp]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*r, *c)]
        ds.PixelSpacing = [pixel_spacing[0], pixel_spacing[1]]
        ds.SliceThickness = slice_step
        ds.SliceLocation = round(float(np.dot(ipp, n)), 6)
        stored = np.rint((values[k] - intercept) / slope).astype(np.uint16)
        _set_pixels(ds, stored, slope, intercept, modality)
        sop = ds.SOPInstanceUID
        sop_by_k.setdefault(k, sop)
        path = out_dir / f"{'IM' if shuffle else 'slice'}_{rng.randrange(10**8):08d}_{inst}.dcm"
        _save(ds, path, compress)
        paths.append(path)

    if localizer:
        ds = _base_dataset(**series_attributes, patient_position=patient_position)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        lr, lc = cosines("coronal", patient_position)
        ds.InstanceNumber = 999
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.ImageOrientationPatient = [float(v) for v in (*lr, *lc)]
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = 10
        _set_pixels(ds, np.full((16, 16), 5, dtype=np.uint16), 1.0, 0.0, modality)
        path = out_dir / "localizer.dcm"
        _save(ds, path, None)
        paths.append(path)

    if minority_size:
        ds = _base_dataset(**series_attributes, patient_position=patient_position)
        ds.InstanceNumber = 998
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.ImageOrientationPatient = [float(v) for v in (*r, *c)]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 5
        _set_pixels(ds, np.full((8, 8), 5, dtype=np.uint16), 1.0, 0.0, modality)
        path = out_dir / "odd_size.dcm"
        _save(ds, path, None)
        paths.append(path)

    if missing is not None:
        values = values[[k for k in range(n_slices) if k != missing]]
    sop_uids = [sop_by_k[k] for k in sorted(sop_by_k)]
    return FactorySeries(
        folder=out_dir,
        paths=paths,
        series_uid=series_uid,
        study_uid=study_uid,
        for_uid=for_uid,
        patient_id=patient_id,
        modality=modality,
        series_number=series_number,
        origin=origin,
        direction=np.column_stack([r, c, n]),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], slice_step]),
        values=values.astype(np.float64),
        sop_uids=sop_uids,
    )


def _base_dataset(*, modality: str, series_uid: str, study_uid: str, for_uid: str,
                  patient_id: str, patient_name: str, series_number: int,
                  series_description: str, body_part: str,
                  patient_position: str | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"] if modality == "MR" else [
        "ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = MRImageStorage if modality == "MR" else CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.ContentDate = "20240102"
    ds.StudyTime = "101500"
    ds.SeriesTime = "102000"
    ds.ContentTime = "102001"
    ds.AccessionNumber = "ACC123"
    ds.Modality = modality
    ds.Manufacturer = "FactoryScanner Inc."
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.StationName = "MRSIM1"
    ds.StudyDescription = "RT planning"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "Simulator 3T"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    if modality == "MR":
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "10"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
    else:
        ds.KVP = "120"
    ds.SoftwareVersions = "VX1"
    ds.DeviceSerialNumber = "12345"
    if patient_position is not None:
        ds.PatientPosition = patient_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "STUDY1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    # A private element that must not leak into the sCT.
    block = ds.private_block(0x0019, "SCTCONV FACTORY", create=True)
    block.add_new(0x01, "LO", "private-source-value")
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, slope: float, intercept: float,
                modality: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if modality == "CT" or slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if modality == "CT":
            ds.RescaleType = "HU"
    ds.PixelData = stored.astype("<u2").tobytes()


def _save(ds: Dataset, path: Path, compress: str | None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if compress == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif compress == "j2k":
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif compress is not None:
        raise ValueError(compress)
    ds.save_as(path, enforce_file_format=True)


def make_enhanced_from(series: FactorySeries, out_path: Path) -> Path:
    """An Enhanced-style (Legacy Converted Enhanced MR) multi-frame file of ``series``.

    Built with highdicom from the classic files; geometry lives in the functional groups.
    """
    import highdicom as hd

    datasets = [pydicom.dcmread(p) for p in series.paths]
    lce = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(),
        series_number=series.series_number + 100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    lce.save_as(out_path, enforce_file_format=True)
    return out_path
