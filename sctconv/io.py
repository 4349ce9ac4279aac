"""Reading the input volume (NIfTI, MHA/MHD, NRRD or DICOM) and writing image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sctconv.dicom_read import SourceSeries, is_dicom_path, read_dicom_series
from sctconv.errors import SctconvError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class InputVolume:
    """The volume to convert, and its DICOM series when it came from one."""

    image: sitk.Image  # float32, 3D, one component
    path: Path
    source: SourceSeries | None = None

    @property
    def dicom_modality(self) -> str | None:
        return self.source.modality if self.source else None


def read_volume(path: Path, series: str | None = None) -> InputVolume:
    """Read a 3D scalar volume from an image file or from a DICOM folder, file or zip."""
    if not path.exists():
        raise SctconvError(f"input {path} does not exist")
    if is_dicom_path(path):
        source = read_dicom_series(path, series)
        return InputVolume(image=_as_float_volume(source.image, path), path=path, source=source)
    if path.is_dir():
        raise SctconvError(f"input folder {path} holds no DICOM image series")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SctconvError(
            f"cannot read {path}: not an image file SimpleITK understands ({', '.join(IMAGE_SUFFIXES)}) "
            "nor DICOM") from None
    return InputVolume(image=_as_float_volume(image, path), path=path)


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


def read_mask(path: Path, reference: sitk.Image) -> sitk.Image:
    """Read a body mask and bring it onto ``reference``'s grid (nearest neighbour); uint8 0/1."""
    if not path.exists():
        raise SctconvError(f"mask {path} does not exist")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SctconvError(f"cannot read mask {path}") from None
    if mask.GetDimension() != 3:
        raise SctconvError(f"mask {path} is not a 3D image")
    mask = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(mask)
    if not array.any():
        raise SctconvError(f"mask {path} is empty on the input's grid (does it belong to this image?)")
    out = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    out.CopyInformation(reference)
    return out


def write_image(image: sitk.Image, path: Path) -> None:
    """Write an image file (format from the suffix), compressed."""
    sitk.WriteImage(image, str(path), useCompression=True)
