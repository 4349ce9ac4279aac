"""Intensity normalization between HU (or MR intensities) and the network's z-scores (numpy only).

MRI: per-case z-score inside the body. CT and CBCT: clipped to [-1024, 3071] HU, then the dataset's
z-score, as the model card records it. A CBCT's input may first be shifted so that the peak of its
body histogram sits at the card's ``anchor_hu`` (:func:`anchor_shift`): a CBCT's global HU offset is a
whole-volume property that a network patch judges badly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sctconv.card_numbers import finite_number
from sctconv.errors import SctconvError
from sctconv.hu import BONE_HU, HU_MAX, HU_MIN

ANCHOR_RANGE_HU = (-450.0, 450.0)
"""Where :func:`histogram_peak` looks for a CBCT's soft-tissue peak: fat to dense soft tissue under the
+-120 HU offsets and 30-200 HU cupping of kV CBCT; lung, air and the outside of the field of view are
below it."""

ANCHOR_SMOOTHING_HU = 80.0
"""The Gaussian (sd, HU) that smooths the histogram before its peak is taken: fat and soft tissue merge
into one peak, so the anchor does not jump between them from scan to scan. Of 0, 15, 40 and 80 HU this
predicted the offset of 109 simulated CBCTs best (residual sd 19.7 HU, against 66.4 without an anchor)."""

OUTLIER_FENCE = 5.0
"""A value further than this many times the 0.5-99.5 percentile range beyond that range (inside the
body) is an outlier: real MRs stay within 0.7 times it, a single hot voxel of 3e38 does not."""


@dataclass
class Normalization:
    """Intensity normalization of a volume.

    ``scheme`` is ``"zscore-case"`` (per-case mean/std over the body, the paper's MRI scheme) or
    ``"zscore-dataset"`` (clip to ``clip``, then subtract the dataset ``mean`` and divide by
    ``std``: the paper's CT and CBCT scheme). ``anchor_hu`` (``zscore-dataset`` inputs only): first
    shift the volume so the peak of its body histogram lies there (:func:`anchor_shift`).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    anchor_hu: float | None = None

    def __post_init__(self) -> None:
        """Refuse what cannot normalize (unknown scheme, a clip that is not low < high, a mean that is
        not finite, a std that is not positive and finite); numbers become floats, the clip a tuple."""
        if self.scheme not in ("zscore-case", "zscore-dataset"):
            raise SctconvError(f"unknown normalization scheme {self.scheme!r}")
        if self.scheme == "zscore-dataset" and (self.mean is None or self.std is None):
            raise SctconvError("dataset z-score normalization needs a mean and a std")
        if self.clip is not None:
            if not isinstance(self.clip, (list, tuple)) or len(self.clip) != 2:
                raise SctconvError(f"normalization clip must be [low, high], not {self.clip!r}")
            low, high = (finite_number(v, "normalization clip") for v in self.clip)
            if low >= high:
                raise SctconvError(f"normalization clip must be [low, high] with low < high, not {self.clip!r}")
            self.clip = (low, high)
        if self.mean is not None:
            self.mean = finite_number(self.mean, "normalization mean")
        if self.std is not None:
            self.std = finite_number(self.std, "normalization std", positive=True)
        if self.anchor_hu is not None:
            if self.scheme != "zscore-dataset":
                raise SctconvError("a normalization anchor needs the dataset z-score")
            self.anchor_hu = finite_number(self.anchor_hu, "normalization anchor")

    @property
    def dataset_stats(self) -> tuple[float, float]:
        """(mean, std) of the dataset z-score; an error for a normalization that has none."""
        if self.mean is None or self.std is None:
            raise SctconvError(f"{self.scheme} normalization has no dataset mean and std")
        return self.mean, self.std


def normalize(array: np.ndarray, mask: np.ndarray, norm: Normalization) -> np.ndarray:
    """Normalize a volume as the model card says (float32 out, finite or an error).

    ``zscore-case`` uses the mean and std (float64) of the voxels inside ``mask``, after
    :func:`tame_outliers`; ``zscore-dataset`` clips to the card's range and uses the card's dataset
    statistics.
    """
    array = array.astype(np.float32, copy=False)
    if norm.scheme == "zscore-case":
        if np.count_nonzero(mask > 0) < 2:
            raise SctconvError("the body mask is empty; cannot normalize the input")
        array = tame_outliers(array, array[mask > 0])
        inside = array[mask > 0].astype(np.float64)
        mean, std = float(inside.mean()), float(inside.std())
        if std == 0:
            raise SctconvError("the input is constant inside the body; it holds no anatomy")
        return require_finite((array - mean) / std, "the normalized input")
    low, high = norm.clip if norm.clip else (-np.inf, np.inf)
    mean, std = norm.dataset_stats
    shift = anchor_shift(array, mask, norm)
    if shift:
        array = array + np.float32(shift)
    return require_finite((np.clip(array, low, high) - mean) / std, "the normalized input")


def anchor_shift(array: np.ndarray, mask: np.ndarray, norm: Normalization) -> float:
    """The HU added to a volume before its z-score: ``norm.anchor_hu`` minus the volume's
    :func:`histogram_peak` inside ``mask``; 0 for a normalization without an anchor."""
    if norm.anchor_hu is None:
        return 0.0
    return norm.anchor_hu - histogram_peak(array[mask > 0])


def histogram_peak(values: np.ndarray) -> float:
    """The CT number at which the histogram of ``values`` within :data:`ANCHOR_RANGE_HU` (5 HU bins,
    smoothed by :data:`ANCHOR_SMOOTHING_HU`) peaks; an error when no value lies in that range."""
    low, high = ANCHOR_RANGE_HU
    edges = np.arange(low, high + 5.0, 5.0)
    counts, _ = np.histogram(values, edges)
    if not counts.any():
        raise SctconvError(f"no voxel of the body lies within {low:.0f}..{high:.0f} HU, where a CBCT shows "
                           "soft tissue; is the input a CBCT in HU?")
    sd = ANCHOR_SMOOTHING_HU / 5.0
    offsets = np.arange(-int(4 * sd), int(4 * sd) + 1)
    smooth = np.convolve(counts.astype(np.float64), np.exp(-0.5 * (offsets / sd) ** 2), mode="same")
    return float(edges[int(np.argmax(smooth))] + 2.5)


def tame_outliers(array: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``array`` with its outliers (see :data:`OUTLIER_FENCE`) replaced by the nearer of the 0.5 and
    99.5 percentiles of ``inside``; a real image has none and passes unchanged."""
    low, high = (float(p) for p in np.percentile(inside, [0.5, 99.5]))
    spread = OUTLIER_FENCE * (high - low)
    array = np.where(array > high + spread, np.float32(high), array)
    return np.where(array < low - spread, np.float32(low), array)


def require_finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array``, or an error naming ``what`` when it holds NaN or infinite values."""
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise SctconvError(f"{what} holds {bad} NaN or infinite value(s) of {array.size}")
    return array


def denormalize_ct(array: np.ndarray, norm: Normalization) -> np.ndarray:
    """Network output (dataset z-score of CT) back to HU, clipped to [-1024, 3071]."""
    mean, std = norm.dataset_stats
    return np.clip(array * std + mean, HU_MIN, HU_MAX).astype(np.float32)


def ct_value(hu: float, norm: Normalization) -> float:
    """A CT number in the CT's dataset z-score (the network output's units)."""
    mean, std = norm.dataset_stats
    return float((hu - mean) / std)


def air_value(norm: Normalization) -> float:
    """Air (-1024 HU) in the CT's dataset z-score: the network output's value outside the body."""
    return ct_value(HU_MIN, norm)


def bone_value(norm: Normalization) -> float:
    """The bone threshold (:data:`sctconv.hu.BONE_HU`) in the CT's dataset z-score: where the bone-weighted
    loss and the bone-centred patches of training start."""
    return ct_value(BONE_HU, norm)
