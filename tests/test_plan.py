"""Fingerprint and plan: nnU-Net's topology rules, the calibrated memory estimate, plan -> train."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture, UNet
from sctconv.simulation.simulate import make_phantom, write_simulated_case
from sctconv.training.data import discover_cases
from sctconv.training.plan import activation_elements, load_plan, make_plan, network, topology
from sctconv.training.prepare import fingerprint_cases
from tests.helpers import TINY, sctconv

PAPER_PATCH = (40, 160, 224)


def synthrad_like(cases: int = 20) -> dict:
    """A fingerprint like SynthRAD2025 thorax/abdomen: 3 x 1 x 1 mm (z, y, x), median shape ~100 x 400 x 500."""
    rng = np.random.default_rng(0)
    shapes = np.array([100, 400, 500]) + rng.integers(-10, 11, size=(cases, 3))
    shapes[cases // 2] = (100, 400, 500)
    return {"median_spacing": [3.0, 1.0, 1.0],
            "per_case": [{"spacing": [3.0, 1.0, 1.0], "shape": s.tolist()} for s in shapes]}


def conv_outputs(arch: Architecture, patch: tuple[int, int, int]) -> int:
    """Elements the network's Conv3d layers output, counted by running it on the meta device."""
    with torch.device("meta"):
        net = UNet(arch)
    counted = [0]
    for module in net.modules():
        if isinstance(module, nn.Conv3d):
            module.register_forward_hook(lambda m, i, out: counted.__setitem__(0, counted[0] + out.numel()))
    with torch.no_grad():
        net(torch.empty(1, 1, *patch, device="meta"))
    return counted[0]


def test_topology_follows_nnunet():
    strides, kernels, patch = topology((3.0, 1.0, 1.0), (40, 160, 224))
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert kernels == [(1, 3, 3)] + [(3, 3, 3)] * 5 and patch == (40, 160, 224)
    strides, kernels, patch = topology((1.0, 1.0, 1.0), (100, 128, 128))
    assert strides == [(1, 1, 1)] + [(2, 2, 2)] * 4 + [(1, 2, 2)] and kernels == [(3, 3, 3)] * 6
    assert patch == (112, 128, 128)  # padded to the total stride, 16 along z
    assert network("paper", strides, kernels).encoder_blocks == (1, 3, 4, 6, 6, 6)


def test_activation_count_matches_the_network():
    plain = replace(TINY, kind="plain", encoder_blocks=(2, 2, 2), decoder_blocks=(2, 2))
    small = network("small", *topology((3.0, 2.5, 2.5), (20, 64, 80))[:2])
    for arch, patch in ((Architecture(), PAPER_PATCH), (TINY, (16, 32, 32)), (plain, (16, 32, 32)),
                        (small, (20, 64, 80))):
        assert activation_elements(arch, patch) == conv_outputs(arch, patch)


def test_synthrad_like_plan_at_8_gib_is_the_papers():
    plan = make_plan(synthrad_like(), 8.0)
    reasons = plan["reasoning"]
    assert reasons["stages"] == 6 and plan["spacing"] == [3.0, 1.0, 1.0] and reasons["spacing_ratio"] == 3.0
    assert abs(np.prod(plan["patch_size"]) / np.prod(PAPER_PATCH) - 1) < 0.3
    assert plan["architecture"]["kernel_sizes"][0] == (1, 3, 3) and plan["batch_size"] == 2
    assert 110e6 < reasons["parameters"] < 130e6 and reasons["estimated_memory_gib"] <= 8.0


def test_more_memory_gives_a_larger_patch():
    plans = [make_plan(synthrad_like(), gib) for gib in (4.0, 8.0, 24.0, 40.0)]
    volumes = [np.prod(p["patch_size"]) for p in plans]
    assert volumes == sorted(volumes) and len(set(volumes)) == 4
    assert all(p["reasoning"]["estimated_memory_gib"] <= gib for p, gib in zip(plans, (4, 8, 24, 40)))
    with pytest.raises(SctconvError, match="too small"):
        make_plan(synthrad_like(), 0.05)


def test_fingerprint_of_a_cbct_dataset(tmp_path):
    for i in range(2):
        ct, _ = make_phantom(np.random.default_rng(i), shape=(12 + 2 * i, 40, 48), spacing=(2.0, 2.0, 3.0 + i))
        sitk.WriteImage(ct, str(tmp_path / f"ct{i}.nii.gz"))
        write_simulated_case(tmp_path / f"ct{i}.nii.gz", tmp_path / "data" / f"c{i}", "cbct", seed=i)
    fp = fingerprint_cases(discover_cases(tmp_path / "data", "cbct"), "cbct")
    assert [c["shape"] for c in fp["per_case"]] == [[12, 40, 48], [14, 40, 48]]
    assert fp["median_spacing"] == [3.5, 2.0, 2.0] and fp["median_shape"] == [13.0, 40.0, 48.0]
    for stats in (fp["ct"], fp["cbct"]):
        assert stats["percentile_00_5"] < stats["mean"] < stats["percentile_99_5"] and stats["std"] > 0


@pytest.mark.slow
def test_plan_then_train(synthrad_tree, tmp_path):
    path = tmp_path / "plan.json"
    sctconv("plan", "--data", str(synthrad_tree), "--task", "mr", "--region", "thorax", "--network", "small",
            "--gpu-memory", "0.03", "--output", str(path))
    plan = json.loads(path.read_text())
    setup = plan["configuration"]
    assert plan["regions"] == ["thorax"] and plan["fingerprint"]["cases"] == 3
    assert setup["reasoning"]["shrink_steps"] and setup["reasoning"]["estimated_memory_gib"] <= 0.03
    assert '"patch_size": [' in path.read_text()  # short lists stay on one line
    sctconv("train", "--data", str(synthrad_tree), "--plan", str(path), "--output", str(tmp_path / "model"),
            "--epochs", "1", "--iterations", "2", "--device", "cpu")
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["patch_size"] == setup["patch_size"] and card["architecture"] == setup["architecture"]
    assert card["spacing"] == setup["spacing"]
    with pytest.raises(SctconvError, match="for --task mr"):
        load_plan(path, "cbct")
    with pytest.raises(SctconvError, match="not an sctconv plan"):
        load_plan(tmp_path / "model" / "model.json", "mr")
