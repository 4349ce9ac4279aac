"""Tests of sctconv.evaluation.image_metrics against an independent reference of the SynthRAD2025 definitions.

How the reference below was made: it was written for this test directly from the official
evaluation code's definitions (SynthRAD2025/evaluation ``image_metrics.py``, commit 17cac47) and
shares no code with ``sctconv.evaluation.image_metrics``. It follows the official order of operations literally
(outside-mask voxels set to -1024 first, MAE as ``sum(|gt*m - pred*m|) / sum(m)``, PSNR on
``gt[mask == 1]``, full SSIM maps that are then cropped and masked) but computes the parts
differently from the module:

* 7x7x7 window means: a summed-volume table (cumulative sums plus 8-corner inclusion-exclusion)
  over the volume padded with ``np.pad(mode="symmetric")``, which is scipy's ``reflect``
  boundary, instead of ``scipy.ndimage.uniform_filter``.
* 2x2x2 downsampling: the official ``scipy.signal.fftconvolve(..., mode="same")[::2, ::2, ::2]``
  instead of the module's direct pairwise averages.
* PSNR: the closed formula ``10 log10(4095^2 / mse)``; when scikit-image is installed it is
  also checked against ``skimage.metrics.peak_signal_noise_ratio``, the function the official
  code calls.

While writing the module it was also compared with a transcription of the official file run under
scikit-image 0.26 (not part of this repository): all three metrics agreed to 1e-13 relative.
The comparisons here use a 1e-9 relative tolerance, far inside the 1e-4 acceptance criterion.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from sctconv.evaluation.image_metrics import HU_RANGE, bone_dice, image_metrics, mae, ms_ssim, psnr

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_ct_mr"
# The acceptance criterion is 1e-4 relative. The two implementations agree to rounding (~1e-15),
# and a 1e-4 tolerance would miss real slips: shifting the 2x2x2 downsampling blocks by one voxel
# moves MS-SSIM by only ~1e-5 on these volumes. So the check is much tighter than required.
REL_TOL = 1e-9


# ---------------------------------------------------------------- reference implementation


def _ref_box_mean(image: np.ndarray, size: int = 7) -> np.ndarray:
    """Mean over a size^3 window centred on each voxel, mirror boundary (edge voxel repeated)."""
    r = size // 2
    padded = np.pad(image, r, mode="symmetric")
    table = np.zeros(tuple(n + 1 for n in padded.shape))
    table[1:, 1:, 1:] = padded.cumsum(0).cumsum(1).cumsum(2)
    nz, ny, nx = image.shape
    total = np.zeros(image.shape)
    for dz in (0, size):
        for dy in (0, size):
            for dx in (0, size):
                sign = (-1) ** ((dz == 0) + (dy == 0) + (dx == 0))
                total += sign * table[dz:dz + nz, dy:dy + ny, dx:dx + nx]
    return total / size**3


def _ref_ssim_map(x: np.ndarray, y: np.ndarray, weight: float) -> np.ndarray:
    """SSIM map with luminance, contrast and structure each raised to ``weight``."""
    r = 4095.0
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    c3 = c2 / 2
    n = 7**3
    ux, uy = _ref_box_mean(x), _ref_box_mean(y)
    vx = (_ref_box_mean(x * x) - ux**2) * n / (n - 1)
    vy = (_ref_box_mean(y * y) - uy**2) * n / (n - 1)
    vxy = (_ref_box_mean(x * y) - ux * uy) * n / (n - 1)
    sx, sy = np.sqrt(np.maximum(vx, 0)), np.sqrt(np.maximum(vy, 0))
    lum = np.maximum((2 * ux * uy + c1) / (ux**2 + uy**2 + c1), 0)
    con = np.maximum((2 * sx * sy + c2) / (vx + vy + c2), 0)
    struct = np.maximum((vxy + c3) / (sx * sy + c3), 0)
    return lum**weight * con**weight * struct**weight


def _ref_ms_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    m = (mask > 0).astype(np.float64)
    gt = np.where(m == 0, -1024.0, np.clip(gt, -1024.0, 3071.0)) + 1024.0
    pred = np.where(m == 0, -1024.0, np.clip(pred, -1024.0, 3071.0)) + 1024.0
    pads = []
    for n in gt.shape:
        before = max((97 - n) // 2, 0)
        pads.append((before, max(97 - n - before, 0)))
    gt, pred, m = (np.pad(a, pads, mode="edge") for a in (gt, pred, m))
    values = []
    for w in [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]:
        ssim_map = _ref_ssim_map(gt, pred, w)[3:-3, 3:-3, 3:-3]
        inside = m[3:-3, 3:-3, 3:-3] == 1
        values.append(ssim_map[inside].mean() if inside.any() else math.nan)
        kernel = np.full((2, 2, 2), 1 / 8)
        gt = fftconvolve(gt, kernel, mode="same")[::2, ::2, ::2]
        pred = fftconvolve(pred, kernel, mode="same")[::2, ::2, ::2]
        m = m[::2, ::2, ::2]
    return float(np.prod(np.clip(values, 0, 1)))


def _reference(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    gt = np.where(mask == 0, -1024.0, gt.astype(np.float64))
    pred = np.where(mask == 0, -1024.0, pred.astype(np.float64))
    m = (mask > 0).astype(np.float64)
    ref_mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    g = np.clip(gt, -1024.0, 3071.0)[m == 1]
    p = np.clip(pred, -1024.0, 3071.0)[m == 1]
    ref_psnr = 10 * math.log10(4095.0**2 / np.mean((g - p) ** 2))
    return {"mae": float(ref_mae), "psnr": ref_psnr, "ms_ssim": _ref_ms_ssim(gt, pred, mask)}


# ---------------------------------------------------------------- test data


def _random_case(
    shape: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random 'CT' beyond the HU range, noisy blurred 'prediction' with spikes, blob mask."""
    rng = np.random.default_rng(seed)
    gt = gaussian_filter(rng.normal(size=shape), 1.5)
    gt = -1200 + (gt - gt.min()) / np.ptp(gt) * 4700  # spans [-1200, 3500]: exercises clipping
    pred = gaussian_filter(gt, 0.8) + rng.normal(0, 60, shape)
    pred[rng.random(shape) < 0.002] = 5000.0
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    mask = (sum(g**2 for g in grid) < 0.8) & (rng.random(shape) > 0.1)
    return gt, pred, mask.astype(np.uint8)


