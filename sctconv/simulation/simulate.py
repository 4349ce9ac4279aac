"""Paired-data simulator: MR-like and CBCT-like volumes from a CT, and a procedural CT phantom.

This is how training pairs and examples are made without patient data. ``simulate_mr`` and
``simulate_cbct`` return a float32 volume on exactly the CT's grid, so (simulated input, CT) is a
voxel-aligned pair. ``make_phantom`` returns a torso-like CT in HU with a tissue label map.

The array axis 0 of every image is taken as the slice (cranio-caudal) axis: the CBCT field of view
is a cylinder along it and cupping and streaks are drawn in each axial slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sctconv.errors import SctconvError
from sctconv.hu import CT_BODY_THRESHOLD_HU, HU_MAX, HU_MIN
from sctconv.io.images import read_label_map, read_volume, write_image
from sctconv.io.output_dir import atomic_output_dir, check_output_dir
from sctconv.preprocessing.body_mask import body_mask_from_array
from sctconv.preprocessing.grid import image_like
from sctconv.simulation.synth_mr import simulate_mr_array, smooth_noise

PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "soft_tissue": 1,
    "fat": 2,
    "lung": 3,
    "bone": 4,
    "organ": 5,
    "kidney": 6,
    "fluid": 7,
    "gas": 8,
}
"""Label values in the map returned by :func:`make_phantom`."""

OUTSIDE_FOV_HU = -1000.0
"""The value of a simulated CBCT outside its cylindrical field of view."""


def _as_float_array(image: sitk.Image) -> np.ndarray:
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise SctconvError("the simulator needs a 3D scalar CT image")
    return sitk.GetArrayFromImage(image).astype(np.float32)


def simulate_mr(ct: sitk.Image, rng: np.random.Generator, labels: sitk.Image | None = None) -> sitk.Image:
    """Domain-randomised MR-like volume (float32, arbitrary positive scale) on the grid of ``ct`` (HU).

    See :mod:`sctconv.simulation.synth_mr`: a new random contrast per call, with air and cortical bone dark,
    bias field, thick slices and Rician noise; outside the body the signal is zero plus noise.
    ``labels`` (integer map on the same grid) is an optional hint: every label value > 0 gets its
    own random intensity factor and counts as body.
    """
    hu = _as_float_array(ct)
    body = body_mask_from_array(hu, CT_BODY_THRESHOLD_HU).astype(bool)
    label_array = None
    if labels is not None:
        if labels.GetSize() != ct.GetSize():
            raise SctconvError("the label map and the CT must have the same size")
        label_array = sitk.GetArrayFromImage(labels)
        body |= label_array > 0
    spacing_zyx = np.array(ct.GetSpacing()[::-1], dtype=np.float64)
    return image_like(simulate_mr_array(hu, body, spacing_zyx, rng, label_array), ct)


def _streaks(hu: np.ndarray, spacing_zyx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive angular streaks (HU) radiating from the densest bone/metal cluster of each axial slice."""
    dense_weight = np.clip(hu - 700.0, 0.0, None) / 800.0
    pixel_area = float(spacing_zyx[1] * spacing_zyx[2])
    # Strength per slice: ~1 for a vertebra-sized cross-section of cortical bone, up to 3 with metal.
    strength = np.minimum(np.sqrt(dense_weight.sum(axis=(1, 2)) * pixel_area / 100.0), 3.0)
    streaks = np.zeros(hu.shape, dtype=np.float32)
    active = np.flatnonzero(strength > 0.05)
    if active.size == 0:
        return streaks

    bins = 720
    angles = np.linspace(-np.pi, np.pi, bins, endpoint=False)
    profile = np.zeros(bins)
    for _ in range(int(rng.integers(3, 7))):
        centre = rng.uniform(-np.pi, np.pi)
        width = np.deg2rad(rng.uniform(0.8, 2.5))
        distance = np.angle(np.exp(1j * (angles - centre)))  # wrapped to (-pi, pi]
        # A dark streak on one line through the centroid, i.e. at both centre and centre + pi.
        line = np.exp(-0.5 * (distance / width) ** 2)
        line += np.exp(-0.5 * ((np.abs(distance) - np.pi) / width) ** 2)
        profile += rng.choice([-1.0, 0.6]) * rng.uniform(0.5, 1.0) * line
    profile = (profile * rng.uniform(20.0, 50.0)).astype(np.float32)

    # Streak origin per slice: the densest cluster (dense material smoothed over ~1 cm).
    ny, nx = hu.shape[1:]
    cluster = ndimage.gaussian_filter(dense_weight[active], (0.0, *(10.0 / spacing_zyx[1:])), mode="constant")
    cy, cx = np.unravel_index(cluster.reshape(active.size, -1).argmax(axis=1), (ny, nx))
    dy = (np.arange(ny, dtype=np.float32)[None, :, None] - cy[:, None, None].astype(np.float32))
    dx = (np.arange(nx, dtype=np.float32)[None, None, :] - cx[:, None, None].astype(np.float32))
    dy *= float(spacing_zyx[1])
    dx *= float(spacing_zyx[2])
    index = (np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(bins / (2 * np.pi))
    index = index.astype(np.int32) % bins
    radius = np.hypot(dy, dx)
    decay = np.clip(radius / 15.0, 0.0, 1.0) / (1.0 + radius / 120.0)  # none inside the dense object
    streaks[active] = profile[index] * decay * strength[active, None, None].astype(np.float32)
    return streaks


def _miscalibration(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The HU a CBCT reads for true ``hu``: a scale (x0.85-1.15) and offset (+-120 HU) with a smooth
    nonlinearity (up to +-80 HU at air, lung, water, bone and dense bone knots), as scatter and the
    missing CT calibration of kV CBCT give (Giacometti et al. 2020, Phys Med 76:243)."""
    knots = np.array([-1000.0, -500.0, 0.0, 500.0, 1500.0, 3071.0])
    deviation = rng.uniform(-80.0, 80.0, size=knots.size) * rng.uniform(0.0, 1.0)
    read = rng.uniform(0.85, 1.15) * knots + rng.uniform(-120.0, 120.0) + deviation
    return np.interp(hu, knots, np.sort(read)).astype(np.float32)


def _shading(shape: tuple[int, ...], spacing_zyx: np.ndarray, r2: np.ndarray, object_r2: float,
             rng: np.random.Generator) -> np.ndarray:
    """Low-frequency additive HU field of scatter: cupping toward the rotation axis (30-200 HU at the
    centre of the object, Siewerdsen and Jaffray 2001, Med Phys 28:220) plus smooth shading (sd 10-50 HU)."""
    cupping = rng.uniform(30.0, 200.0) * np.clip(1.0 - r2 / max(object_r2, 1e-3), 0.0, None)
    coarse = max(4, int(round(60.0 / float(spacing_zyx[1:].mean()))))  # features of ~6 cm and more
    shading = rng.uniform(10.0, 50.0) * smooth_noise(shape, rng, factor=coarse)
    return shading - cupping[None]


def _rings(shape: tuple[int, ...], radius_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Concentric ring artefacts about the rotation axis (detector gain errors): 0-30 HU."""
    rings = np.zeros(shape[1:], dtype=np.float32)
    for _ in range(int(rng.integers(0, 8))):
        centre, width = rng.uniform(5.0, 200.0), rng.uniform(0.8, 2.5)
        rings += rng.uniform(-30.0, 30.0) * np.exp(-0.5 * ((radius_mm - centre) / width) ** 2)
    return rings[None]


def simulate_cbct(ct: sitk.Image, rng: np.random.Generator, fov_radius_mm: float | None = None) -> sitk.Image:
    """CBCT-like volume (float32, approximately HU) on the grid of ``ct`` (HU).

    At magnitudes reported for kV CBCT: HU miscalibration (scale, offset, nonlinearity; see
    :func:`_miscalibration`), blur (0.5-1.5 mm), cupping and scatter shading (:func:`_shading`),
    streaks from bone and metal (20-100 HU), ring artefacts, correlated noise (sd 15-60 HU) and a
    cylindrical field of view along the slice axis (radius ``fov_radius_mm``, drawn in 125-250 mm
    as the full- and half-fan fields of clinical systems when None, centre near the image centre);
    outside it the value is -1000. Clipped to [-1024, 3071].
    """
    hu = _as_float_array(ct)
    spacing_zyx = np.array(ct.GetSpacing()[::-1], dtype=np.float64)
    shape = hu.shape

    volume = _miscalibration(hu, rng)
    volume = ndimage.gaussian_filter(volume, rng.uniform(0.5, 1.5) / spacing_zyx, mode="nearest")
    volume += _streaks(hu, spacing_zyx, rng) * np.float32(rng.uniform(1.0, 2.0))

    radius_mm = float(rng.uniform(125.0, 250.0)) if fov_radius_mm is None else float(fov_radius_mm)
    centre_y, centre_x = 0.5 * (np.array(shape[1:]) - 1) * spacing_zyx[1:] + rng.normal(0.0, 8.0, size=2)
    y = (np.arange(shape[1], dtype=np.float32) * float(spacing_zyx[1]) - float(centre_y))[:, None]
    x = (np.arange(shape[2], dtype=np.float32) * float(spacing_zyx[2]) - float(centre_x))[None, :]
    r2 = (y * y + x * x) / np.float32(radius_mm**2)
    tissue = (hu > CT_BODY_THRESHOLD_HU).any(axis=0) & (r2 <= 1.0)
    object_r2 = float(r2[tissue].max()) if tissue.any() else 1.0
    # Scatter adds to what attenuates: shading scales with the density present (none in air).
    density = np.clip((volume + 1000.0) / 1000.0, 0.0, 1.5)
    volume += _shading(shape, spacing_zyx, r2, object_r2, rng) * density
    if rng.random() < 0.5:
        volume += _rings(shape, np.sqrt(r2) * np.float32(radius_mm), rng) * density

    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0.3, 0.7, 0.7))
    volume += noise * np.float32(rng.uniform(15.0, 60.0) / (float(noise.std()) or 1.0))

    volume[:, r2 > 1.0] = OUTSIDE_FOV_HU
    np.clip(volume, HU_MIN, HU_MAX, out=volume)
    return image_like(volume.astype(np.float32), ct)


