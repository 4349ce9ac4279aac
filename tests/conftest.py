"""Shared fixtures: a tiny model folder, small phantom inputs and simulated training cases, all made on the fly
(the helpers that make them are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.simulation.simulate import make_phantom, simulate_cbct, simulate_mr
from tests.helpers import make_tiny_model, simulated_cases

SYNTHRAD_CASES = ("TH/1THA001", "TH/1THA002", "AB/1ABA001", "HN/1HNA001", "other/case5")
"""A tiny SynthRAD2025 Task1 tree: two thorax cases, one abdomen, one head-neck, one of unknown region."""


@pytest.fixture
def tiny_mr_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny-mr", "mr")


@pytest.fixture
def tiny_cbct_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny-cbct", "cbct")


@pytest.fixture(scope="session")
def phantom() -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(CT, simulated MR, simulated CBCT) of a small phantom with an oblique, anisotropic grid."""
    rng = np.random.default_rng(7)
    ct, _ = make_phantom(rng, shape=(24, 56, 64), spacing=(2.7, 2.9, 3.3))
    direction = sitk.VersorTransform((0.1, 0.2, 1.0), 0.2).GetMatrix()
    ct.SetDirection(direction)
    ct.SetOrigin((-80.5, 33.25, 11.0))
    mr, cbct = simulate_mr(ct, rng), simulate_cbct(ct, rng)
    return ct, mr, cbct


@pytest.fixture
def phantom_files(tmp_path: Path, phantom) -> dict[str, Path]:
    ct, mr, cbct = phantom
    paths = {"ct": tmp_path / "ct.nii.gz", "mr": tmp_path / "mr.nii.gz", "cbct": tmp_path / "cbct.mha"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(mr, str(paths["mr"]))
    sitk.WriteImage(cbct, str(paths["cbct"]))
    return paths


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory) -> Path:
    """Three small simulated MR/CT pairs from the procedural phantom."""
    root = tmp_path_factory.mktemp("phantom_cases")
    simulated_cases(root, [f"case{i}" for i in range(3)], "mr", (20, 64, 72), (2.5, 2.5, 3.0))
    return root


@pytest.fixture(scope="module")
def synthrad_tree(tmp_path_factory) -> Path:
    """``Task1/{TH,AB,HN,other}/<case>/{mr,ct,mask}.mha`` with tiny phantoms (3 x 2.5 x 2.5 mm)."""
    root = tmp_path_factory.mktemp("synthrad") / "Task1"
    simulated_cases(root, list(SYNTHRAD_CASES), "mr", (16, 48, 56), (2.5, 2.5, 3.0))
    return root
