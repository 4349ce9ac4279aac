"""Writing a synthetic CT as a classic CT Image Storage series (one file per slice).

Same Patient, Study and Frame of Reference as the source series, so that a planning system shows sCT and
source registered; new Series and SOP Instance UIDs; 12-bit unsigned pixels with RescaleIntercept -1024
(HU -1024..3071); every Type 1 and 2 attribute of the CT Image IOD (PS3.3 §A.3), written module by
module in :mod:`sctconv.io.dicom.ct_image`; DS values of at most 16 characters; no private tags.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sctconv.errors import SctconvError
from sctconv.hu import HU_MAX, HU_MIN
from sctconv.io.dicom.ct_image import (
    RESCALE_INTERCEPT,
    SeriesOptions,
    common_instance_reference_module,
    ct_image_module,
    frame_of_reference_module,
    general_acquisition_module,
    general_equipment_module,
    general_image_module,
    general_reference_module,
    general_series_module,
    general_study_module,
    image_pixel_module,
    image_plane_module,
    patient_module,
    sop_common_module,
    source_image_sequence,
    voi_lut_module,
)
from sctconv.io.dicom.series import SourceSeries
from sctconv.io.dicom.values import fit, format_ds

log = logging.getLogger(__name__)

__all__ = ["SeriesOptions", "write_sct_series", "format_ds"]


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
    row, column = _cosines(sct)
    spacing = np.array(sct.GetSpacing(), dtype=np.float64)
    referenced = source if source is not None and _slice_references(sct, source) else None
    stored = _stored_values(sct)

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")[:13]
    series = _series_dataset(source, like, options, date, time, referenced)

    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices = sct.GetSize()[2]
    width = max(4, len(str(n_slices)))
    paths: list[Path] = []
    for k in range(n_slices):
        ds = Dataset()
        ds.update(series)
        ds.SOPInstanceUID = generate_uid()  # SOP Common
        ds.InstanceNumber = str(k + 1)  # General Image
        position = np.array(sct.TransformIndexToPhysicalPoint((0, 0, k)), dtype=np.float64)
        ds.update(image_plane_module(position, row, column, spacing))
        if referenced is not None:
            ds.update(source_image_sequence(referenced, k))
        ds.update(image_pixel_module(stored[k]))
        ds.file_meta = _file_meta(ds.SOPInstanceUID, options)
        path = out_dir / f"CT.{k + 1:0{width}d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_dataset(source: SourceSeries | None, like: Dataset | None, options: SeriesOptions, date: str,
                    time: str, referenced: SourceSeries | None) -> Dataset:
    """The modules every slice of the series shares, from the source series' first header, else ``like``.

    The Common Instance Reference only when the slices reference the ``referenced`` series, which its
    condition (Type 1C) requires.
    """
    header = source.datasets[0] if source is not None else like
    ds = Dataset()
    for module in (
        sop_common_module(source, header, options, date, time),
        patient_module(header, options),
        general_study_module(header, date, time),
        general_series_module(header, options, generate_uid(), date, time),
        frame_of_reference_module(header),
        general_equipment_module(header, options),
        general_acquisition_module(header),
        general_image_module(header, date, time),
        general_reference_module(source, options),
        ct_image_module(options),
        voi_lut_module(),
    ):
        ds.update(module)
    if referenced is not None:
        ds.update(common_instance_reference_module(referenced))
    return ds


def _file_meta(sop_instance_uid: str, options: SeriesOptions) -> FileMetaDataset:
    """File Meta Information (PS3.10 §7.1): explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = fit(f"SCTCONV_{options.software_version}", "SH")
    return meta


def _stored_values(sct: sitk.Image) -> np.ndarray:
    """The sCT's stored pixel values (k, j, i): HU clipped to the 12-bit range, minus the rescale intercept."""
    hu = sitk.GetArrayFromImage(sct).astype(np.float64)
    hu = np.nan_to_num(hu, nan=float(HU_MIN), posinf=float(HU_MAX), neginf=float(HU_MIN))
    return (np.rint(np.clip(hu, HU_MIN, HU_MAX)) - RESCALE_INTERCEPT).astype(np.uint16)


def _cosines(sct: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines of ``sct``; a grid that a CT series cannot store is an error."""
    if sct.GetDimension() != 3:
        raise SctconvError(f"the sCT must be a 3D image, got {sct.GetDimension()}D")
    d = np.array(sct.GetDirection(), dtype=np.float64).reshape(3, 3)
    norms = np.linalg.norm(d, axis=0)
    if np.any(norms < 1e-6):
        raise SctconvError("the sCT has a degenerate direction matrix")
    r, c, s = d[:, 0] / norms[0], d[:, 1] / norms[1], d[:, 2] / norms[2]
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
    return r, c


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

