"""Between the patient's grid and the network's: reorientation, resampling and intensity normalization.

The network sees volumes in LPS orientation at the model's spacing. Going back, the prediction is
resampled onto the input image itself, so the sCT has the input's exact size, spacing, origin and
direction whatever the input's orientation.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.model import Normalization

HU_MIN, HU_MAX = -1024.0, 3071.0
"""The CT range of the paper and of the SynthRAD2025 evaluation."""


def to_model_grid(image: sitk.Image, spacing_zyx: tuple[float, float, float],
                  interpolator: int = sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """Reorient ``image`` to LPS (a lossless axis permutation/flip) and resample it to ``spacing_zyx``.

    The resampled grid starts at the first voxel centre and covers the image's whole extent.
    """
    oriented = sitk.DICOMOrient(image, "LPS")
    spacing = np.array(spacing_zyx[::-1], dtype=float)
    old_size = np.array(oriented.GetSize(), dtype=float)
    old_spacing = np.array(oriented.GetSpacing(), dtype=float)
    size = np.maximum(1, np.round((old_size - 1) * old_spacing / spacing).astype(int) + 1)
    return sitk.Resample(oriented, [int(s) for s in size], sitk.Transform(), interpolator,
                         oriented.GetOrigin(), [float(s) for s in spacing], oriented.GetDirection(),
                         default, sitk.sitkFloat32)


def to_input_grid(image: sitk.Image, reference: sitk.Image, default: float) -> sitk.Image:
    """Resample ``image`` (linear) onto exactly the grid of ``reference``."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def normalize(array: np.ndarray, mask: np.ndarray, norm: Normalization) -> np.ndarray:
    """Normalize a volume as the model card says (float32 out).

    ``zscore-case`` uses the mean and std of the voxels inside ``mask``; ``zscore-dataset`` clips
    to the card's range and uses the card's dataset statistics.
    """
    array = array.astype(np.float32, copy=False)
    if norm.scheme == "zscore-case":
        inside = array[mask > 0]
        if inside.size < 2:
            raise SctconvError("the body mask is empty; cannot normalize the input")
        mean, std = float(inside.mean()), float(inside.std())
        if std == 0:
            raise SctconvError("the input is constant inside the body; it holds no anatomy")
        return (array - mean) / std
    low, high = norm.clip if norm.clip else (-np.inf, np.inf)
    return (np.clip(array, low, high) - norm.mean) / norm.std


def denormalize_ct(array: np.ndarray, norm: Normalization) -> np.ndarray:
    """Network output (dataset z-score of CT) back to HU, clipped to [-1024, 3071]."""
    return np.clip(array * norm.std + norm.mean, HU_MIN, HU_MAX).astype(np.float32)


def check_finite(image: sitk.Image, what: str) -> None:
    """Refuse volumes holding NaN or infinite values."""
    array = sitk.GetArrayViewFromImage(image)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise SctconvError(f"{what} holds {bad} NaN or infinite voxel(s) of {array.size}; fix the input first")
