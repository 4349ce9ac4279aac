"""Intensity normalization between HU (or MR intensities) and the network's z-scores (numpy only).

MRI: per-case z-score inside the body. CT and CBCT: clipped to [-1024, 3071] HU, then the dataset's
z-score, as the model card records it. A CBCT's input may first be shifted so that the peak of its
body histogram sits at the card's ``anchor_hu``, and scaled about it so that the air around the body
lies at ``air_anchor_hu`` (:func:`anchor_map`): a CBCT's global HU offset and scale are whole-volume
properties that a network patch judges badly.
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

AIR_RANGE_HU = (-1500.0, -500.0)
"""Where :func:`air_peak` looks for the air around the body: -1000 HU under a kV CBCT's scale (x0.85-1.15)
and offset (+-120 HU) errors; soft tissue, couch and cushions lie above it."""

AIR_SMOOTHING_HU = 40.0
"""The Gaussian (sd, HU) that smooths the air histogram: a CBCT's noise in air (15-60 HU)."""

AIR_MIN_VOXELS = 1000
"""Fewer varying air voxels than this (8 ml at 2 mm) outside the body leave a CBCT's scale as it is."""

SCALE_LIMITS = (0.75, 1.35)
"""The scale :func:`anchor_map` may apply: a CBCT's HU scale is off by 15% at most, and cupping, which
lowers soft tissue but not air, makes the soft tissue-to-air distance read up to ~20% short."""

OUTLIER_FENCE = 5.0
"""A value further than this many times the 0.5-99.5 percentile range beyond that range (inside the
body) is an outlier: real MRs stay within 0.7 times it, a single hot voxel of 3e38 does not."""


@dataclass
class Normalization:
    """Intensity normalization of a volume.

    ``scheme`` is ``"zscore-case"`` (per-case mean/std over the body, the paper's MRI scheme) or
    ``"zscore-dataset"`` (clip to ``clip``, then subtract the dataset ``mean`` and divide by
    ``std``: the paper's CT and CBCT scheme). ``anchor_hu`` (``zscore-dataset`` inputs only): first
    shift the volume so the peak of its body histogram lies there; ``air_anchor_hu`` (with ``anchor_hu``):
    also scale it about that peak so the air around the body lies there (:func:`anchor_map`).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    anchor_hu: float | None = None
    air_anchor_hu: float | None = None

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
        self._check_anchors()

    def _check_anchors(self) -> None:
        """Refuse an anchor on the per-case z-score, an air anchor without the soft-tissue anchor or outside
        :data:`AIR_RANGE_HU`, and anchors that are not numbers."""
        if self.anchor_hu is not None:
            if self.scheme != "zscore-dataset":
                raise SctconvError("a normalization anchor needs the dataset z-score")
            self.anchor_hu = finite_number(self.anchor_hu, "normalization anchor")
        if self.air_anchor_hu is not None:
            if self.anchor_hu is None:
                raise SctconvError("an air anchor needs the soft-tissue anchor_hu")
            self.air_anchor_hu = finite_number(self.air_anchor_hu, "normalization air anchor")
            if not AIR_RANGE_HU[0] <= self.air_anchor_hu <= AIR_RANGE_HU[1]:
                raise SctconvError(f"the air anchor must lie in {AIR_RANGE_HU[0]:.0f}..{AIR_RANGE_HU[1]:.0f} HU, "
                                   f"not {self.air_anchor_hu}")

    @property
    def dataset_stats(self) -> tuple[float, float]:
        """(mean, std) of the dataset z-score; an error for a normalization that has none."""
        if self.mean is None or self.std is None:
            raise SctconvError(f"{self.scheme} normalization has no dataset mean and std")
        return self.mean, self.std


def normalize(array: np.ndarray, mask: np.ndarray, norm: Normalization,
              anchor: tuple[float, float] | None = None) -> np.ndarray:
    """Normalize a volume as the model card says (float32 out, finite or an error).

    ``zscore-case`` uses the mean and std (float64) of the voxels inside ``mask``, after
    :func:`tame_outliers`; ``zscore-dataset`` first applies the card's anchors (``anchor``, the
    (scale, offset) of :func:`anchor_map`, when measured elsewhere), then clips to the card's range and
    uses the card's dataset statistics.
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
    scale, offset = anchor_map(array, mask, norm) if anchor is None else anchor
    if (scale, offset) != (1.0, 0.0):
        array = array * np.float32(scale) + np.float32(offset)
    return require_finite((np.clip(array, low, high) - mean) / std, "the normalized input")


