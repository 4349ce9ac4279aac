"""No global side effects: importing sctconv changes no PyTorch or matplotlib setting, and the work that sets
cuDNN's benchmark mode gives it back as it found it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sctconv.inference.predict import TorchBackend, cudnn_benchmark

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA GPU: cuDNN is not used"))]


def test_importing_every_module_changes_no_global_setting():
    """In a new process (this one has imported everything already): cuDNN's flag, matplotlib's backend, no pyplot."""
    code = """
import importlib, pkgutil, sys
import matplotlib, torch
import sctconv
torch.backends.cudnn.benchmark = True
backend = dict.__getitem__(matplotlib.rcParams, "backend")
names = [m.name for m in pkgutil.walk_packages(sctconv.__path__, "sctconv.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
assert len(names) > 30, names
assert torch.backends.cudnn.benchmark is True
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, matplotlib.rcParams["backend"]
assert "matplotlib.pyplot" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


class FlagRecorder(torch.nn.Module):
    """The identity, recording ``torch.backends.cudnn.benchmark`` as it is while the network runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.backends.cudnn.benchmark)
        return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("before", [False, True])
def test_the_torch_backend_gives_the_benchmark_flag_back(device, before, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    network = FlagRecorder()
    backend = TorchBackend(network, device)  # type: ignore[arg-type]  # any module that maps a batch to a batch
    assert torch.backends.cudnn.benchmark is before
    backend(torch.zeros((1, 1, 4, 4, 4), device=device))
    assert network.seen == [before or device == "cuda"]
    assert torch.backends.cudnn.benchmark is before


def test_the_benchmark_flag_comes_back_after_an_error(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with pytest.raises(RuntimeError), cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
        raise RuntimeError("the work failed")
    assert torch.backends.cudnn.benchmark is False