def _assert_close(result: dict[str, float], expected: dict[str, float]) -> None:
    assert set(result) == {"mae", "psnr", "ms_ssim"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=REL_TOL), key


# ---------------------------------------------------------------- comparisons with the reference


@pytest.mark.parametrize(
    "shape",
    [(20, 30, 25), (7, 120, 9), (97, 97, 97), (98, 99, 101), (40, 131, 60)],
    ids=["small", "thin-anisotropic", "exactly-97", "odd-above-97", "mixed"],
)
def test_matches_reference_on_random_volumes(shape: tuple[int, int, int]) -> None:
    gt, pred, mask = _random_case(shape, seed=sum(shape))
    expected = _reference(gt, pred, mask)
    assert all(math.isfinite(v) for v in expected.values())
    _assert_close(image_metrics(gt, pred, mask), expected)


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_ct.nii.gz"])
def test_matches_reference_on_real_ct(name: str) -> None:
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"real CT not available at {path}")
    sitk = pytest.importorskip("SimpleITK")
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    rng = np.random.default_rng(7)
    pred = gaussian_filter(gt.astype(np.float64), 1.0) + rng.normal(0, 30, gt.shape)
    mask = (gt > -500).astype(np.uint8)
    _assert_close(image_metrics(gt, pred, mask), _reference(gt, pred, mask))


