"""`sctconv challenge`: the SynthRAD2025 container layout in and out, and the Dockerfile's entry point."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.helpers import cli, sctconv

ROOT = Path(__file__).resolve().parents[1]


def challenge_input(root: Path, phantom_files: dict[str, Path], task: str = "mri", region: object = "Thorax") -> Path:
    """A grand-challenge input folder with one image, its body mask and the region."""
    (root / "images" / task).mkdir(parents=True)
    (root / "images" / "body").mkdir(parents=True)
    image = sitk.ReadImage(str(phantom_files["mr" if task == "mri" else "cbct"]))
    sitk.WriteImage(image, str(root / "images" / task / "1THA001_0000.mha"))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_files["ct"])))
    mask = sitk.GetImageFromArray((ct > -300).astype(np.uint8))
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(root / "images" / "body" / "1THA001_mask.mha"))
    (root / "region.json").write_text(json.dumps(region))
    return root


def test_challenge_writes_an_sct_per_image_inside_the_given_mask(phantom_files, tiny_mr_model, tmp_path):
    inputs = challenge_input(tmp_path / "input", phantom_files)
    result = cli("challenge", "--input", str(inputs), "--output", str(tmp_path / "output"),
                 "--model", str(tiny_mr_model))
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "output"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "images", "images/synthetic-ct", "images/synthetic-ct/1THA001_0000.mha"]
    sct = sitk.ReadImage(str(out / "images" / "synthetic-ct" / "1THA001_0000.mha"))
    source = sitk.ReadImage(str(inputs / "images" / "mri" / "1THA001_0000.mha"))
    assert sct.GetSize() == source.GetSize()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "images" / "body" / "1THA001_mask.mha"))) > 0
    values = sitk.GetArrayFromImage(sct)
    assert (values[~mask] == -1024).all() and values[mask].max() > -1024


@pytest.mark.parametrize(("change", "message"), [
    ("no-mask", "one mask per image"), ("both", "exactly one of images/mri and images/cbct"),
    ("region", "unknown region"), ("not-a-string", "must hold a JSON string")])
def test_bad_challenge_inputs_are_refused_with_one_line(change, message, phantom_files, tmp_path):
    inputs = challenge_input(tmp_path / "input", phantom_files, region={"a": 1} if change == "not-a-string"
                             else "Pelvis" if change == "region" else "Head and Neck")
    if change == "no-mask":
        shutil.rmtree(inputs / "images" / "body")
    if change == "both":
        (inputs / "images" / "cbct").mkdir()
    result = cli("challenge", "--input", str(inputs), "--output", str(tmp_path / "output"))
    assert result.exit_code == 1 and message in result.stderr


@pytest.mark.slow
def test_the_dockerfile_entry_point_converts_a_cbct_case(phantom_files, tmp_path):
    """The Dockerfile's ENTRYPOINT, run as it is with the shipped models, on /input and /output moved here."""
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert entry is not None
    command = json.loads(entry.group(1))
    assert command[:2] == ["sctconv", "challenge"]
    inputs = challenge_input(tmp_path / "input", phantom_files, task="cbct", region="Thorax")
    args = [str(inputs) if a == "/input" else str(tmp_path / "output") if a == "/output" else a for a in command[1:]]
    sctconv(*args)
    assert (tmp_path / "output" / "images" / "synthetic-ct" / "1THA001_0000.mha").is_file()
