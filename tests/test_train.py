"""Training end to end on CPU: stage 1, teacher, AFP stage 2, resume after kill -9, convert; the
SynthRAD2025 layout with regions, folds, and torchrun (DistributedDataParallel on gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.errors import SctconvError
from sctconv.inference.predict import OnnxBackend
from sctconv.nn.model import load_model, read_card
from sctconv.nn.teacher import GROUPS, group_totalsegmentator, tissue_labels
from sctconv.simulation.simulate import make_phantom, write_simulated_case
from sctconv.training.data import (
    CaseArrays,
    PreparedArrays,
    PreparedCase,
    discover_cases,
    region_weights,
    sample_patch,
    select_regions,
    simulated_case_arrays,
)
from sctconv.training.stages import bone_weighted_l1
from sctconv.training.train import Batches, TrainConfig, patch_centres, poly_lr, split_cases
from tests.helpers import cli, sctconv, shared_data, simulated_cases

FAST = ["--epochs", "2", "--iterations", "3", "--device", "cpu"]


def test_poly_lr_and_split():
    assert poly_lr(1e-2, 0, 100) == pytest.approx(1e-2)
    assert poly_lr(1e-2, 99, 100) < 1e-3
    train, val = split_cases([f"c{i}" for i in range(10)], 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val)
    assert split_cases([f"c{i}" for i in range(10)], 0.2, seed=3) == (train, val)
    with pytest.raises(SctconvError):
        split_cases(["only"], 0.2, 0)


def test_bone_weighted_l1_counts_bone_voxels_more():
    target = torch.tensor([0.0, 0.0, 2.0, 2.0])
    soft_wrong, bone_wrong = torch.tensor([1.0, 1.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert bone_weighted_l1(soft_wrong, target, 1.0, 0.0) == bone_weighted_l1(bone_wrong, target, 1.0, 0.0) == 0.5
    assert bone_weighted_l1(soft_wrong, target, 1.0, 3.0).item() == pytest.approx(0.2)
    assert bone_weighted_l1(bone_wrong, target, 1.0, 3.0).item() == pytest.approx(0.8)


def test_folds_partition_the_cases():
    names = [f"c{i}" for i in range(12)]
    validation = [split_cases(names, 0.2, 7, fold=k, folds=5)[1] for k in range(5)]
    assert sorted(sum(validation, [])) == sorted(names) and [len(v) for v in validation] == [3, 3, 2, 2, 2]
    assert split_cases(names, 0.2, 7, fold=2, folds=5) == split_cases(names, 0.2, 7, fold=2, folds=5)
    assert validation != [split_cases(names, 0.2, 8, fold=k, folds=5)[1] for k in range(5)]
    for fold, folds, count in ((5, 5, 12), (-1, 5, 12), (0, 1, 12), (0, 5, 4)):
        with pytest.raises(SctconvError):
            split_cases(names[:count], 0.2, 0, fold=fold, folds=folds)


def test_synthrad_regions_come_from_the_folders(synthrad_tree):
    cases = discover_cases(synthrad_tree, "mr")
    assert {c.name: c.region for c in cases} == {
        "TH/1THA001": "thorax", "TH/1THA002": "thorax", "AB/1ABA001": "abdomen", "HN/1HNA001": "head-neck",
        "other/case5": None}
    assert [c.name for c in select_regions(cases, ["thorax"])] == ["TH/1THA001", "TH/1THA002", "other/case5"]
    assert {c.region for c in discover_cases(synthrad_tree / "AB", "mr")} == {"abdomen"}
    with pytest.raises(SctconvError, match="no cases of region"):
        select_regions(discover_cases(synthrad_tree / "TH", "mr"), ["abdomen"])


@pytest.mark.slow
def test_train_on_one_region_and_fold(synthrad_tree, tmp_path):
    out = tmp_path / "model"
    sctconv("train", "--data", str(synthrad_tree), "--region", "thorax", "--fold", "1", "--folds", "3",
            "--output", str(out), "--epochs", "1", "--iterations", "1", "--device", "cpu")
    split = json.loads((out / "split.json").read_text())
    assert (split["fold"], split["folds"]) == (1, 3)
    assert sorted(split["train"] + split["validation"]) == ["TH/1THA001", "TH/1THA002", "other/case5"]
    training = json.loads((out / "model.json").read_text())["training"]
    assert training["fold"] == 1 and training["validation_cases"] == split["validation"]
    OnnxBackend(load_model(out), out / "model.onnx", "cpu")  # the export is bound to the weights it saved
    assert cli("train", "--data", str(synthrad_tree), "--fold", "1", "--val-data", str(synthrad_tree),
               "--output", str(tmp_path / "bad")).stderr.startswith("error: --fold")


def test_patches_are_centred_in_the_body_and_padded():
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[4:6, 8:12, 8:12] = 1
    volume = np.arange(4000, dtype=np.float32).reshape(10, 20, 20)
    case = CaseArrays("c", volume, np.zeros((10, 20, 20), np.float32), mask)
    for _ in range(20):
        x, y, m = sample_patch(case, (8, 8, 8), rng, case.body_voxels)
        assert x.shape == (8, 8, 8) and m.any()
    x, _, _ = sample_patch(case, (16, 32, 32), rng, None)
    assert x.shape == (16, 32, 32) and x[-1, -1, -1] == 0.0


def test_patches_centre_on_bone_then_body_then_anywhere(tmp_path):
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[2:8, 5:15, 5:15] = 1
    case = CaseArrays("c", np.zeros((10, 20, 20), np.float32), np.zeros((10, 20, 20), np.float32), mask)
    config = TrainConfig(data=tmp_path, out=tmp_path, modality="mr", name="m", regions=["thorax"], bone_fraction=0.3)
    bone = {"c": np.array([7, 9])}
    assert patch_centres(case, 0.1, config, bone).tolist() == [7, 9]
    assert patch_centres(case, 0.5, config, bone) is case.body_voxels
    assert patch_centres(case, 0.9, config, bone) is None
    assert patch_centres(case, 0.1, config, {"c": np.array([], int)}) is case.body_voxels


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


@pytest.mark.slow
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
        history = json.loads((folder / "history.json").read_text())
        return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]  # times differ

    assert losses(interrupted) == losses(tmp_path / "straight")


@pytest.mark.slow
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


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m sctconv ARGS`` on CPU (gloo), as the module behind the
    ``torchrun`` script, so that it runs whether or not the environment's scripts are on PATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "sctconv", *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_model(phantom_cases, tmp_path_factory) -> tuple[Path, list[str]]:
    """A model trained by two processes (1 epoch of 2 iterations), and the arguments that made it."""
    out = tmp_path_factory.mktemp("ddp") / "model"
    args = ["train", "--data", str(phantom_cases), "--output", str(out), "--iterations", "2", "--device", "cpu"]
    torchrun(*args, "--epochs", "1")
    return out, args


@pytest.mark.slow
def test_torchrun_trains_a_loadable_model(ddp_model):
    out, _ = ddp_model
    model = load_model(out)
    assert model.card.training["processes"] == 2 and len(model.card.training["validation_cases"]) == 1
    states = json.loads(torch.load(out / "checkpoint_latest.pt", weights_only=True)["numpy_rng"])
    assert len(states) == 2 and states[0] != states[1]  # one generator per rank, seeded apart


@pytest.mark.slow
def test_torchrun_resumes_with_every_rank_state(ddp_model):
    out, args = ddp_model
    result = torchrun(*args, "--epochs", "2")
    assert "resumed from" in result.stderr + result.stdout
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    single = cli(*args, "--epochs", "3")
    assert single.exit_code == 1 and "written by 2 process(es)" in single.stderr


@pytest.mark.slow
def test_misused_stages_and_foreign_checkpoints_are_refused(phantom_cases, tmp_path):
    l1 = tmp_path / "l1"
    sctconv("train", "--data", str(phantom_cases), "--output", str(l1), "--task", "mr", "--epochs", "1",
            "--iterations", "1", "--device", "cpu")
    teacher_on_l1 = cli("train", "--data", str(phantom_cases), "--output", str(tmp_path / "x"), "--task", "mr",
                        "--teacher", str(l1))
    assert teacher_on_l1.exit_code == 1 and "belongs to --stage afp" in teacher_on_l1.stderr
    bone_on_afp = cli("train", "--stage", "afp", "--init", str(l1), "--teacher", str(l1), "--data",
                      str(phantom_cases), "--output", str(tmp_path / "y"), "--task", "mr", "--bone-weight", "2")
    assert bone_on_afp.exit_code == 1 and "--bone-weight" in bone_on_afp.stderr
    into_init = cli("train", "--stage", "afp", "--init", str(l1), "--teacher", str(l1), "--data",
                    str(phantom_cases), "--output", str(l1), "--task", "mr")
    assert into_init.exit_code == 1 and "new folder" in into_init.stderr
    other_network = cli("train", "--data", str(phantom_cases), "--output", str(l1), "--task", "mr",
                        "--preset", "paper", "--epochs", "1", "--iterations", "1", "--device", "cpu")
    assert other_network.exit_code == 1 and "belongs to another run" in other_network.stderr


@pytest.mark.slow
def test_l1_continues_from_a_model_folder(phantom_cases, tmp_path):
    """--init with stage l1 continues training a model (another session, the committed weights)."""
    first, second = tmp_path / "first", tmp_path / "second"
    sctconv("train", "--data", str(phantom_cases), "--output", str(first), "--task", "mr", *FAST)
    sctconv("train", "--data", str(phantom_cases), "--output", str(second), "--task", "mr", "--init", str(first), *FAST)
    card = json.loads((second / "model.json").read_text())
    start = json.loads((first / "model.json").read_text())
    assert card["training"]["init_model"] == "first" and card["training"]["init_training"]["epochs"] == 2
    assert card["input_normalization"] == start["input_normalization"]
    assert card["target_normalization"] == start["target_normalization"]
    before = load_file(str(first / "model.safetensors"))
    after = load_file(str(second / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_step_with_a_non_finite_gradient_is_skipped_and_too_many_stop_training(phantom_cases, tmp_path,
                                                                                 monkeypatch):
    """bf16 on some CPUs (an AMD EPYC at one thread) rarely gives a NaN gradient: that step changes nothing and
    is counted; when more than a tenth of an epoch's steps have one, training stops with a clear error."""
    clip = torch.nn.utils.clip_grad_norm_
    calls = iter(range(1000))

    def clip_with_nan(parameters, max_norm):  # the second step's gradients are not finite
        parameters = list(parameters)
        if next(calls) == 1:
            parameters[0].grad.fill_(float("nan"))
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_with_nan)
    out = tmp_path / "model"
    result = cli("train", "--data", str(phantom_cases), "--output", str(out), "--task", "mr", "--no-onnx",
                 "--epochs", "1", "--iterations", "10", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    history = json.loads((out / "history.json").read_text())
    assert history[0]["skipped_steps"] == 1 and np.isfinite(history[0]["train_loss"])
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda parameters, max_norm: torch.tensor(float("nan")))
    failed = cli("train", "--data", str(phantom_cases), "--output", str(tmp_path / "nan"), "--task", "mr",
                 "--epochs", "1", "--iterations", "10", "--device", "cpu")
    assert failed.exit_code == 1 and "error: training diverged: gradients not finite in 10 of 10" in failed.stderr