def cbct_field_of_view(cbct: sitk.Image) -> np.ndarray:
    """Where a volume made by :func:`simulate_cbct` was inside its field of view ((z, y, x) bool).

    Inside, noise makes an exact :data:`OUTSIDE_FOV_HU` practically impossible, so the fill value
    marks the outside.
    """
    return sitk.GetArrayViewFromImage(cbct) != OUTSIDE_FOV_HU


class _PhantomPainter:
    """Holds the phantom's HU and label arrays and the physical voxel coordinates (mm, centred at 0)."""

    def __init__(self, shape: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> None:
        nz, ny, nx = shape
        sx, sy, sz = spacing_xyz
        self.z = ((np.arange(nz) - 0.5 * (nz - 1)) * sz)[:, None, None]
        self.y = ((np.arange(ny) - 0.5 * (ny - 1)) * sy)[None, :, None]
        self.x = ((np.arange(nx) - 0.5 * (nx - 1)) * sx)[None, None, :]
        self.hu = np.full(shape, HU_MIN, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)

    def paint(self, where: np.ndarray, hu: float, label: str) -> None:
        where = np.broadcast_to(where, self.hu.shape)
        self.hu[where] = hu
        self.labels[where] = PHANTOM_LABELS[label]

    def ellipsoid(self, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
        """Mask of an axis-aligned ellipsoid; ``centre`` and ``semi`` are (x, y, z) in mm."""
        return (((self.x - centre[0]) / semi[0]) ** 2 + ((self.y - centre[1]) / semi[1]) ** 2
                + ((self.z - centre[2]) / semi[2]) ** 2) < 1.0


@dataclass(frozen=True)
class _Outline:
    """The phantom's body outline: a perturbed ellipse (mm) with subcutaneous fat and a muscle wall."""

    x: np.ndarray
    y: np.ndarray
    half_x: float
    half_y: float
    radius: np.ndarray  # relative radius by angle and height
    phi: np.ndarray  # angle around the body axis
    fat: np.ndarray  # subcutaneous fat thickness by angle
    wall: float  # muscle wall thickness

    def inside(self, inset: np.ndarray | float) -> np.ndarray:
        """Inside the outline moved ``inset`` mm inwards."""
        return ((self.x / (self.half_x - inset)) ** 2 + (self.y / (self.half_y - inset)) ** 2) < self.radius**2

    def depth(self, wall_fraction: float) -> tuple[float, float]:
        """Semi-axes (x, y) inside the fat and ``wall_fraction`` of the muscle wall."""
        return (self.half_x - float(self.fat.mean()) - wall_fraction * self.wall,
                self.half_y - float(self.fat.mean()) - wall_fraction * self.wall)


@dataclass(frozen=True)
class _Spine:
    """Where the spine lies (mm), scaled with the body; the organs are placed around it."""

    scale: float  # body size relative to an adult's
    vertebra_r: float
    vertebra_y: float
    canal_r: float
    spinous: float
    paraspinal: np.ndarray  # paraspinal muscles and psoas


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (40, 96, 112),
    spacing: tuple[float, float, float] = (2.5, 2.5, 3.0),
) -> tuple[sitk.Image, sitk.Image]:
    """Procedural torso CT phantom: (CT in HU as int16, tissue labels as uint8, see ``PHANTOM_LABELS``).

    ``shape`` is numpy order (z, y, x), ``spacing`` ITK order (x, y, z) in mm; the origin puts the
    volume centre at 0 mm, direction identity, superior toward +z. The body is a perturbed ellipse
    with subcutaneous fat, a muscle wall, a cavity of bowel and visceral fat with gas pockets, liver,
    gallbladder, spleen and kidneys, optionally lungs and heart above a random diaphragm level, ribs
    and a spine (cortical shell, trabecular core, discs, canal, posterior elements). Outside the body
    is -1024.
    """
    if len(shape) != 3 or min(shape) < 1 or len(spacing) != 3 or min(spacing) <= 0:
        raise SctconvError("the phantom needs a 3D shape and positive spacing")
    p = _PhantomPainter(shape, spacing)
    half_z = max(0.5 * (shape[0] - 1) * spacing[2], 1.0)
    outline = _paint_outline(p, rng, shape, spacing, half_z)
    body = outline.inside(0.0)
    spine = _place_spine(outline, rng)
    cavity = outline.inside(outline.fat + outline.wall) & ~spine.paraspinal

    # Cavity content: bowel and visceral fat, a few gas pockets.
    mottle = ndimage.gaussian_filter(rng.standard_normal(shape), 5.0 / np.array(spacing[::-1]))
    mottle /= mottle.std() or 1.0
    p.paint(cavity, 35.0, "soft_tissue")
    p.paint(cavity & (mottle > np.quantile(mottle, 1.0 - rng.uniform(0.25, 0.5))), -95.0, "fat")
    gas = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    p.paint(cavity & (gas > np.quantile(gas, 0.995)), -950.0, "gas")

    # One phantom in five is abdomen only: the diaphragm lies above the volume, no lungs.
    diaphragm = -half_z + 2 * half_z * rng.uniform(0.3, 0.6) if rng.random() < 0.8 else half_z + 60.0
    _paint_abdomen(p, rng, outline, spine, cavity, diaphragm)
    lung = _paint_thorax(p, rng, outline, cavity, diaphragm, shape)
    # Aorta, left-anterior of the vertebral body.
    aorta_r = 11.0 * spine.scale
    aorta_y = spine.vertebra_y - spine.vertebra_r - aorta_r - 2.0
    p.paint(np.hypot(p.x - 0.8 * spine.vertebra_r, p.y - aorta_y) < aorta_r, 45.0, "organ")
    _paint_ribs(p, rng, outline, spine, body, diaphragm)
    _paint_spine(p, rng, spine, spacing)

    # Texture, a little blur (partial volume) and CT noise; exact air outside.
    trabecular = (p.labels == PHANTOM_LABELS["bone"]) & (p.hu < 400.0)
    p.hu += np.where(trabecular, 50.0, 8.0) * mottle
    p.hu[lung] += 25.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 0.7)[lung]
    hu = ndimage.gaussian_filter(p.hu, 0.5) + rng.uniform(4.0, 10.0) * rng.standard_normal(shape)
    hu[~np.broadcast_to(body, shape)] = HU_MIN
    ct = sitk.GetImageFromArray(np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16))
    labels = sitk.GetImageFromArray(p.labels)
    origin = tuple(-0.5 * (n - 1) * s for n, s in zip(shape[::-1], spacing))
    for image in (ct, labels):
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(origin)
    return ct, labels