def anchor_map(array: np.ndarray, mask: np.ndarray, norm: Normalization) -> tuple[float, float]:
    """(scale, offset) that bring a volume to the card's anchors before its z-score (``array * scale +
    offset``): the :func:`histogram_peak` inside ``mask`` goes to ``norm.anchor_hu``; with an
    ``air_anchor_hu`` the volume is also scaled about that peak (within :data:`SCALE_LIMITS`) so that its
    :func:`air_peak` goes there, unless no air is in view. (1, 0) for a normalization without anchors."""
    if norm.anchor_hu is None:
        return 1.0, 0.0
    soft = histogram_peak(array[mask > 0])
    scale = 1.0
    air = None if norm.air_anchor_hu is None else air_peak(array, mask)
    if air is not None and norm.air_anchor_hu is not None:
        scale = float(np.clip((norm.anchor_hu - norm.air_anchor_hu) / (soft - air), *SCALE_LIMITS))
    return scale, norm.anchor_hu - scale * soft


def histogram_peak(values: np.ndarray) -> float:
    """The CT number at which the histogram of ``values`` within :data:`ANCHOR_RANGE_HU` (5 HU bins,
    smoothed by :data:`ANCHOR_SMOOTHING_HU`) peaks; an error when no value lies in that range."""
    low, high = ANCHOR_RANGE_HU
    counts, peak = _smoothed_histogram_peak(values, ANCHOR_RANGE_HU, ANCHOR_SMOOTHING_HU)
    if not counts:
        raise SctconvError(f"no voxel of the body lies within {low:.0f}..{high:.0f} HU, where a CBCT shows "
                           "soft tissue; is the input a CBCT in HU?")
    return peak


def air_peak(array: np.ndarray, mask: np.ndarray) -> float | None:
    """Where the histogram of the air around the body peaks (:data:`AIR_RANGE_HU`, smoothed by
    :data:`AIR_SMOOTHING_HU`): voxels outside ``mask`` whose value differs from each neighbour's, so a
    constant fill (outside a field of view, below a clip) does not count, its edge included (air read
    below the input's clip counts only through its unclipped part, which under-corrects the scale); None with fewer than
    :data:`AIR_MIN_VOXELS` of them."""
    varying = np.ones(array.shape, dtype=bool)
    for axis in range(array.ndim):
        lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(array.ndim))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(array.ndim))
        step = array[lower] != array[upper]
        varying[lower] &= step
        varying[upper] &= step
    counts, peak = _smoothed_histogram_peak(array[varying & (mask == 0)], AIR_RANGE_HU, AIR_SMOOTHING_HU)
    return peak if counts >= AIR_MIN_VOXELS else None


def _smoothed_histogram_peak(values: np.ndarray, value_range: tuple[float, float],
                             smoothing: float) -> tuple[int, float]:
    """(how many ``values`` lie in ``value_range``, where their histogram (5 HU bins, smoothed by a Gaussian
    of sd ``smoothing``) peaks)."""
    low, high = value_range
    edges = np.arange(low, high + 5.0, 5.0)
    counts, _ = np.histogram(values, edges)
    sd = smoothing / 5.0
    offsets = np.arange(-int(4 * sd), int(4 * sd) + 1)
    smooth = np.convolve(counts.astype(np.float64), np.exp(-0.5 * (offsets / sd) ** 2), mode="same")
    return int(counts.sum()), float(edges[int(np.argmax(smooth))] + 2.5)


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