@pytest.mark.slow
def test_new_contrasts_are_simulated_in_the_background_and_swapped_in_at_fixed_steps(tmp_path):
    """--simulate-input: the next case's MR is made beside the network's steps, swapped in one
    ``resimulate_every`` later; the same seed gives the same arrays however long the simulation takes."""
    card = read_card(Path("sctconv/models/mr2ct-fast"))
    ct, _ = make_phantom(np.random.default_rng(3), shape=(20, 48, 48), spacing=(2.0, 2.0, 2.0))
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    source = PreparedArrays(None, hu, (hu > -500).astype(np.uint8), None)
    config = TrainConfig(data=tmp_path, out=tmp_path, modality="mr", name="m", regions=["thorax"],
                         simulate_input=True, val_data=tmp_path, resimulate_every=2)
    cases = [PreparedCase(name, "thorax", tmp_path / f"{name}.npz", False) for name in "ab"]

    def batches() -> Batches:
        rng = np.random.default_rng(0)
        arrays = [simulated_case_arrays(c.name, source, card, rng) for c in cases]
        return Batches(arrays, cases, [source, source], card, config, rng, {}, region_weights(cases))

    first, second = batches(), batches()
    before = [a.x.copy() for a in first.arrays]
    first.after_step(0)
    first.after_step(1)  # submits one simulation, swaps nothing yet
    assert first.pending is not None and all((a.x == b).all() for a, b in zip(first.arrays, before))
    first.after_step(3)  # swaps it in, submits the next
    assert sum(not (a.x == b).all() for a, b in zip(first.arrays, before)) == 1
    second.after_step(1)
    time.sleep(0.5)
    second.after_step(3)
    assert all((a.x == b.x).all() for a, b in zip(first.arrays, second.arrays))


