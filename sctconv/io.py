"""Reading the input volume (NIfTI, MHA/MHD, NRRD or DICOM) and writing image files."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sctconv.dicom_read import SourceSeries, is_dicom_path, read_dicom_series
from sctconv.errors import SctconvError
from sctconv.files import IMAGE_SUFFIXES
from sctconv.preprocess import image_like


@dataclass
class InputVolume:
    """The volume to convert, and its DICOM series when it came from one."""

    image: sitk.Image  # float32, 3D, one component
    source: SourceSeries | None = None

    @property
    def dicom_modality(self) -> str | None:
        return self.source.modality if self.source else None


def read_volume(path: Path, series: str | None = None, allow_uneven: bool = False) -> InputVolume:
    """Read a 3D scalar volume from an image file or from a DICOM folder, file or zip.

    ``series`` and ``allow_uneven`` apply to DICOM input (see :func:`read_dicom_series`).
    """
    if not path.exists():
        raise SctconvError(f"input {path} does not exist")
    if is_dicom_path(path):
        source = read_dicom_series(path, series, allow_uneven)
        return InputVolume(image=_as_float_volume(source.image, path), source=source)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SctconvError(
            f"cannot read {path}: not an image file SimpleITK understands ({', '.join(IMAGE_SUFFIXES)}) "
            "nor DICOM") from None
    bad = nifti_nonfinite_count(path)
    if bad:
        raise SctconvError(f"{path} holds {bad} NaN or infinite voxel(s); fix the input first")
    return InputVolume(image=_as_float_volume(image, path))


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def nifti_nonfinite_count(path: Path) -> int:
    """NaN/inf voxels stored in a float NIfTI-1 file (0 for other files).

    ITK's NIfTI reader turns NaN into 0 on reading, so NaN-filled volumes must be caught on the
    raw file before SimpleITK sees them.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(348)
        if len(header) < 348:
            return 0
        order = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
        dtype = _NIFTI_FLOAT_TYPES.get(int(np.frombuffer(header, f"{order}i2", 1, 70)[0]))
        if dtype is None:
            return 0
        offset = int(np.frombuffer(header, f"{order}f4", 1, 108)[0])
        handle.read(max(0, offset - 348))
        data = np.frombuffer(handle.read(), f"{order}{dtype}")
    return int(np.count_nonzero(~np.isfinite(data)))


def _as_float_volume(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SctconvError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                           "sctconv needs a scalar (grey-level) volume")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise SctconvError(f"{path} is a {image.GetDimension()}D image; sctconv needs a 3D volume")
    if min(image.GetSize()) < 2:
        raise SctconvError(f"{path} has size {image.GetSize()}; sctconv needs at least 2 voxels along each axis")
    return sitk.Cast(image, sitk.sitkFloat32)


def _read_on_grid(path: Path, reference: sitk.Image, pixel_type: int, what: str) -> sitk.Image:
    """Read a 3D scalar image and bring it onto ``reference``'s grid by nearest neighbour."""
    if not path.exists():
        raise SctconvError(f"{what} {path} does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SctconvError(f"cannot read {what} {path}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise SctconvError(f"{what} {path} is not a 3D scalar image")
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pixel_type)


def read_label_map(path: Path, reference: sitk.Image) -> sitk.Image:
    """Read a label map onto ``reference``'s grid (nearest neighbour, uint16)."""
    return _read_on_grid(path, reference, sitk.sitkUInt16, "label map")


def read_mask(path: Path, reference: sitk.Image) -> sitk.Image:
    """Read a body mask onto ``reference``'s grid; any value > 0 is inside; uint8 0/1, refused when empty."""
    array = sitk.GetArrayFromImage(_read_on_grid(path, reference, sitk.sitkFloat32, "mask")) > 0
    if not array.any():
        raise SctconvError(f"mask {path} is empty on the input's grid (does it belong to this image?)")
    return image_like(array.astype(np.uint8), reference)


def write_image(image: sitk.Image, path: Path) -> None:
    """Write an image file (format from the suffix), compressed."""
    sitk.WriteImage(image, str(path), useCompression=True)
