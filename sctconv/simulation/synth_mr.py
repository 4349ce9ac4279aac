"""Domain-randomised MR from a CT (numpy and scipy only, so that training can make inputs anywhere).

In the spirit of SynthSeg/SynthSR, the network must learn CT from anatomy, not from one intensity
code: every call draws a new contrast. Tissue signal is a piecewise-linear function of HU whose
knots (air, lung, fat, muscle, parenchyma, dense soft tissue, marrow, cortical bone) get random
intensities, half the time from wide uniform ranges and half the time from T1, T2, PD or Dixon-like
orderings; water-HU regions where the HU is flat get a fluid intensity of their own. Air and
cortical bone are dark in every sample (as in all conventional sequences), so bone must be told from
air by where it lies. On top: per-label factors (where a label map exists), texture, a gamma, a
smooth bias field, a random acquisition resolution (thick 2D slices of 3-7 mm along a random axis,
in-plane 0.8-3 mm) and Rician noise at that resolution. Outside the body the signal is noise only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# HU knots of the contrast curve: air, lung, fat, fat, muscle, parenchymal organs, dense soft tissue,
# trabecular bone (marrow), marrow, cortical bone, dense cortex, metal.
KNOTS_HU = np.array([-1000.0, -750.0, -150.0, -60.0, 35.0, 65.0, 130.0, 250.0, 420.0, 750.0, 1500.0, 2500.0])
_FLUID_HU = 7.0  # water-like HU: fluid within _FLUID_HALF_WIDTH_HU of it (fading over 10 HU more)
_FLUID_HALF_WIDTH_HU = 15.0
_MUSCLE_KNOT = 4  # index of muscle in KNOTS_HU: the reference for the noise level
THICK_SLICE_MM = (3.0, 7.0)
"""Range of simulated 2D slice thickness (real clinical MRs: 4-7 mm)."""


def _family_contrast(rng: np.random.Generator) -> tuple[float, ...]:
    """(fat, fluid, muscle, organ, marrow) of a T1, T2, PD or Dixon-like weighting."""
    u = rng.uniform
    family = rng.choice(["t1", "t2", "pd", "water", "fat"])
    if family == "t1":  # fat and marrow bright, fluid dark
        return u(0.8, 1.0), u(0.05, 0.2), u(0.3, 0.45), u(0.4, 0.6), u(0.5, 0.8)
    if family == "t2":  # fluid brightest, fat fairly bright, muscle dark
        return u(0.5, 0.85), u(0.85, 1.0), u(0.12, 0.25), u(0.25, 0.45), u(0.3, 0.55)
    if family == "pd":  # fat and fluid bright, soft tissue intermediate
        return u(0.7, 1.0), u(0.6, 0.9), u(0.4, 0.55), u(0.45, 0.65), u(0.5, 0.75)
    if family == "water":  # Dixon water image: fat and marrow dark, fluid bright
        return u(0.03, 0.15), u(0.6, 1.0), u(0.35, 0.55), u(0.45, 0.7), u(0.05, 0.2)
    return u(0.8, 1.0), u(0.02, 0.1), u(0.05, 0.15), u(0.05, 0.2), u(0.6, 0.9)  # Dixon fat image


def random_contrast(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Signal at each of :data:`KNOTS_HU` and of fluid (relative, 0..1) for one random contrast."""
    u = rng.uniform
    if rng.random() < 0.5:
        fat, fluid, muscle, organ, marrow = _family_contrast(rng)
    else:  # anything goes, except that air and cortex stay dark
        fat, fluid, muscle, organ, marrow = (u(0.03, 1.0) for _ in range(5))
    dense = u(0.3, 0.7) * muscle + u(0.3, 0.7) * organ
    cortical = u(0.0, 0.08) if rng.random() < 0.85 else u(0.05, 0.2)
    curve = np.array([u(0.0, 0.03), u(0.0, 0.12), fat, fat, muscle, organ, min(dense, 1.0), marrow, marrow,
                      cortical, 0.5 * cortical, 0.0])
    return curve, fluid


def tissue_signal(hu: np.ndarray, contrast: np.ndarray, fluid: float) -> np.ndarray:
    """Relative MR signal of a HU volume, with partial volume at sharp edges.

    The contrast curve is not monotone (fat and marrow lie between air, soft tissue and cortex), so
    an edge voxel is not read off the curve: where the 3x3x3 neighbourhood spans more than 500 HU,
    the voxel is a mix of its darkest and brightest neighbours and its signal the same mix of theirs.
    This keeps air/tissue and tissue/cortex edges free of bright fat- or marrow-like rims. Likewise
    fluid intensity goes only to water-HU regions where HU is flat, not to the thin shell of
    water-like HU at every fat/muscle interface.
    """
    hu = ndimage.gaussian_filter(hu, 0.5)  # keeps CT noise from being amplified by steep parts of the curve
    signal = np.interp(hu, KNOTS_HU, contrast).astype(np.float32)
    low = ndimage.minimum_filter(hu, 3)
    high = ndimage.maximum_filter(hu, 3)
    edge = (high - low) > 500.0
    low, high, value = low[edge], high[edge], hu[edge]
    fraction = (value - low) / (high - low)
    signal[edge] = fraction * np.interp(high, KNOTS_HU, contrast) + (1.0 - fraction) * np.interp(
        low, KNOTS_HU, contrast
    )
    calm = ndimage.gaussian_filter(hu, 1.0)  # less noisy HU to tell water from other tissue
    in_band = np.clip((_FLUID_HALF_WIDTH_HU + 10.0 - np.abs(calm - _FLUID_HU)) / 10.0, 0.0, 1.0)
    slope = ndimage.gaussian_gradient_magnitude(hu, 1.0)  # HU per voxel, of ``calm``
    weight = in_band * np.clip((25.0 - slope) / 15.0, 0.0, 1.0)
    signal += weight * (np.float32(fluid) - signal)
    return signal