def test_every_region_is_drawn_equally_often_however_many_cases_it_has(tmp_path):
    """Six head-neck CTs, one thorax and two cases of unknown region: each of the three groups gets a third
    of the draws, split evenly among its cases."""
    regions = ["head-neck"] * 6 + ["thorax"] + [None] * 2
    cases = [PreparedCase(f"c{i}", r, tmp_path / f"c{i}.npz", False) for i, r in enumerate(regions)]
    weights = region_weights(cases)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:6] == pytest.approx([1 / 18] * 6) and weights[6] == pytest.approx(1 / 3)
    assert weights[7:] == pytest.approx([1 / 6] * 2)
    draws = np.random.default_rng(0).choice(len(cases), size=30000, p=weights)
    assert np.mean(draws == 6) == pytest.approx(1 / 3, abs=0.01)
    assert region_weights(cases[:6]) == pytest.approx([1 / 6] * 6)  # one region: uniform, as before


def test_region_power_moves_the_draws_from_equal_regions_to_equal_cases(tmp_path):
    """Power 1 draws each case equally often; 0.5 gives the region with 4 times the cases twice the share."""
    regions = ["head-neck"] * 4 + ["thorax"]
    cases = [PreparedCase(f"c{i}", r, tmp_path / f"c{i}.npz", False) for i, r in enumerate(regions)]
    assert region_weights(cases, 1.0) == pytest.approx([1 / 5] * 5)
    weights = region_weights(cases, 0.5)
    assert weights[:4].sum() == pytest.approx(2 / 3) and weights[4] == pytest.approx(1 / 3)
    with pytest.raises(SctconvError, match="region-power"):
        TrainConfig(data=tmp_path, out=tmp_path / "m", modality="mr", name="m", regions=["thorax"], region_power=2.0)


