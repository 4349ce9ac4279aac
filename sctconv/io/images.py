"""Reading the input volume (NIfTI, MHA/MHD, NRRD or DICOM) and writing image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.io.dicom.read import SourceSeries, is_dicom_path, read_dicom_series
from sctconv.io.files import IMAGE_SUFFIXES
from sctconv.io.nifti import check_nifti
from sctconv.preprocessing.grid import image_like


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
    return InputVolume(image=_as_float_volume(read_image_file(path, "input"), path))


def read_image_file(path: Path, what: str) -> sitk.Image:
    """Read an image file with SimpleITK, refusing what ITK would read wrongly (see :func:`check_nifti`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SctconvError(f"cannot read {what} {path}: not an image file SimpleITK understands "
                           f"({', '.join(IMAGE_SUFFIXES)})") from None
    try:
        image = reader.Execute()
    except RuntimeError:
        raise SctconvError(f"cannot read the voxel data of {what} {path}: the file is truncated or corrupt") from None
    check_nifti(path, what)
    return image


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
    image = read_image_file(path, what)
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
