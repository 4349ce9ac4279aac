"""Tests of sctconv.simulation.synth_mr: domain randomisation keeps air and cortical bone dark, varies the rest,
and simulates thick-slice acquisitions."""

from __future__ import annotations

import numpy as np

from sctconv.simulation.synth_mr import (
    KNOTS_HU,
    THICK_SLICE_MM,
    _acquisition_factors,
    random_contrast,
    simulate_mr_array,
)


def _slab_volume() -> tuple[np.ndarray, np.ndarray]:
    """A (48, 64, 64) block: soft tissue with a 12 mm cortical-bone slab, a fat slab and an air pocket."""
    hu = np.full((48, 64, 64), 40.0, dtype=np.float32)
    hu[:, 20:26] = 1200.0  # cortical bone, 6 voxels of 2 mm
    hu[:, 40:46] = -100.0  # fat
    hu[10:30, 50:60, 20:40] = -1000.0  # air inside the body
    return hu, np.ones(hu.shape, dtype=bool)


def test_air_and_cortex_dark_in_every_sample() -> None:
    hu, body = _slab_volume()
    interior = (slice(12, 36), slice(None), slice(12, 52))
    for seed in range(24):
        mr = simulate_mr_array(hu, body, np.array([2.0, 2.0, 2.0]), np.random.default_rng(seed))[interior]
        brightest = max(np.median(mr[:, 30:38]), np.median(mr[:, 41:45]))  # soft tissue, fat
        assert np.median(mr[:, 22:24]) < 0.35 * brightest, seed
        assert np.median(mr[2:14, 53:57, 12:24]) < 0.35 * brightest, seed


def test_contrast_orderings_vary() -> None:
    rng = np.random.default_rng(0)
    fat, muscle = np.searchsorted(KNOTS_HU, -150.0), np.searchsorted(KNOTS_HU, 35.0)
    ratios = [c[fat] / c[muscle] for c, _ in (random_contrast(rng) for _ in range(200))]
    assert min(ratios) < 0.5 and max(ratios) > 2.0  # fat darker (Dixon water) and brighter (T1) than muscle


def test_thick_slices_are_simulated() -> None:
    rng = np.random.default_rng(1)
    spacing = np.array([2.0, 2.0, 2.0])
    factors = np.array([_acquisition_factors(spacing, rng) for _ in range(400)])
    thick = factors.max(axis=1)
    assert (thick >= THICK_SLICE_MM[0] / 2.0).mean() > 0.5  # most samples are 2D acquisitions
    assert thick.max() <= THICK_SLICE_MM[1] / 2.0 + 1e-9
    assert (factors.argmax(axis=1) == 0).mean() > 0.5  # usually axial


def test_outside_the_body_is_noise_and_shapes_kept() -> None:
    hu, body = _slab_volume()
    body[:, :, :8] = False
    mr = simulate_mr_array(hu, body, np.array([3.0, 1.5, 1.5]), np.random.default_rng(3))
    assert mr.shape == hu.shape and mr.dtype == np.float32 and np.isfinite(mr).all()
    assert np.median(mr[:, 30:38, :4]) < 0.2 * np.median(mr[:, 30:38, 20:40])