def test_simulated_inputs_from_ct_only_cases(phantom_cases, tmp_path):
    """--simulate-input trains MR from CT-only folders, validated on fixed simulated pairs; bf16 on CPU."""
    cts = tmp_path / "cts"
    for i in range(2):
        ct, _ = make_phantom(np.random.default_rng(10 + i), shape=(20, 64, 72), spacing=(2.5, 2.5, 3.0))
        (cts / "TH" / f"ct{i}").mkdir(parents=True)
        sitk.WriteImage(ct, str(cts / "TH" / f"ct{i}" / "ct.nii.gz"))
    out = tmp_path / "model"
    sctconv("train", "--data", str(cts), "--val-data", str(phantom_cases), "--output", str(out),
            "--task", "mr", "--simulate-input", "--bf16", "--bone-weight", "4", *FAST)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["config"]["bone_weight"] == 4
    assert len(card["training"]["validation_cases"]) == 3
    assert card["training"]["config"]["simulate_input"] and card["training"]["config"]["bf16"]
    assert card["training"]["train_cases"] == ["TH/ct0", "TH/ct1"]
    assert card["training"]["device"].startswith("CPU") and card["training"]["iterations"] == 6
    assert {"bone_dice", "constant_water_mae_hu", "per_region"} <= set(card["metrics"])
    assert set(card["metrics"]["per_region"]) == {"unknown"}
    no_val = cli("train", "--data", str(cts), "--output", str(tmp_path / "x"), "--task", "mr", "--simulate-input")
    assert no_val.exit_code == 1 and "--val-data" in no_val.stderr


@pytest.mark.slow
def test_cbct_model_learns_a_correction_of_its_input(tmp_path):
    """A CBCT model is residual: input and target share the CT normalization (the input anchored at
    water and air), and the network's output is its input plus a correction."""
    root = tmp_path / "cbct"
    simulated_cases(root, ["a", "b"], "cbct", (20, 64, 72), (2.5, 2.5, 3.0))
    out = tmp_path / "model"
    sctconv("train", "--data", str(root), "--val-data", str(root), "--output", str(out), "--task", "cbct",
            "--no-onnx", *FAST)
    model = load_model(out)
    assert model.card.architecture.residual_output
    assert model.card.input_normalization == replace(model.card.target_normalization, anchor_hu=0.0,
                                                     air_anchor_hu=-1000.0)
    torch.nn.init.zeros_(model.network.head.weight)
    torch.nn.init.zeros_(model.network.head.bias)
    x = torch.randn(1, 1, *model.card.patch_size)
    assert torch.equal(model.network(x), x)
