"""The wheel built from the repository: it carries the shipped models, and `sctconv convert` runs from it
alone, in another folder, without --model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sctconv.nn.model import SHIPPED_MODELS, available_models

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MR = REPO / "examples" / "phantom_mr.nii.gz"
pytestmark = pytest.mark.slow  # pip builds the wheel; the shipped MR model converts at real size


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the repository's package (``pip wheel --no-build-isolation``, no network)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this project (77 or newer reads its license)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO / "sctconv", source / "sctconv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    return next((tmp / "dist").glob("sctconv-*.whl"))


def test_the_wheel_carries_every_shipped_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [f for folder, _ in available_models() for f in folder.iterdir() if f.is_file()]
    assert shipped
    for path in shipped:
        assert f"sctconv/models/{path.relative_to(SHIPPED_MODELS).as_posix()}" in names
    assert not any(name.startswith(("weights/", "sctconv/models/wip")) for name in names)


def test_convert_runs_from_the_wheel_alone(wheel, tmp_path):
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([sys.executable, "-m", "sctconv", "convert", str(EXAMPLE_MR), "out"], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((elsewhere / "out" / "report.json").read_text())
    assert Path(report["model"]["folder"]).parent == (installed / "sctconv" / "models").resolve()