def test_nan_when_cropped_mask_is_empty_at_a_level() -> None:
    # A 97^3 volume is 7^3 at the coarsest level; after the 3-voxel crop only the centre remains.
    gt, pred, _ = _random_case((97, 97, 97), seed=3)
    mask = np.zeros(gt.shape, np.uint8)
    mask[:20] = 1
    assert math.isnan(ms_ssim(gt, pred, mask))
    assert math.isnan(_ref_ms_ssim(gt, pred, mask))


def test_psnr_matches_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    gt, pred, mask = _random_case((30, 40, 50), seed=11)
    inside = mask == 1
    low, high = HU_RANGE
    expected = metrics.peak_signal_noise_ratio(
        np.clip(gt, low, high)[inside], np.clip(pred, low, high)[inside], data_range=high - low
    )
    assert psnr(gt, pred, mask) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- sanity checks


def test_identical_volumes() -> None:
    gt, _, mask = _random_case((30, 64, 70), seed=5)
    assert mae(gt, gt, mask) == 0.0
    assert psnr(gt, gt, mask) == math.inf
    assert ms_ssim(gt, gt, mask) == pytest.approx(1.0, abs=1e-6)


def test_psnr_closed_form() -> None:
    gt = np.zeros((8, 9, 10))
    pred = gt + 100.0
    mask = np.ones(gt.shape, bool)
    assert psnr(gt, pred, mask) == pytest.approx(10 * math.log10(4095.0**2 / 100.0**2))


def test_mae_ignores_voxels_outside_mask() -> None:
    gt, pred, mask = _random_case((20, 30, 25), seed=1)
    changed = pred.copy()
    changed[mask == 0] = 1e6
    assert mae(gt, changed, mask) == mae(gt, pred, mask)
    assert psnr(gt, changed, mask) == psnr(gt, pred, mask)
    assert ms_ssim(gt, changed, mask) == ms_ssim(gt, pred, mask)


def test_mae_is_not_clipped_but_psnr_is() -> None:
    gt = np.zeros((10, 10, 10))
    pred = gt.copy()
    pred[5, 5, 5] = 5000.0
    mask = np.ones(gt.shape, np.uint8)
    assert mae(gt, pred, mask) == pytest.approx(5000.0 / 1000)
    assert psnr(gt, pred, mask) == pytest.approx(10 * math.log10(4095.0**2 / (3071.0**2 / 1000)))


def test_any_positive_mask_value_is_inside() -> None:
    gt, pred, mask = _random_case((20, 30, 25), seed=2)
    weighted = np.where(mask > 0, 0.5, -3.0)
    assert image_metrics(gt, pred, weighted) == image_metrics(gt, pred, mask.astype(bool))


@pytest.mark.parametrize("func", [mae, psnr, ms_ssim, image_metrics])
def test_shape_mismatch_raises(func) -> None:
    with pytest.raises(ValueError, match="shape"):
        func(np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), np.ones((4, 5, 6)))


@pytest.mark.parametrize("func", [mae, psnr, ms_ssim])
def test_empty_mask_raises(func) -> None:
    with pytest.raises(ValueError, match="empty"):
        func(np.zeros((4, 5, 6)), np.ones((4, 5, 6)), np.zeros((4, 5, 6)))


def test_ms_ssim_needs_3d() -> None:
    with pytest.raises(ValueError, match="3D"):
        ms_ssim(np.zeros((40, 50)), np.zeros((40, 50)), np.ones((40, 50)))


def test_bone_dice() -> None:
    gt = np.full((4, 8, 8), 40.0)
    gt[:, 2:4] = 900.0
    mask = np.ones(gt.shape)
    assert bone_dice(gt, gt, mask) == 1.0
    half = gt.copy()
    half[:, 3] = 40.0
    assert bone_dice(gt, half, mask) == pytest.approx(2 * 32 / (64 + 32))
    assert bone_dice(gt, np.zeros_like(gt), mask) == 0.0
    assert bone_dice(np.zeros_like(gt), np.zeros_like(gt), mask) == 1.0  # no bone anywhere
    mask[:, 2:4] = 0
    assert bone_dice(gt, np.zeros_like(gt), mask) == 1.0  # bone outside the mask does not count
