"""Between the patient's grid and the network's: reorientation and resampling (SimpleITK).

The network sees volumes in LPS orientation at the model's spacing. Going back, the prediction is
resampled onto the input image itself, so the sCT has the input's exact size, spacing, origin and
direction whatever the input's orientation.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from sctconv.errors import SctconvError

CROP_MARGIN_MM = 30.0
"""Air kept around the body's bounding box: training crops its cases to it (so patches see the skin with
air around it), and a CBCT's anchors are measured within it at inference as in training."""


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``array`` (z, y, x) as an image on exactly ``reference``'s grid."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def to_model_grid(image: sitk.Image, spacing_zyx: tuple[float, float, float],
                  interpolator: int = sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """Reorient ``image`` to LPS (a lossless axis permutation/flip) and resample it to ``spacing_zyx``.

    The resampled grid starts at the first voxel centre and covers the image's whole extent.
    """
    oriented = sitk.DICOMOrient(image, "LPS")
    return sitk.Resample(oriented, model_grid_size(image, spacing_zyx), sitk.Transform(), interpolator,
                         oriented.GetOrigin(), [float(s) for s in spacing_zyx[::-1]], oriented.GetDirection(),
                         default, sitk.sitkFloat32)


def model_grid_size(image: sitk.Image, spacing_zyx: tuple[float, float, float]) -> list[int]:
    """The (x, y, z) size of :func:`to_model_grid`'s result, from ``image``'s header alone."""
    orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
    lps_axis = ["RLAPIS".index(letter) // 2 for letter in orientation]  # image axis i lies along LPS axis lps_axis[i]
    size, spacing = np.zeros(3), np.zeros(3)
    for axis, n, step in zip(lps_axis, image.GetSize(), image.GetSpacing()):
        size[axis], spacing[axis] = n, step
    grid = np.maximum(1, np.round((size - 1) * spacing / np.array(spacing_zyx[::-1], dtype=float)).astype(int) + 1)
    return [int(n) for n in grid]


def body_box(mask: np.ndarray, spacing_zyx: tuple[float, float, float] | np.ndarray,
             margin_mm: float) -> tuple[slice, slice, slice]:
    """The bounding box of ``mask`` widened by ``margin_mm`` (whole voxels per axis, within the volume);
    the whole volume where the mask is empty."""
    if not mask.any():
        return slice(None), slice(None), slice(None)
    box = []
    for axis, size in enumerate(mask.shape):
        inside = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = int(round(margin_mm / float(spacing_zyx[axis])))
        box.append(slice(max(0, inside[0] - margin), min(size, inside[-1] + 1 + margin)))
    return box[0], box[1], box[2]


def to_input_grid(image: sitk.Image, reference: sitk.Image, default: float) -> sitk.Image:
    """Resample ``image`` (linear) onto exactly the grid of ``reference``."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def check_voxels(image: sitk.Image, what: str) -> None:
    """Refuse volumes holding NaN or infinite values, or one value everywhere (no anatomy)."""
    array = sitk.GetArrayViewFromImage(image)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise SctconvError(f"{what} holds {bad} NaN or infinite voxel(s) of {array.size}; fix the input first")
    if array.min() == array.max():
        raise SctconvError(f"{what} holds one value everywhere ({float(array.min()):g}); it holds no anatomy")
