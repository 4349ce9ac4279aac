"""Intensity normalization between HU (or MR intensities) and the network's z-scores (numpy only).

MRI: per-case z-score inside the body. CT and CBCT: clipped to [-1024, 3071] HU, then the dataset's
z-score, as the model card records it.
"""

from __future__ import annotations

import numpy as np

from sctconv.errors import SctconvError
from sctconv.model import Normalization

HU_MIN, HU_MAX = -1024.0, 3071.0
"""The CT range of the paper and of the SynthRAD2025 evaluation."""


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


def ct_value(hu: float, norm: Normalization) -> float:
    """A CT number in the CT's dataset z-score (the network output's units)."""
    return float((hu - norm.mean) / norm.std)


def air_value(norm: Normalization) -> float:
    """Air (-1024 HU) in the CT's dataset z-score: the network output's value outside the body."""
    return ct_value(HU_MIN, norm)
