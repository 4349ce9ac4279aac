"""Prepared datasets: each raw case read once, cropped to the body, with its fingerprint; training
(stage 1 and AFP) from a prepared dataset alone, in a process where SimpleITK cannot be imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from rich.console import Console

from sctconv.errors import SctconvError
from sctconv.nn.model import SHIPPED_MODELS
from sctconv.preprocessing.grid import CROP_MARGIN_MM, body_box, to_model_grid
from sctconv.training import prepare
from sctconv.training.data import discover_cases, is_prepared, open_prepared
from tests.helpers import cli, sctconv, simulated_cases

SPACING = (3.0, 2.5, 2.5)
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def cbct_cases(tmp_path_factory) -> Path:
    """Three simulated CBCT/CT pairs from the procedural phantom."""
    root = tmp_path_factory.mktemp("cbct_cases")
    simulated_cases(root, [f"case{i}" for i in range(3)], "cbct", (14, 52, 60), (2.0, 2.0, 3.0))
    return root


def test_a_case_is_read_once_onto_the_model_grid_and_cropped_to_the_body(cbct_cases, tmp_path, monkeypatch):
    cases = discover_cases(cbct_cases, "cbct")
    prepared = prepare.prepare_dataset(cases, "cbct", SPACING, tmp_path / "prep", QUIET)
    task, spacing, indexed = open_prepared(tmp_path / "prep")
    assert (task, spacing) == ("cbct", SPACING) and [c.name for c in indexed] == [c.name for c in cases]
    for case, entry in zip(cases, prepared):
        arrays = entry.load()
        image, ct, mask = prepare.load_case_hu(case, "cbct")
        full_mask = sitk.GetArrayFromImage(to_model_grid(mask, SPACING, sitk.sitkNearestNeighbor))
        box = body_box(full_mask, SPACING, CROP_MARGIN_MM)
        np.testing.assert_array_equal(arrays.mask, full_mask[box])
        assert arrays.mask.sum() == full_mask.sum()
        full_ct = sitk.GetArrayFromImage(to_model_grid(ct, SPACING, default=-1024.0))
        assert np.abs(arrays.ct - full_ct[box]).max() <= 0.5  # whole HU
        full_input = sitk.GetArrayFromImage(to_model_grid(image, SPACING,
                                                          default=float(sitk.GetArrayViewFromImage(image).min())))
        np.testing.assert_array_equal(arrays.input, full_input[box])
    # The fingerprint kept with the cases is the one measured on the raw files.
    from sctconv.training.data import fingerprint

    assert fingerprint([c.measurement() for c in indexed]) == prepare.fingerprint_cases(cases, "cbct")

    # A second preparation finds every case and reads no image.
    def no_reading(*args, **kwargs):
        raise AssertionError("a prepared case was read again")

    monkeypatch.setattr(prepare, "load_case_hu", no_reading)
    again = prepare.prepare_dataset(cases, "cbct", SPACING, tmp_path / "prep", QUIET)
    assert [c.path for c in again] == [c.path for c in prepared]
    # A damaged case file in the cache is prepared again.
    monkeypatch.undo()
    expected = prepared[0].load().ct
    prepared[0].path.write_bytes(b"truncated")
    prepare.prepare_dataset(cases, "cbct", SPACING, tmp_path / "prep", QUIET)
    np.testing.assert_array_equal(prepared[0].load().ct, expected)


def test_the_body_box_keeps_a_margin_within_the_volume():
    mask = np.zeros((40, 40, 40), bool)
    mask[10:20, 15:25, 5:35] = True
    assert body_box(mask, (3.0, 2.0, 1.0), 6.0) == (slice(8, 22), slice(12, 28), slice(0, 40))
    assert body_box(np.zeros((2, 2, 2), bool), (1.0, 1.0, 1.0), 6.0) == (slice(None),) * 3


def test_a_case_whose_body_mask_is_empty_is_refused(cbct_cases, tmp_path):
    root = tmp_path / "cases"
    shutil.copytree(cbct_cases / "case0", root / "case0")
    mask = sitk.ReadImage(str(root / "case0" / "mask.mha")) * 0
    sitk.WriteImage(mask, str(root / "case0" / "mask.mha"))
    with pytest.raises(SctconvError, match="is empty on the input's grid"):
        prepare.prepare_dataset(discover_cases(root, "cbct"), "cbct", SPACING, tmp_path / "prep", QUIET)


def test_only_sctconv_datasets_count_as_prepared(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}))
    assert not is_prepared(tmp_path)  # an nnU-Net raw dataset is raw data
    (tmp_path / "dataset.json").write_text("[1, 2]")
    assert not is_prepared(tmp_path)


def test_a_broken_label_map_only_stops_a_teachers_preparation(cbct_cases, tmp_path, caplog):
    shutil.copytree(cbct_cases / "case0", tmp_path / "data" / "case0")
    (tmp_path / "data" / "case0" / "labels.nii.gz").write_bytes(b"not an image")
    case = discover_cases(tmp_path / "data", "cbct")
    prepared = prepare.prepare_dataset(case, "cbct", SPACING, tmp_path / "prep", QUIET)
    assert not prepared[0].labels and prepared[0].load().labels is None and "prepared without them" in caplog.text
    assert not prepare.prepare_dataset(case, "cbct", SPACING, tmp_path / "prep", QUIET)[0].labels  # from the file
    with pytest.raises(SctconvError, match="cannot read"):
        prepare.prepare_dataset(discover_cases(tmp_path / "data", "ct"), "ct", SPACING, tmp_path / "ct", QUIET)


def test_prepare_command_and_refusals(cbct_cases, tmp_path):
    prep = tmp_path / "prep"
    result = cli("prepare", "--data", str(cbct_cases), "--task", "cbct", "--output", str(prep))
    assert result.exit_code == 0 and "3 cases prepared at 3 x 2.5 x 2.5 mm" in result.stderr
    index = json.loads((prep / "dataset.json").read_text())
    assert index["task"] == "cbct" and str(cbct_cases) not in json.dumps(index)  # no paths

    def train_error(data: Path, *args: str) -> str:
        result = cli("train", "--data", str(data), "--task", "cbct", "--output", str(tmp_path / "m"), *args)
        last = result.stderr.strip().splitlines()[-1]
        assert result.exit_code == 1 and last.startswith("error: ") and "Traceback" not in result.stderr
        return last

    assert "prepared for --task cbct" in cli("train", "--data", str(prep), "--task", "mr", "--output",
                                             str(tmp_path / "m")).stderr
    assert "prepared at" in train_error(prep, "--preset", "paper")
    other = cli("prepare", "--data", str(cbct_cases), "--task", "cbct", "--preset", "paper", "--output", str(prep))
    assert other.exit_code == 1 and "holds a dataset prepared for --task cbct at" in other.stderr
    into_data = cli("prepare", "--data", str(cbct_cases), "--task", "cbct", "--output", str(cbct_cases))
    assert into_data.exit_code == 1 and "holds other files than a prepared dataset" in into_data.stderr
    assert not (cbct_cases / "dataset.json").exists()

    broken = tmp_path / "broken"
    shutil.copytree(prep, broken)
    sorted(broken.glob("*.npz"))[0].write_bytes(b"not a zip")
    assert "cannot read prepared case" in train_error(broken)
    sorted(broken.glob("*.npz"))[0].unlink()
    assert "lacks 1 case file" in train_error(broken)
    (broken / "dataset.json").write_text(json.dumps({"format": "sctconv-prepared", "version": 1}))
    assert "not a prepared dataset of this sctconv version" in train_error(broken)


IMAGING_PACKAGES = ("SimpleITK", "pydicom", "highdicom", "pylibjpeg")
"""What a GPU node with PyTorch alone lacks (the sandbox's GPU machines among them)."""


def without_imaging_packages(*args: str) -> subprocess.CompletedProcess:
    """``sctconv ARGS`` in a process where importing SimpleITK or the DICOM packages fails."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({IMAGING_PACKAGES!r})); "
            "from sctconv.cli import app; app()")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_stage_1_and_afp_train_from_a_prepared_dataset_without_imaging_packages(cbct_cases, tmp_path):
    teacher = SHIPPED_MODELS / "ct-teacher-small"
    sctconv("prepare", "--data", str(cbct_cases), "--task", "cbct", "--output", str(tmp_path / "prep"))
    fast = ["--task", "cbct", "--epochs", "1", "--iterations", "2", "--device", "cpu"]
    without_imaging_packages("train", "--data", str(tmp_path / "prep"), "--output", str(tmp_path / "l1"), *fast)
    without_imaging_packages("train", "--stage", "afp", "--init", str(tmp_path / "l1"), "--teacher", str(teacher),
                             "--data", str(tmp_path / "prep"), "--output", str(tmp_path / "afp"), *fast)
    for name in ("l1", "afp"):
        card = json.loads((tmp_path / name / "model.json").read_text())
        metrics = card["metrics"]
        assert metrics["evaluated_on"] == "validation cases, model grid (prepared dataset)"
        assert metrics["mae_hu"] > 0 and metrics["input_cbct_mae_hu"] > 0 and 0 < metrics["ms_ssim"] <= 1
        assert card["training"]["dataset_fingerprint"]["cbct"]["std"] > 0
    # The same split and statistics as training on the raw cases.
    sctconv("train", "--data", str(cbct_cases), "--output", str(tmp_path / "raw"), *fast)
    raw, prepared = (json.loads((tmp_path / n / "model.json").read_text()) for n in ("raw", "l1"))
    assert raw["input_normalization"] == prepared["input_normalization"]
    assert raw["training"]["validation_cases"] == prepared["training"]["validation_cases"]
    assert raw["metrics"]["evaluated_on"] == "validation cases, own grids"
    cache = json.loads((tmp_path / "raw" / "cache" / "dataset.json").read_text())
    assert cache["task"] == "cbct"  # the cache is a prepared dataset of --data's cases in their order: same split
    assert [c["name"] for c in cache["cases"]] == [c.name for c in discover_cases(cbct_cases, "cbct")]
