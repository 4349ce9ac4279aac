"""Training end to end on CPU: stage 1, teacher, AFP stage 2, resume after kill -9, convert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from sctconv.data import discover_cases, sample_patch, CaseArrays
from sctconv.errors import SctconvError
from sctconv.pipeline import ConvertOptions, convert
from sctconv.simulate import make_phantom, write_simulated_case
from sctconv.teacher import GROUPS, group_totalsegmentator, tissue_labels
from sctconv.train import poly_lr, split_cases
from tests.conftest import shared_data

FAST = ["--epochs", "2", "--iterations", "3", "--device", "cpu"]


def sctconv(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "sctconv", *args], capture_output=True, text=True, env=env,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory) -> Path:
    """Three small simulated MR/CT pairs from the procedural phantom."""
    root = tmp_path_factory.mktemp("phantom_cases")
    for i in range(3):
        ct, _ = make_phantom(np.random.default_rng(i), shape=(20, 64, 72), spacing=(2.5, 2.5, 3.0))
        sitk.WriteImage(ct, str(root / f"ct{i}.nii.gz"))
        write_simulated_case(root / f"ct{i}.nii.gz", root / "cases" / f"case{i}", "mr", seed=i)
    return root / "cases"


def test_poly_lr_and_split():
    assert poly_lr(1e-2, 0, 100) == pytest.approx(1e-2)
    assert poly_lr(1e-2, 99, 100) < 1e-3
    train, val = split_cases([f"c{i}" for i in range(10)], 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val)
    assert split_cases([f"c{i}" for i in range(10)], 0.2, seed=3) == (train, val)
    with pytest.raises(SctconvError):
        split_cases(["only"], 0.2, 0)


def test_patches_are_centred_in_the_body_and_padded():
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[4:6, 8:12, 8:12] = 1
    case = CaseArrays("c", np.arange(4000, dtype=np.float32).reshape(10, 20, 20), np.zeros((10, 20, 20), np.float32), mask)
    for _ in range(20):
        x, y, m = sample_patch(case, (8, 8, 8), rng, foreground=True)
        assert x.shape == (8, 8, 8) and m.any()
    x, _, _ = sample_patch(case, (16, 32, 32), rng, foreground=False)
    assert x.shape == (16, 32, 32) and x[-1, -1, -1] == 0.0


def test_tissue_labels_and_totalsegmentator_grouping():
    hu = np.array([[[-1000, -800, -100, 40, 700]]], dtype=np.float32)
    body = np.array([[[0, 1, 1, 1, 1]]], dtype=np.uint8)
    assert tissue_labels(hu, body).tolist() == [[[0, 1, 2, 3, 4]]]
    names = {1: "liver", 2: "rib_left_3", 3: "vertebrae_L1", 4: "heart", 5: "femur_left", 6: "gluteus_maximus_left",
             7: "brain"}
    grouped = group_totalsegmentator(np.arange(8).reshape(1, 1, 8), names)
    assert [GROUPS[g] for g in grouped.ravel()] == ["background", "organs", "ribs", "vertebrae", "cardiac",
                                                   "bones", "muscles", "organs"]


def test_grouping_covers_the_lidc_label_map():
    csv = shared_data("lidc_idri_0001_chest_ct", "totalseg_structures.csv")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:] if line.strip()]
    names = {int(r[3]): r[2].strip() for r in rows}  # columns: group, original_idx, structure, id
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(csv.parent / "totalseg_mask_2mm.nii.gz")))
    grouped = group_totalsegmentator(labels, names)
    present = {GROUPS[g] for g in np.unique(grouped)}
    assert {"organs", "cardiac", "ribs", "vertebrae"} <= present


def test_resume_after_kill_9_gives_the_same_model(phantom_cases, tmp_path):
    args = ["train", "--data", str(phantom_cases), "--task", "mr", "--epochs", "4", "--iterations", "3",
            "--device", "cpu", "--val-every", "2"]
    sctconv(*args, "--output", str(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sctconv", *args, "--output", str(interrupted)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    history = interrupted / "history.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (history.exists() and len(json.loads(history.read_text() or "[]")) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model.safetensors").exists()
    resumed = sctconv(*args, "--output", str(interrupted))
    assert "resumed from" in resumed.stderr + resumed.stdout
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    def losses(folder: Path) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in json.loads((folder / "history.json").read_text())]

    assert losses(interrupted) == losses(tmp_path / "straight")


def test_stage1_teacher_afp_then_convert_on_real_ct(tmp_path):
    """The paper's pipeline on simulated pairs from a real CT: L1, teacher, AFP, then convert."""
    ct = shared_data("totalsegmentator_ct_mr", "example_ct_sm.nii.gz")
    for seed in range(3):
        write_simulated_case(ct, tmp_path / "cases" / f"case{seed}", "mr", seed=seed)
    cases = tmp_path / "cases"
    assert len(discover_cases(cases, "mr")) == 3
    sctconv("train", "--data", str(cases), "--output", str(tmp_path / "l1"), "--task", "mr", *FAST)
    sctconv("train-teacher", "--data", str(cases), "--output", str(tmp_path / "teacher"), *FAST)
    sctconv("train", "--stage", "afp", "--init", str(tmp_path / "l1"), "--teacher", str(tmp_path / "teacher"),
            "--data", str(cases), "--output", str(tmp_path / "afp"), "--task", "mr", *FAST)
    card = json.loads((tmp_path / "afp" / "model.json").read_text())
    assert card["training"]["stage"] == "afp" and card["training"]["init_model"] == "l1"
    assert card["metrics"]["mae_hu"] > 0 and (tmp_path / "afp" / "curves.png").exists()
    teacher = json.loads((tmp_path / "teacher" / "model.json").read_text())
    assert teacher["task"] == "segmentation" and teacher["classes"][0] == "background"
    report = convert(cases / "case0" / "mr.mha", tmp_path / "out", ConvertOptions(model=str(tmp_path / "afp")))
    assert report["model"]["name"] == "afp"
    with pytest.raises(SctconvError, match="not a synthesis model|segmentation"):
        convert(cases / "case0" / "mr.mha", tmp_path / "out2", ConvertOptions(model=str(tmp_path / "teacher")))