def _paint_outline(p: _PhantomPainter, rng: np.random.Generator, shape: tuple[int, int, int],
                   spacing: tuple[float, float, float], half_z: float) -> _Outline:
    """The body outline (an ellipse with low-order angular perturbations and a slow change of size
    along z), painted: subcutaneous fat, skin, muscle."""
    u = rng.uniform
    x, y, z = p.x, p.y, p.z
    _, ny, nx = shape
    half_x = 0.44 * nx * spacing[0] * u(0.82, 1.0)
    half_y = min(half_x * u(0.65, 0.8), 0.45 * ny * spacing[1])
    phi = np.arctan2(y, x)
    radius = 1.0 + 0.04 * np.sin(np.pi * u(0.3, 0.8) * z / half_z + u(0, 2 * np.pi))
    for k in (2, 3, 4):
        radius = radius + rng.normal(0.0, 0.03 / k) * np.cos(k * phi + u(0, 2 * np.pi))
    fat = u(6.0, 22.0) * (1.0 + 0.4 * np.cos(phi - u(0, 2 * np.pi)))
    outline = _Outline(x, y, half_x, half_y, radius, phi, fat, wall=u(8.0, 16.0))
    body = outline.inside(0.0)
    p.paint(body, -100.0, "fat")
    p.paint(body & ~outline.inside(2.0), 20.0, "soft_tissue")  # skin
    p.paint(outline.inside(fat), 45.0, "soft_tissue")
    return outline


