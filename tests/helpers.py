"""What several test modules (and benchmarks/) use: tiny models and simulated cases, the shared data,
the command line in a subprocess or in this process, the DICOM validators, and checks of an output folder.
Fixtures live in conftest.py; test modules import from here, never from each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from click.testing import Result
from typer.testing import CliRunner

from sctconv.cli import app
from sctconv.nn.model import ModelCard, save_model
from sctconv.nn.network import Architecture, UNet
from sctconv.preprocessing.normalize import Normalization
from sctconv.simulation.simulate import make_phantom, write_simulated_case

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY = Architecture(kind="residual", features=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
                    kernel_sizes=((3, 3, 3),) * 3, encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1))

DCIODVFY = shutil.which("dciodvfy")
DCENTVFY = shutil.which("dcentvfy")
DCM2NIIX = shutil.which("dcm2niix")


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


def sctconv(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m sctconv ARGS`` in a new process (one thread); with ``check``, exit 0 or fail with its stderr.
    For tests about the process: its signals, its imports, its real entry point, long training."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "sctconv", *args], capture_output=True, text=True, env=env,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


def cli(*args: str) -> Result:
    """``sctconv ARGS`` in this process (Typer's runner), for what a new process adds nothing to: the exit
    code and the lines on stderr. An exception escaping the command fails the test (it would be a traceback)."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def check_sct_folder(out: Path, source_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Assert the sCT is on the source's exact grid, in [-1024, 3071], air outside the body;
    return (sCT values, body mask)."""
    source = sitk.ReadImage(str(source_path))
    sct = sitk.ReadImage(str(out / "sct.nii.gz"))
    assert sct.GetSize() == source.GetSize()
    np.testing.assert_allclose(sct.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(sct.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(sct.GetDirection(), source.GetDirection(), atol=1e-9)
    values = sitk.GetArrayFromImage(sct)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz")))
    assert values.min() >= -1024 and values.max() <= 3071
    assert (values[mask == 0] == -1024).all()
    return values, mask


def skull_figures(sct: np.ndarray, head: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[float, float]:
    """(share of the head above 250 HU, share of those voxels within 20 mm of the head surface)."""
    from scipy import ndimage

    bone = (sct > 250.0) & head
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return float(bone.sum() / head.sum()), float((depth[bone] <= 20.0).mean()) if bone.any() else 0.0


def tool(name: str) -> str:
    """The path of the command-line tool ``name``; when it is not installed, skip the rest of the test with
    that reason, so that a check that cannot run is reported instead of passing silently."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: this check did not run")
    return path


def run_tool(*args: str | Path) -> str:
    """stdout and stderr of a command-line tool."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                            errors="replace")
    return result.stdout + result.stderr


def error_lines(output: str) -> list[str]:
    """The lines of a dicom3tools report that are errors."""
    return [line for line in output.splitlines() if line.strip().startswith("Error")]


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> None:
    """Same size, origin, direction and spacing."""
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)


def sitk_series(folder: Path) -> sitk.Image:
    """The DICOM series in ``folder`` as SimpleITK (GDCM) reads it."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()