def _unit_coordinates(shape: tuple[int, ...], spacing_zyx: np.ndarray) -> list[np.ndarray]:
    """Broadcastable voxel coordinates per axis in mm about the centre, divided by the largest half-extent."""
    half = 0.5 * float(max((n - 1) * s for n, s in zip(shape, spacing_zyx))) or 1.0
    coords = []
    for axis, (n, s) in enumerate(zip(shape, spacing_zyx)):
        c = ((np.arange(n, dtype=np.float32) - 0.5 * (n - 1)) * s / half).astype(np.float32)
        view = [1] * len(shape)
        view[axis] = n
        coords.append(c.reshape(view))
    return coords


def bias_field(shape: tuple[int, ...], spacing_zyx: np.ndarray, rng: np.random.Generator,
               strength: tuple[float, float] = (0.15, 0.3)) -> np.ndarray:
    """Smooth multiplicative field exp(p), p a random second-order polynomial; max |field - 1| in ``strength``."""
    z, y, x = _unit_coordinates(shape, spacing_zyx)
    c = rng.normal(size=9).astype(np.float32)
    log_field = (c[0] * x + c[1] * y + 0.5 * c[2] * z) + (c[3] * x * x + c[4] * y * y + 0.5 * c[5] * z * z)
    log_field = log_field + (c[6] * x * y + 0.5 * c[7] * x * z + 0.5 * c[8] * y * z)
    peak = float(np.abs(log_field).max()) or 1.0
    return np.exp(log_field * np.float32(np.log1p(rng.uniform(*strength)) / peak))


def smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, factor: int) -> np.ndarray:
    """Unit-variance low-frequency noise: white noise on a grid ``factor`` times coarser, upsampled."""
    coarse_shape = tuple(max(2, -(-n // factor)) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0)
    coarse /= float(coarse.std()) or 1.0
    return ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape)], order=1, grid_mode=True,
                        mode="nearest")


def _acquisition_factors(spacing_zyx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How many times coarser than ``spacing_zyx`` the simulated acquisition samples each axis (>= 1):
    thick 2D slices (usually axial) seven times in ten, an in-plane resolution of 0.8-3 mm."""
    factors = np.maximum(1.0, rng.uniform(0.8, 3.0, size=3) / spacing_zyx)
    if rng.random() < 0.7:
        axis = int(rng.choice(3, p=[0.7, 0.15, 0.15]))
        factors[axis] = max(1.0, rng.uniform(*THICK_SLICE_MM) / float(spacing_zyx[axis]))
    return factors


def _acquire(signal: np.ndarray, factors: np.ndarray, scale: float, sigma: float,
             rng: np.random.Generator) -> np.ndarray:
    """Average over the acquired voxel, sample on its coarser grid, add Rician noise there and
    interpolate back (as resampling a thick-slice MR onto the model grid does)."""
    for axis, factor in enumerate(factors):
        if factor >= 1.5:  # a slice profile: the box of the acquired voxel
            signal = ndimage.uniform_filter1d(signal, int(round(factor)), axis=axis, mode="nearest")
        elif factor > 1.0:
            signal = ndimage.gaussian_filter1d(signal, 0.3 * factor, axis=axis, mode="nearest")
    shape = signal.shape
    coarse_shape = tuple(max(2, int(round(n / f))) for n, f in zip(shape, factors))
    coarse = ndimage.zoom(signal, [c / n for c, n in zip(coarse_shape, shape)], order=1, grid_mode=True,
                          mode="nearest")
    real = coarse * np.float32(scale) + np.float32(sigma) * rng.standard_normal(coarse.shape, dtype=np.float32)
    imaginary = np.float32(sigma) * rng.standard_normal(coarse.shape, dtype=np.float32)
    magnitude = np.hypot(real, imaginary)
    return ndimage.zoom(magnitude, [n / c for n, c in zip(shape, coarse_shape)], order=1, grid_mode=True,
                        mode="nearest").astype(np.float32)


def simulate_mr_array(hu: np.ndarray, body: np.ndarray, spacing_zyx: np.ndarray, rng: np.random.Generator,
                      labels: np.ndarray | None = None) -> np.ndarray:
    """Domain-randomised MR (float32, arbitrary positive scale) of a (z, y, x) HU array.

    ``body`` (bool) is where the signal is tissue; ``labels`` (integers > 0 inside structures) give
    each structure its own random intensity factor. The result lies on the same grid.
    """
    spacing_zyx = np.asarray(spacing_zyx, dtype=np.float64)
    contrast, fluid = random_contrast(rng)
    signal = tissue_signal(hu.astype(np.float32), contrast, fluid)
    if labels is not None:
        label_array = np.clip(labels.astype(np.int64), 0, None)
        factors = rng.uniform(0.7, 1.3, size=int(label_array.max()) + 1).astype(np.float32)
        factors[0] = 1.0
        signal *= factors[label_array]
    signal *= 1.0 + rng.uniform(0.02, 0.08) * smooth_noise(hu.shape, rng, factor=3)
    signal = np.clip(signal, 0.0, None) ** np.float32(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    signal *= bias_field(hu.shape, spacing_zyx, rng, strength=(0.1, 0.4))
    signal[~body] = 0.0
    scale = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
    sigma = scale * max(float(contrast[_MUSCLE_KNOT]), 0.1) / rng.uniform(8.0, 40.0)  # muscle SNR 8-40
    return _acquire(signal.astype(np.float32), _acquisition_factors(spacing_zyx, rng), scale, sigma, rng)