def _place_spine(outline: _Outline, rng: np.random.Generator) -> _Spine:
    """Spine geometry (scaled with body size): vertebral body, canal and spinous process end ~1 cm
    inside the back muscles; paraspinal muscles and psoas fill the region around it."""
    x, y = outline.x, outline.y
    scale = float(np.clip(outline.half_x / 150.0, 0.6, 1.2))
    vertebra_r = rng.uniform(13.0, 17.0) * scale
    canal_r = 6.5 * scale
    spinous = 20.0 * scale
    vertebra_y = (outline.half_y - float(outline.fat.mean()) - 10.0
                  - (vertebra_r + 2.0 * scale + 2.0 * canal_r + spinous))
    paraspinal = ((x / (vertebra_r + 40.0 * scale)) ** 2
                  + ((y - vertebra_y - 0.6 * vertebra_r) / (1.6 * vertebra_r + 22.0 * scale)) ** 2) < 1.0
    return _Spine(scale, vertebra_r, vertebra_y, canal_r, spinous, paraspinal)


def _paint_abdomen(p: _PhantomPainter, rng: np.random.Generator, outline: _Outline, spine: _Spine,
                   cavity: np.ndarray, diaphragm: float) -> None:
    """Liver (right, domed top under the right lung), gallbladder, spleen, kidneys in perirenal fat."""
    u = rng.uniform
    cav_x, cav_y = outline.depth(1.0)
    liver_height = u(70.0, 100.0)
    p.paint(cavity & p.ellipsoid((-0.4 * cav_x, -0.05 * cav_y, diaphragm + 15 - liver_height),
                                 (0.6 * cav_x, 0.85 * cav_y, liver_height)), u(55.0, 65.0), "organ")
    gallbladder = p.ellipsoid((-0.3 * cav_x, -0.45 * cav_y, diaphragm - 40.0),
                              (15.0 * spine.scale, 15.0 * spine.scale, 30))
    p.paint(cavity & gallbladder, u(5.0, 15.0), "fluid")
    p.paint(cavity & p.ellipsoid((0.6 * cav_x, 0.3 * cav_y, diaphragm - 40),
                                 (0.25 * cav_x, 0.35 * cav_y, 45.0)), u(40.0, 50.0), "organ")
    for side in (-1.0, 1.0):
        kidney = (side * (spine.vertebra_r + 45.0 * spine.scale), spine.vertebra_y - 0.2 * spine.vertebra_r,
                  diaphragm - 60.0)
        semi = np.array([20.0, 26.0, 45.0]) * spine.scale
        p.paint(outline.inside(outline.fat + outline.wall) & p.ellipsoid(kidney, tuple(semi + 8.0)), -95.0, "fat")
        p.paint(p.ellipsoid(kidney, tuple(semi)), u(25.0, 35.0), "kidney")
        sinus = p.ellipsoid((kidney[0] - side * 0.7 * semi[0], kidney[1] - 4.0, kidney[2]), tuple(semi * 0.4))
        p.paint(sinus, -90.0, "fat")


