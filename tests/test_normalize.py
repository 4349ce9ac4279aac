"""Normalization: float64, outlier-robust statistics, finite results; one definition for training and
inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.errors import SctconvError
from sctconv.nn.model import load_model, save_model
from sctconv.preprocessing.normalize import Normalization, air_peak, anchor_map, histogram_peak, normalize

CASE = Normalization("zscore-case")
HOT = (10, 30, 30)  # inside the phantom's body


def _mr_and_mask(phantom) -> tuple[np.ndarray, np.ndarray]:
    mr = sitk.GetArrayFromImage(phantom[1]).astype(np.float32)
    return mr, (mr > np.percentile(mr, 40)).astype(np.uint8)


def test_normal_images_normalize_as_the_shipped_models_were_trained(phantom):
    """Within float rounding of the plain mean and std inside the mask (the definition until now)."""
    mr, mask = _mr_and_mask(phantom)
    inside = mr[mask > 0].astype(np.float64)
    expected = (mr - inside.mean()) / inside.std()
    np.testing.assert_allclose(normalize(mr, mask, CASE), expected, rtol=0, atol=1e-5)


def test_one_extreme_voxel_leaves_the_others_z_scores(phantom):
    mr, mask = _mr_and_mask(phantom)
    assert mask[HOT]
    hot = mr.copy()
    hot[HOT] = 3e38
    z, clean = normalize(hot, mask, CASE), normalize(mr, mask, CASE)
    assert np.isfinite(z).all() and 2 < z[HOT] < 4  # replaced by the 99.5th percentile
    z[HOT] = clean[HOT]
    np.testing.assert_allclose(z, clean, atol=1e-3)


def test_one_extreme_voxel_does_not_ruin_the_sct(phantom, tiny_mr_model, tmp_path):
    hot = sitk.GetArrayFromImage(phantom[1])
    hot[HOT] = 3e38
    image = sitk.GetImageFromArray(hot)
    image.CopyInformation(phantom[1])
    paths = {"clean": tmp_path / "clean.nii.gz", "hot": tmp_path / "hot.nii.gz"}
    sitk.WriteImage(phantom[1], str(paths["clean"]))
    sitk.WriteImage(image, str(paths["hot"]))
    sct = {}
    for name, path in paths.items():
        convert(path, tmp_path / name, ConvertOptions(model=str(tiny_mr_model), modality="mr", dicom=False,
                                                      preview=False))
        sct[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "sct.nii.gz"))).astype(float)
    difference = np.abs(sct["hot"] - sct["clean"])
    assert np.median(difference) == 0 and np.mean(difference > 5) < 0.01


def test_non_finite_results_are_refused(phantom_files, tiny_mr_model, tmp_path):
    model = load_model(tiny_mr_model)
    torch.nn.init.constant_(model.network.head.bias, float("nan"))
    save_model(Path(tiny_mr_model), model.card, model.network)
    with pytest.raises(SctconvError, match="NaN or infinite"):
        convert(phantom_files["mr"], tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), dicom=False,
                                                                     preview=False))
    assert not (tmp_path / "out").exists()


def test_the_histogram_peak_finds_soft_tissue_beside_lung_fat_and_bone():
    """The smoothed peak of a body's histogram lies in its soft tissue, not in its lung, fat or bone, and
    the lung and air below the search range do not count; a body without soft tissue is refused."""
    rng = np.random.default_rng(0)
    body = np.concatenate([rng.normal(-800, 60, 40_000), rng.normal(-100, 30, 10_000),
                           rng.normal(45, 30, 30_000), rng.normal(700, 200, 8_000)]).astype(np.float32)
    assert abs(histogram_peak(body) - 45) <= 15
    assert abs(histogram_peak(body - 120) - (45 - 120)) <= 15
    with pytest.raises(SctconvError, match="soft tissue"):
        histogram_peak(np.full(100, -1000.0, np.float32))


def test_an_anchor_takes_a_global_offset_away():
    """The same volume read 90 HU lower normalizes to the same z-scores with an anchor, 90 HU apart
    without one; an anchor belongs to the dataset z-score only."""
    rng = np.random.default_rng(1)
    volume = rng.normal(40, 30, (8, 16, 16)).astype(np.float32)
    mask = np.ones(volume.shape, np.uint8)
    plain = Normalization("zscore-dataset", (-1024.0, 3071.0), -100.0, 400.0)
    anchored = Normalization("zscore-dataset", (-1024.0, 3071.0), -100.0, 400.0, anchor_hu=0.0)
    np.testing.assert_allclose(normalize(volume - 90, mask, anchored), normalize(volume, mask, anchored), atol=1e-5)
    np.testing.assert_allclose(normalize(volume, mask, plain) - normalize(volume - 90, mask, plain), 90 / 400,
                               atol=1e-5)
    with pytest.raises(SctconvError, match="anchor"):
        Normalization("zscore-case", anchor_hu=0.0)


def _chest(scale: float, offset: float, fill: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A noisy body (soft tissue 40 HU, lungs -850, bone 700) in air, read with ``scale`` and ``offset``;
    with ``fill``, a third of the slices' corners lie outside a field of view filled with that value."""
    rng = np.random.default_rng(2)
    hu = np.full((12, 40, 40), -1000.0, np.float32)
    hu[:, 8:32, 6:34] = 40.0
    hu[:, 12:28, 10:18] = hu[:, 12:28, 22:30] = -850.0
    hu[:, 14:18, 18:22] = 700.0
    mask = np.zeros(hu.shape, np.uint8)
    mask[:, 8:32, 6:34] = 1
    read = hu * scale + offset + rng.normal(0, 20, hu.shape).astype(np.float32)
    if fill is not None:
        read[:, :4, :] = fill
    return read, mask


def test_the_air_anchor_takes_a_global_scale_away():
    """A body read 12% compressed and 80 HU high normalizes as the true one does (to a few HU) with the air
    anchor; without air in view, or with only a constant fill around the body, the scale stays 1."""
    anchored = Normalization("zscore-dataset", (-1024.0, 3071.0), -100.0, 400.0, anchor_hu=0.0,
                             air_anchor_hu=-1000.0)
    true, mask = _chest(1.0, 0.0)
    read, _ = _chest(0.88, 80.0)
    assert abs(air_peak(read, mask) - (-880 + 80)) <= 10
    assert abs(anchor_map(read, mask, anchored)[0] * 0.88 - anchor_map(true, mask, anchored)[0]) <= 0.03
    inside = mask > 0
    error = (normalize(read, mask, anchored) - normalize(true, mask, anchored))[inside] * 400.0
    assert abs(float(np.median(error))) <= 10 and np.percentile(np.abs(error), 90) <= 60
    assert anchor_map(read, np.ones_like(mask), anchored)[0] == 1.0  # no air outside the body
    filled, _ = _chest(1.0, 80.0, fill=-1000.0)
    filled[:, :, :] = np.where(mask > 0, filled, -1000.0)  # air only as the constant fill
    assert air_peak(filled, mask) is None and anchor_map(filled, mask, anchored)[0] == 1.0
    with pytest.raises(SctconvError, match="air anchor needs"):
        Normalization("zscore-dataset", (-1024.0, 3071.0), -100.0, 400.0, air_anchor_hu=-1000.0)
    with pytest.raises(SctconvError, match="air anchor must lie"):
        Normalization("zscore-dataset", (-1024.0, 3071.0), -100.0, 400.0, anchor_hu=0.0, air_anchor_hu=0.0)
