"""Tests of sctconv.simulation.simulate: geometry, determinism and the physical properties of each simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sctconv.errors import SctconvError
from sctconv.simulation.simulate import PHANTOM_LABELS, make_phantom, simulate_cbct, simulate_mr, write_simulated_case
from tests import dicom_factory as factory
from tests.helpers import SHARED_DATA

REAL_CT = SHARED_DATA / "totalsegmentator_ct_mr" / "example_ct_sm.nii.gz"


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=0)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=0)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=0)
    )


@pytest.fixture(scope="module")
def phantom() -> tuple[sitk.Image, sitk.Image]:
    ct, labels = make_phantom(np.random.default_rng(0))
    assert (sitk.GetArrayViewFromImage(labels) == PHANTOM_LABELS["lung"]).any(), "seed 0 should give lungs"
    return ct, labels


@pytest.fixture(scope="module")
def moved_phantom(phantom: tuple[sitk.Image, sitk.Image]) -> sitk.Image:
    """The phantom CT on a grid with a non-trivial origin and direction (a flipped, swapped axis pair)."""
    ct = sitk.Image(phantom[0])
    ct.SetOrigin((12.5, -40.0, 7.25))
    ct.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return ct


def _water_cylinder(radius_mm: float, rod_hu: float | None = None) -> sitk.Image:
    """A 0-HU cylinder along z in air, optionally with a dense rod of radius 8 mm on its axis."""
    shape, spacing = (16, 128, 128), 2.0
    y, x = np.mgrid[: shape[1], : shape[2]]
    r = np.hypot(y - 63.5, x - 63.5) * spacing
    array = np.full(shape, -1024.0, dtype=np.float32)
    array[:, r < radius_mm] = 0.0
    if rod_hu is not None:
        array[:, r < 8.0] = rod_hu
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing, spacing, spacing))
    return image


# --- phantom ---------------------------------------------------------------------------------


def test_phantom_geometry_and_types(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    ct, labels = phantom
    assert ct.GetSize() == (112, 96, 40)
    assert ct.GetSpacing() == (2.5, 2.5, 3.0)
    assert ct.GetPixelID() == sitk.sitkInt16
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert _same_geometry(ct, labels)
    assert ct.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    centre = ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()])
    assert np.allclose(centre, 0.0)

    ct2, _ = make_phantom(np.random.default_rng(1), shape=(20, 50, 60), spacing=(3.0, 3.5, 4.0))
    assert ct2.GetSize() == (60, 50, 20)
    assert ct2.GetSpacing() == (3.0, 3.5, 4.0)


def test_phantom_tissues(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    hu = _array(phantom[0])
    labels = sitk.GetArrayFromImage(phantom[1])
    assert set(np.unique(labels)) <= set(PHANTOM_LABELS.values())
    for corner in [(0, 0, 0), (-1, 0, 0), (0, -1, -1), (-1, -1, -1), (0, 0, -1), (-1, -1, 0)]:
        assert hu[corner] == -1024.0
    assert (hu[labels == 0] == -1024.0).all()
    body = labels > 0
    assert 0.3 < body.mean() < 0.9
    assert hu[body & (labels == PHANTOM_LABELS["bone"])].max() > 700.0
    assert np.median(hu[labels == PHANTOM_LABELS["lung"]]) < -700.0
    assert -130.0 < np.median(hu[labels == PHANTOM_LABELS["fat"]]) < -60.0
    assert 20.0 < np.median(hu[labels == PHANTOM_LABELS["soft_tissue"]]) < 70.0
    assert 45.0 < np.median(hu[labels == PHANTOM_LABELS["organ"]]) < 75.0
    assert 150.0 < np.median(hu[labels == PHANTOM_LABELS["bone"]]) < 1100.0
    for name in ("kidney", "fluid"):
        assert (labels == PHANTOM_LABELS[name]).sum() > 20, name
    # Texture, not blobs of one value.
    assert hu[labels == PHANTOM_LABELS["soft_tissue"]].std() > 3.0


def test_phantom_determinism_and_variety() -> None:
    a_ct, a_lab = make_phantom(np.random.default_rng(7))
    b_ct, b_lab = make_phantom(np.random.default_rng(7))
    c_ct, _ = make_phantom(np.random.default_rng(8))
    assert np.array_equal(_array(a_ct), _array(b_ct))
    assert np.array_equal(sitk.GetArrayFromImage(a_lab), sitk.GetArrayFromImage(b_lab))
    assert not np.array_equal(_array(a_ct), _array(c_ct))
    with_lungs = 0
    for seed in range(20):
        ct, labels = make_phantom(np.random.default_rng(seed), shape=(16, 48, 56), spacing=(5.0, 5.0, 7.5))
        hu, lab = _array(ct), sitk.GetArrayFromImage(labels)
        assert hu.max() > 700.0 and hu[0, 0, 0] == -1024.0
        with_lungs += bool((lab == PHANTOM_LABELS["lung"]).any())
    assert 0 < with_lungs < 20  # lungs are optional


# --- MR --------------------------------------------------------------------------------------


def test_mr_geometry_and_inputs_untouched(
    moved_phantom: sitk.Image, phantom: tuple[sitk.Image, sitk.Image]
) -> None:
    before = _array(moved_phantom)
    labels = sitk.Image(phantom[1])
    labels.CopyInformation(moved_phantom)
    mr = simulate_mr(moved_phantom, np.random.default_rng(0), labels)
    assert _same_geometry(mr, moved_phantom)
    assert mr.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(_array(moved_phantom), before)
    assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom[1]))


def test_mr_determinism(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    ct = phantom[0]
    a = _array(simulate_mr(ct, np.random.default_rng(3)))
    b = _array(simulate_mr(ct, np.random.default_rng(3)))
    c = _array(simulate_mr(ct, np.random.default_rng(4)))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("with_labels", [False, True])
def test_mr_contrast(phantom: tuple[sitk.Image, sitk.Image], with_labels: bool) -> None:
    """Domain randomisation: tissue orderings vary between samples; air and cortex are dark in all."""
    ct, labels = phantom
    hu = _array(ct)
    lab = sitk.GetArrayFromImage(labels)
    air_inside = ndimage.binary_erosion((lab == PHANTOM_LABELS["lung"]) & (hu < -700.0))
    soft = (lab == PHANTOM_LABELS["soft_tissue"]) & (hu > 20.0) & (hu < 70.0)
    fat = (lab == PHANTOM_LABELS["fat"]) & (hu < -60.0)
    fluid = ndimage.binary_erosion(lab == PHANTOM_LABELS["fluid"])  # the gallbladder's interior
    fluid_over_fat, fat_over_soft = [], []
    for seed in range(16):
        mr = _array(simulate_mr(ct, np.random.default_rng(seed), labels if with_labels else None))
        assert np.isfinite(mr).all() and mr.min() >= 0.0
        m_soft, m_fat, m_fluid = np.median(mr[soft]), np.median(mr[fat]), np.median(mr[fluid])
        brightest = max(m_soft, m_fat, m_fluid)
        assert 20.0 < brightest < 10000.0  # a positive, MR-like intensity scale
        assert np.median(mr[air_inside]) < 0.3 * brightest  # (thick cortex: tests/test_synth_mr.py)
        assert np.median(mr[lab == 0]) < 0.15 * brightest  # background: noise only
        fluid_over_fat.append(m_fluid / m_fat)
        fat_over_soft.append(m_fat / m_soft)
    # T1-like (fluid darker than fat) and T2-like (brighter) samples occur, and fat is brighter than
    # soft tissue in some samples and darker in others (Dixon water images, random contrasts).
    assert min(fluid_over_fat) < 0.5 and max(fluid_over_fat) > 1.0
    assert min(fat_over_soft) < 0.8 and max(fat_over_soft) > 1.5


def test_mr_bias_field_varies_tissue_intensity(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    ct, labels = phantom
    lab = sitk.GetArrayFromImage(labels)
    mr = _array(simulate_mr(ct, np.random.default_rng(5)))
    # Subcutaneous fat is one tissue class: its intensity should still vary smoothly (bias field).
    fat = mr[ndimage.binary_erosion(lab == PHANTOM_LABELS["fat"]) & (_array(ct) < -80.0)]
    spread = np.percentile(fat, 90) / np.percentile(fat, 10)
    assert 1.1 < spread < 3.0


def test_mr_removes_objects_outside_the_body(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    """A CT couch (a slab under the patient, apart from the body) is not seen by MR: noise only."""
    ct, labels = phantom
    hu = _array(ct)
    lab = sitk.GetArrayFromImage(labels)
    assert (lab[:, -4:] == 0).all()
    hu[:, -3:-1, 10:-10] = 150.0
    with_couch = sitk.GetImageFromArray(hu.astype(np.int16))
    with_couch.CopyInformation(ct)
    mr = _array(simulate_mr(with_couch, np.random.default_rng(0)))
    soft = (lab == PHANTOM_LABELS["soft_tissue"]) & (hu > 20.0) & (hu < 70.0)
    assert np.median(mr[:, -3:-1, 10:-10]) < 0.15 * np.median(mr[soft])


def test_mr_label_size_mismatch(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    _, small = make_phantom(np.random.default_rng(0), shape=(4, 8, 8))
    with pytest.raises(SctconvError):
        simulate_mr(phantom[0], np.random.default_rng(0), small)


def test_mr_real_ct() -> None:
    if not REAL_CT.exists():
        pytest.skip(f"real CT not available at {REAL_CT}")
    ct = sitk.ReadImage(str(REAL_CT))
    hu = _array(ct)
    mr = simulate_mr(ct, np.random.default_rng(0))
    assert _same_geometry(mr, ct)
    values = _array(mr)
    assert np.isfinite(values).all()
    body = ndimage.binary_erosion(hu > -500.0, iterations=2)
    tissue = body & (hu > -200.0) & (hu < 100.0)
    assert tissue.sum() > 1000
    assert np.median(values[tissue]) > 3.0 * np.median(values[hu < -900.0])  # tissue against the air around


# --- CBCT ------------------------------------------------------------------------------------


def test_cbct_geometry_range_and_determinism(moved_phantom: sitk.Image) -> None:
    before = _array(moved_phantom)
    a = simulate_cbct(moved_phantom, np.random.default_rng(0))
    assert _same_geometry(a, moved_phantom)
    assert a.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(_array(moved_phantom), before)
    values = _array(a)
    assert values.min() >= -1024.0 and values.max() <= 3071.0
    assert np.array_equal(values, _array(simulate_cbct(moved_phantom, np.random.default_rng(0))))
    assert not np.allclose(values, _array(simulate_cbct(moved_phantom, np.random.default_rng(1))))


def test_cbct_hu_close_but_not_identical(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    ct, labels = phantom
    hu = _array(ct)
    body = sitk.GetArrayFromImage(labels) > 0
    for seed in range(5):
        cbct = _array(simulate_cbct(ct, np.random.default_rng(seed), fov_radius_mm=300.0))
        assert abs(cbct[body].mean() - hu[body].mean()) < 250.0  # miscalibration and cupping, not another image
        assert np.abs(cbct[body] - hu[body]).mean() > 10.0
        noise = (cbct - hu)[body & (np.abs(hu - 45.0) < 15.0)]
        assert 10.0 < noise.std() < 80.0


def test_cbct_field_of_view(phantom: tuple[sitk.Image, sitk.Image]) -> None:
    ct, labels = phantom
    body = sitk.GetArrayFromImage(labels) > 0
    cbct = _array(simulate_cbct(ct, np.random.default_rng(0), fov_radius_mm=70.0))
    size, spacing = np.array(ct.GetSize()), np.array(ct.GetSpacing())
    y, x = np.mgrid[: size[1], : size[0]]
    r = np.hypot((y - (size[1] - 1) / 2) * spacing[1], (x - (size[0] - 1) / 2) * spacing[0])
    outside = np.broadcast_to(r > 70.0 + 40.0, body.shape)  # 40 mm margin for the random centre
    assert (body & outside).sum() > 1000  # the FOV really cuts the body
    assert (cbct[outside] == -1000.0).all()
    assert np.median(cbct[body & np.broadcast_to(r < 30.0, body.shape)]) > -500.0


def test_cbct_cupping() -> None:
    cylinder = _water_cylinder(100.0)
    size = cylinder.GetSize()
    y, x = np.mgrid[: size[1], : size[0]]
    r = np.hypot(y - 63.5, x - 63.5) * 2.0
    for seed in range(3):
        cbct = _array(simulate_cbct(cylinder, np.random.default_rng(seed), fov_radius_mm=120.0))
        centre = cbct[:, r < 30.0].mean()
        rim = cbct[:, (r > 75.0) & (r < 90.0)].mean()
        assert centre < rim - 10.0


def test_cbct_streaks_near_dense_structures() -> None:
    size = _water_cylinder(100.0).GetSize()
    y, x = np.mgrid[: size[1], : size[0]]
    r = np.hypot(y - 63.5, x - 63.5) * 2.0
    bins = (np.arctan2(y - 63.5, x - 63.5) + np.pi) / (2 * np.pi) * 180
    annulus = (r > 25.0) & (r < 70.0)
    index = bins[annulus].astype(int) % 180

    def angular_spread(rod_hu: float | None, seed: int) -> float:
        image = _water_cylinder(100.0, rod_hu)
        cbct = _array(simulate_cbct(image, np.random.default_rng(seed), fov_radius_mm=120.0))
        values = cbct[:, annulus].mean(axis=0)
        profile = np.bincount(index, values, 180) / np.bincount(index, minlength=180)
        # Streaks are narrow in angle; remove slow angular trends (cupping about an offset centre).
        return float(np.abs(profile - ndimage.uniform_filter1d(profile, 15, mode="wrap")).max())

    for seed in range(3):
        assert angular_spread(1500.0, seed) > 2.0 * angular_spread(None, seed)


def test_an_mr_is_not_accepted_as_a_ct(phantom: tuple[sitk.Image, sitk.Image], tmp_path: Path) -> None:
    mr = tmp_path / "mr.nii.gz"
    sitk.WriteImage(simulate_mr(phantom[0], np.random.default_rng(0)), str(mr))
    with pytest.raises(SctconvError, match="does not look like a CT in HU"):
        write_simulated_case(mr, tmp_path / "case", "cbct")
    series = factory.make_series(tmp_path / "dicom", modality="MR", rows=40, cols=36)
    with pytest.raises(SctconvError, match="DICOM MR series"):
        write_simulated_case(series.folder, tmp_path / "case", "mr")
    assert not (tmp_path / "case").exists()