def _paint_thorax(p: _PhantomPainter, rng: np.random.Generator, outline: _Outline, cavity: np.ndarray,
                  diaphragm: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Lungs above a domed diaphragm (left lung smaller) with vessels, the heart between them; the
    lung mask."""
    cav_x, cav_y = outline.depth(1.0)
    lung_height = rng.uniform(130.0, 200.0)
    for side in (-1.0, 1.0):
        centre_x, semi_x, semi_y = side * 0.48 * cav_x, (0.45 if side < 0 else 0.4) * cav_x, 0.82 * cav_y
        lung_z = diaphragm + 0.6 * lung_height
        lung = p.ellipsoid((centre_x, 0.05 * cav_y, lung_z), (semi_x, semi_y, lung_height))
        dome = 1.0 - ((p.x - centre_x) / semi_x) ** 2 - ((p.y + 0.3 * cav_y) / semi_y) ** 2
        dome = 30.0 * np.clip(dome, 0.0, 1.0)
        p.paint(outline.inside(outline.fat + outline.wall) & lung & (p.z > diaphragm + dome), -860.0, "lung")
    heart = p.ellipsoid((0.15 * cav_x, -0.3 * cav_y, diaphragm + 45.0), (0.35 * cav_x, 0.4 * cav_y, 55.0))
    p.paint(cavity & heart, 40.0, "organ")
    lung = p.labels == PHANTOM_LABELS["lung"]
    vessels = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8)
    p.paint(lung & (vessels > np.quantile(vessels, 0.97)), -60.0, "lung")
    return lung


def _paint_ribs(p: _PhantomPainter, rng: np.random.Generator, outline: _Outline, spine: _Spine,
                body: np.ndarray, diaphragm: float) -> None:
    """Ribs (an oblique band pattern on a ring inside the muscle wall, above the lower thorax) and
    the sternum."""
    x, y, z = p.x, p.y, p.z
    ring_x, ring_y = outline.depth(0.5)
    ring = np.abs(np.hypot(x / ring_x, y / ring_y) - outline.radius) * 0.5 * (ring_x + ring_y) < 3.5
    from_back = np.abs(np.angle(np.exp(1j * (outline.phi - 0.5 * np.pi))))
    rib_period = rng.uniform(22.0, 28.0)
    rib_z = np.mod(z + 0.5 * from_back * ring_x + rng.uniform(0, rib_period), rib_period) < 10.0
    ribs = body & ring & rib_z & (from_back < np.pi - 0.4) & (z > diaphragm - 40.0)
    p.paint(ribs & ~spine.paraspinal, 600.0, "bone")
    sternum = outline.inside(outline.fat + 2.0) & ~outline.inside(outline.fat + 12.0) & (np.abs(x) < 11.0)
    p.paint(sternum & (y < 0) & (z > diaphragm - 20.0), 400.0, "bone")


def _paint_spine(p: _PhantomPainter, rng: np.random.Generator, spine: _Spine,
                 spacing: tuple[float, float, float]) -> None:
    """Vertebral bodies (cortical shell, trabecular core) separated by discs, canal, posterior arch."""
    u = rng.uniform
    x, y = p.x, p.y
    scale, vertebra_r, canal_r = spine.scale, spine.vertebra_r, spine.canal_r
    disc = np.mod(p.z + u(0, 30.0), u(24.0, 30.0)) < 6.0
    r_body = np.hypot(x, y - spine.vertebra_y)
    p.paint(r_body < vertebra_r, u(850.0, 1100.0), "bone")
    cortex = max(3.0, 1.2 * max(spacing[:2]))  # at least a voxel, so coarse grids keep cortical HU
    p.paint(r_body < vertebra_r - cortex, u(200.0, 280.0), "bone")
    p.paint((r_body < vertebra_r) & disc, 90.0, "soft_tissue")
    canal_y = spine.vertebra_y + vertebra_r + 2.0 * scale + canal_r
    r_canal = np.hypot(x, y - canal_y)
    arch = r_canal < canal_r + 5.0 * scale
    arch |= (np.abs(x) < 4.0 * scale) & (y > canal_y) & (y < canal_y + canal_r + spine.spinous)  # spinous process
    arch |= (np.abs(y - canal_y) < 4.0 * scale) & (np.abs(x) < canal_r + 25.0 * scale)  # transverse processes
    p.paint(arch & ~disc, 550.0, "bone")
    p.paint(r_canal < canal_r, 10.0, "fluid")


CT_AIR_CEILING_HU = -500.0
"""A CT in HU holds air (or the -1024 padding) below this; an MR, or a CT stored without its rescale, does not."""


def read_ct(path: Path) -> sitk.Image:
    """Read a CT in HU; a DICOM series of another modality, or a volume with no air, is refused."""
    volume = read_volume(path)
    if volume.dicom_modality not in (None, "CT"):
        raise SctconvError(f"{path} is a DICOM {volume.dicom_modality} series; simulate needs a CT")
    lowest = float(np.min(sitk.GetArrayViewFromImage(volume.image)))
    if lowest > CT_AIR_CEILING_HU:
        raise SctconvError(f"{path} does not look like a CT in HU: its lowest value is {lowest:g}, where a CT "
                           "holds air near -1000 HU (an MR, or a CT stored with an offset?)")
    return volume.image


def write_simulated_case(ct_path: Path, out_dir: Path, modality: str, labels_path: Path | None = None,
                         seed: int = 0, overwrite: bool = False) -> None:
    """Write a paired case folder ``<modality>.mha``, ``ct.mha``, ``mask.mha`` (SynthRAD2025 layout).

    The CT is clipped to [-1024, 3071] and stored as int16; the mask is the CT's body mask, for a
    CBCT limited to its field of view.
    """
    if modality not in ("mr", "cbct"):
        raise SctconvError(f"--modality must be mr or cbct, not {modality!r}")
    check_output_dir(out_dir, overwrite, (ct_path, labels_path))
    ct = read_ct(ct_path)
    ct = sitk.Clamp(ct, sitk.sitkFloat32, HU_MIN, HU_MAX)
    labels = read_label_map(labels_path, ct) if labels_path else None
    rng = np.random.default_rng(seed)
    simulated = simulate_mr(ct, rng, labels) if modality == "mr" else simulate_cbct(ct, rng)
    body = body_mask_from_array(sitk.GetArrayViewFromImage(ct), CT_BODY_THRESHOLD_HU)
    if modality == "cbct":  # as in SynthRAD2025 Task 2: the mask covers the body inside the CBCT's view
        body &= cbct_field_of_view(simulated)
    mask = image_like(body, ct)
    with atomic_output_dir(out_dir, overwrite, (ct_path, labels_path)) as staging:
        write_image(simulated, staging / f"{modality}.mha")
        write_image(sitk.Cast(sitk.Round(ct), sitk.sitkInt16), staging / "ct.mha")
        write_image(mask, staging / "mask.mha")
