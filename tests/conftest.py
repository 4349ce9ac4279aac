"""Shared fixtures: a tiny model folder and small phantom inputs, all made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sctconv.nn.model import ModelCard, save_model
from sctconv.nn.network import Architecture, UNet
from sctconv.preprocessing.normalize import Normalization
from sctconv.simulation.simulate import make_phantom, simulate_cbct, simulate_mr, write_simulated_case

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY = Architecture(kind="residual", features=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
                    kernel_sizes=((3, 3, 3),) * 3, encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not next to this checkout)")
    return path


def make_tiny_model(folder: Path, modality: str = "mr", seed: int = 0) -> Path:
    """A randomly initialised tiny model folder (fast on CPU)."""
    torch.manual_seed(seed)
    input_norm = (Normalization("zscore-case") if modality == "mr"
                  else Normalization("zscore-dataset", (-1024.0, 3071.0), -300.0, 450.0))
    card = ModelCard(name=folder.name, modality=modality, regions=["thorax"], architecture=TINY,
                     spacing=(3.0, 2.5, 2.5), patch_size=(16, 32, 32), input_normalization=input_norm,
                     target_normalization=Normalization("zscore-dataset", (-1024.0, 3071.0), -200.0, 400.0))
    save_model(folder, card, UNet(TINY))
    return folder


def simulated_cases(root: Path, names: list[str], modality: str, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float]) -> None:
    """Simulated ``modality``/CT pairs ``root/<name>`` from the procedural phantom (seed i for the i-th)."""
    for i, name in enumerate(names):
        ct, _ = make_phantom(np.random.default_rng(i), shape=shape, spacing=spacing)
        path = root / f"ct{i}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(ct, str(path))
        write_simulated_case(path, root / name, modality, seed=i)
        path.unlink()


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
