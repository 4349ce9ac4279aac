"""Image similarity metrics of the SynthRAD2025 challenge: masked MAE, PSNR and MS-SSIM.

The definitions follow the official evaluation code (SynthRAD2025/evaluation, ``image_metrics.py``,
commit 17cac47, dynamic range [-1024, 3071] HU):

* MAE: mean absolute HU difference over the mask, **without** clipping.
* PSNR: both volumes clipped to the HU range, mean squared error over the mask, data range 4095.
* MS-SSIM: the challenge's masked 3D variant. Volumes are clipped, set to -1024 HU outside the
  mask, shifted by +1024 and edge-padded to at least 97 voxels per axis. At each of 5 levels a
  7x7x7 uniform-window SSIM (K1 0.01, K2 0.03, sample covariance, data range 4095) is computed
  with luminance, contrast and structure each raised to the level weight; the level value is the
  mean of that map over the mask after cropping 3 voxels from every border. Between levels the
  images are averaged over 2x2x2 blocks (the official 'same'-mode convolution, whose first block
  along each axis is the first voxel averaged with a zero) and the mask is subsampled by 2. The
  result is the product of the level values clipped to [0, 1].

All arrays are (z, y, x); a mask voxel is inside when its value is > 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter

from sctconv.hu import BONE_HU, HU_MAX, HU_MIN

HU_RANGE = (HU_MIN, HU_MAX)

_DATA_RANGE = HU_RANGE[1] - HU_RANGE[0]
_LEVEL_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WINDOW = 7
_CROP = (_WINDOW - 1) // 2
_MIN_SIZE = 97
_K1 = 0.01
_K2 = 0.03


def _check(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Validate the three arrays and return the boolean mask; raise ValueError when unusable."""
    gt, pred, mask = np.asarray(gt), np.asarray(pred), np.asarray(mask)
    if not gt.shape == pred.shape == mask.shape:
        raise ValueError(
            f"shape mismatch: gt {gt.shape}, pred {pred.shape}, mask {mask.shape}"
        )
    inside = mask > 0
    if not inside.any():
        raise ValueError("the mask is empty: no voxel is > 0")
    return inside


def mae(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error in HU over the voxels where ``mask > 0``.

    No clipping: a prediction outside [-1024, 3071] HU is penalised in full, as in the challenge.
    Raises ValueError when the shapes differ or the mask is empty.
    """
    inside = _check(gt, pred, mask)
    diff = np.asarray(gt)[inside].astype(np.float64) - np.asarray(pred)[inside].astype(np.float64)
    return float(np.mean(np.abs(diff)))


def psnr(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the voxels where ``mask > 0``.

    Both volumes are clipped to ``HU_RANGE`` and the peak is its width (4095 HU). Identical
    volumes give ``inf``, as in the official code. Raises ValueError when the shapes differ or
    the mask is empty.
    """
    inside = _check(gt, pred, mask)
    low, high = HU_RANGE
    gt_in = np.clip(np.asarray(gt)[inside].astype(np.float64), low, high)
    pred_in = np.clip(np.asarray(pred)[inside].astype(np.float64), low, high)
    mse = float(np.mean((gt_in - pred_in) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_DATA_RANGE**2 / mse)


def _downsample(image: np.ndarray) -> np.ndarray:
    """2x2x2 mean of the official ``fftconvolve(image, ones(2,2,2)/8, 'same')[::2, ::2, ::2]``.

    Output voxel j along an axis averages input voxels 2j-1 and 2j, with a zero before voxel 0.
    """
    for axis in range(image.ndim):
        count = (image.shape[axis] + 1) // 2
        widths = [(0, 0)] * image.ndim
        widths[axis] = (1, 0)
        padded = np.pad(image, widths)
        even = [slice(None)] * image.ndim
        odd = [slice(None)] * image.ndim
        even[axis] = slice(0, 2 * count, 2)
        odd[axis] = slice(1, 2 * count, 2)
        image = (padded[tuple(even)] + padded[tuple(odd)]) * 0.5
    return image


def _masked_ssim_level(x: np.ndarray, y: np.ndarray, inside: np.ndarray, weight: float) -> float:
    """Mean over the cropped mask of the SSIM map with L, C and S each raised to ``weight``."""
    crop = (slice(_CROP, -_CROP),) * x.ndim
    select = inside[crop]
    if not select.any():
        return math.nan

    def local_mean(image: np.ndarray) -> np.ndarray:
        return uniform_filter(image, size=_WINDOW)[crop][select]

    ux, uy = local_mean(x), local_mean(y)
    cov_norm = _WINDOW**x.ndim / (_WINDOW**x.ndim - 1)
    vx = cov_norm * (local_mean(x * x) - ux * ux)
    vy = cov_norm * (local_mean(y * y) - uy * uy)
    vxy = cov_norm * (local_mean(x * y) - ux * uy)
    sx = np.sqrt(np.clip(vx, 0.0, None))
    sy = np.sqrt(np.clip(vy, 0.0, None))

    c1 = (_K1 * _DATA_RANGE) ** 2
    c2 = (_K2 * _DATA_RANGE) ** 2
    c3 = c2 / 2
    luminance = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0.0, None)
    contrast = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0.0, None)
    structure = np.clip((vxy + c3) / (sx * sy + c3), 0.0, None)
    ssim_map = (luminance * contrast * structure) ** weight
    return float(np.mean(ssim_map, dtype=np.float64))


def ms_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Masked 3D multi-scale SSIM of the SynthRAD2025 challenge, in [0, 1] (1 for identical input).

    See the module docstring for the exact definition. Returns ``nan`` when the cropped mask is
    empty at some level (the official code does the same). Raises ValueError when the arrays are
    not 3D, the shapes differ or the mask is empty.
    """
    inside = _check(gt, pred, mask)
    if inside.ndim != 3:
        raise ValueError(f"ms_ssim needs 3D volumes, got {inside.ndim}D")
    low, high = HU_RANGE
    x = np.where(inside, np.clip(np.asarray(gt, dtype=np.float64), low, high) - low, 0.0)
    y = np.where(inside, np.clip(np.asarray(pred, dtype=np.float64), low, high) - low, 0.0)

    shortfalls = [max(_MIN_SIZE - n, 0) for n in inside.shape]
    widths = [(short // 2, short - short // 2) for short in shortfalls]
    x = np.pad(x, widths, mode="edge")
    y = np.pad(y, widths, mode="edge")
    inside = np.pad(inside, widths, mode="edge")

    result = 1.0
    for level, weight in enumerate(_LEVEL_WEIGHTS):
        value = _masked_ssim_level(x, y, inside, weight)
        result *= float(np.clip(value, 0.0, 1.0))
        if level < len(_LEVEL_WEIGHTS) - 1:
            x, y = _downsample(x), _downsample(y)
            inside = inside[::2, ::2, ::2]
    return float(result)


def bone_dice(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Dice of bone (above :data:`BONE_HU`) in the CT and in the sCT, inside ``mask`` (1.0 when neither has any)."""
    inside = _check(gt, pred, mask)
    truth, found = (gt > BONE_HU) & inside, (pred > BONE_HU) & inside
    total = int(truth.sum()) + int(found.sum())
    return 2.0 * float((truth & found).sum()) / total if total else 1.0


def image_metrics(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """All three challenge image metrics: ``{"mae": ..., "psnr": ..., "ms_ssim": ...}``."""
    return {
        "mae": mae(gt, pred, mask),
        "psnr": psnr(gt, pred, mask),
        "ms_ssim": ms_ssim(gt, pred, mask),
    }
