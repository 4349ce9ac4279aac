"""Size guards: implausible extents, voxel counts, window counts and steps are refused before any
work, with a clear line; --allow-large insists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.convert import limits, pipeline
from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.errors import SctconvError
from sctconv.nn.model import load_model, save_model
from tests.helpers import cli


class Predicted(Exception):
    """Raised instead of predicting: the conversion got past every guard."""


def _never(*args, **kwargs):
    raise Predicted


def _write(path: Path, size_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> Path:
    array = np.zeros(size_zyx, np.float32)
    z, y, x = (n // 2 for n in size_zyx)
    array[:, y // 2:y + y // 2, x // 2:x + x // 2] = 500.0  # a box of body
    array += np.random.default_rng(0).uniform(0, 20, size_zyx).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def no_prediction(monkeypatch):
    monkeypatch.setattr(pipeline, "synthesize", _never)


def _fine_model(folder: Path) -> Path:
    """The tiny model with a 0.4 mm grid."""
    model = load_model(folder)
    save_model(folder, replace(model.card, spacing=(0.4, 0.4, 0.4)), model.network)
    return folder


@pytest.mark.parametrize("case, expected", [
    ("extent", r"spans 3200 x 3200 x 1600 mm .* is its voxel size right"),  # the issue's 50 mm example
    ("step", r"--step 0.001 would predict every voxel"),
    ("windows", r"places \d+ windows"),
    ("model voxels", r"M voxels, more than 537 M"),
    ("input voxels", r"input .* has 0.131 M voxels \(64x64x32\), more than 0.001 M"),
])
def test_implausible_work_is_refused_before_it_starts(case, expected, tmp_path, tiny_mr_model, no_prediction,
                                                      monkeypatch):
    options = ConvertOptions(model=str(tiny_mr_model), modality="mr", dicom=False, preview=False)
    path = _write(tmp_path / "in.nii.gz", (32, 64, 64), (50.0, 50.0, 50.0))
    if case == "step":
        path, options.step = _write(tmp_path / "in.nii.gz", (32, 64, 64), (2.5, 2.5, 3.0)), 0.001
    elif case == "windows":
        path, options.step = _write(tmp_path / "in.nii.gz", (100, 200, 200), (2.5, 2.5, 3.0)), 0.1
    elif case == "model voxels":
        path, options.model = _write(tmp_path / "in.nii.gz", (100, 100, 100), (5.0, 5.0, 5.0)), str(
            _fine_model(tiny_mr_model))
    elif case == "input voxels":
        path = _write(tmp_path / "in.nii.gz", (32, 64, 64), (2.5, 2.5, 3.0))
        monkeypatch.setattr(limits, "MAX_VOXELS", 1000)
    with pytest.raises(SctconvError, match=expected) as error:
        convert(path, tmp_path / "out", options)
    assert "--allow-large" in str(error.value)
    assert not (tmp_path / "out").exists()
    options.allow_large = True  # insisting gets past every guard
    with pytest.raises(Predicted):
        convert(path, tmp_path / "out", options)


def test_plausible_inputs_pass_the_guards(phantom, tiny_mr_model):
    image = phantom[1]
    limits.check_input_size(image, "input")
    limits.check_workload(image, load_model(tiny_mr_model).card, 0.3)
    limits.check_step(0.1)


def test_the_cli_refuses_the_issues_example_in_one_line(tmp_path, tiny_mr_model):
    path = _write(tmp_path / "in.nii.gz", (32, 64, 64), (50.0, 50.0, 50.0))
    result = cli("convert", str(path), str(tmp_path / "out"), "--model", str(tiny_mr_model))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "--allow-large" in result.stderr.replace("\n", " ")
    assert not (tmp_path / "out").exists()
