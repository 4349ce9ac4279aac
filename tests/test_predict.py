import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sctconv.errors import SctconvError
from sctconv.inference.predict import (
    OnnxBackend,
    TorchBackend,
    export_onnx,
    gaussian_weights,
    resolve_device,
    sliding_window,
    window_region,
    window_starts,
)
from sctconv.nn.model import load_model


class Identity:
    name, device = "identity", "cpu"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.clone()


class WindowCounter:
    """Returns ones: the blended result must be exactly one everywhere."""

    name, device = "ones", "cpu"
    calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += batch.shape[0]
        return torch.ones_like(batch)


def test_window_starts_cover_the_axis_with_the_paper_step():
    for length in (16, 17, 50, 129, 400):
        starts = window_starts(length, 16, 0.3)
        assert starts[0] == 0 and starts[-1] == max(0, length - 16)
        gaps = np.diff(starts)
        assert (gaps <= 16 * 0.3 + 1).all()
    assert window_starts(100, 40, 0.3) == [0, 12, 24, 36, 48, 60]  # ceil(60/12)+1 = 6 windows
    assert window_starts(10, 16, 0.3) == [0]


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_blending_is_a_weighted_mean(blend):
    volume = np.random.default_rng(0).normal(size=(21, 37, 30)).astype(np.float32)
    out = sliding_window(volume, Identity(), (8, 16, 16), step=0.3, blend=blend, batch_size=3)[0]
    assert out.shape == volume.shape
    np.testing.assert_allclose(out, volume, atol=1e-5)
    counter = WindowCounter()
    ones = sliding_window(volume, counter, (8, 16, 16), step=0.5, blend=blend)
    assert ones.shape == (1, *volume.shape)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)
    assert counter.calls == 5 * 4 * 3  # ceil((21-8)/4)+1, ceil((37-16)/8)+1, ceil((30-16)/8)+1


def test_small_volumes_are_padded_and_cropped_back():
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    out = sliding_window(volume, Identity(), (8, 16, 16))[0]
    np.testing.assert_array_equal(out, volume)


def test_bad_step_and_blend_are_refused():
    with pytest.raises(SctconvError):
        sliding_window(np.zeros((8, 8, 8), np.float32), Identity(), (8, 8, 8), step=0)
    with pytest.raises(SctconvError):
        sliding_window(np.zeros((8, 8, 8), np.float32), Identity(), (8, 8, 8), blend="median")


def test_gaussian_weights_peak_in_the_centre_and_have_no_zeros():
    w = gaussian_weights((8, 16, 16))
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 8, 8] > w[0, 0, 0]


@pytest.mark.slow  # exporting to ONNX takes torch.onnx tens of seconds
def test_onnx_export_matches_torch(tiny_mr_model: Path, tmp_path: Path):
    model = load_model(tiny_mr_model)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    volume = np.random.default_rng(1).normal(size=(20, 40, 45)).astype(np.float32)
    a = sliding_window(volume, TorchBackend(model.network, "cpu"), model.card.patch_size, batch_size=2)
    onnx = OnnxBackend(model, path, "cpu")
    b = sliding_window(volume, onnx, model.card.patch_size, batch_size=3)
    assert np.abs(a - b).max() < 1e-4
    assert onnx.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SctconvError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SctconvError, match="no CUDA GPU"):
            resolve_device("cuda")



class WindowMean:
    """A backend whose output depends on the whole window: the input plus the window's mean."""

    name, device = "window-mean", "cpu"

    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.windows += len(batch)
        return batch + batch.mean(dim=(1, 2, 3, 4), keepdim=True)


def test_windows_outside_the_region_are_skipped_and_the_region_is_unchanged():
    volume = np.random.default_rng(1).normal(size=(24, 64, 64)).astype(np.float32)
    body = np.zeros(volume.shape, dtype=bool)
    body[8:16, 20:30, 20:30] = True
    region = window_region(body)
    assert window_region(body, margin=0).sum() == body.sum() < region.sum()
    everywhere, in_region = WindowMean(), WindowMean()
    full = sliding_window(volume, everywhere, (8, 16, 16), step=0.3)[0]
    cropped = sliding_window(volume, in_region, (8, 16, 16), step=0.3, region=region, outside=-5.0)[0]
    assert in_region.windows < everywhere.windows / 3
    np.testing.assert_array_equal(cropped[region], full[region])  # the same windows, in the same order
    uncovered = cropped == -5.0
    assert uncovered.any() and not (uncovered & region).any()
    residual = sliding_window(volume, WindowMean(), (8, 16, 16), region=region, outside=volume)[0]
    np.testing.assert_array_equal(residual[uncovered], volume[uncovered])  # outside: the input (no correction)


class OutOfMemoryAbove:
    """Raises the GPU's out-of-memory error for batches of more than ``limit`` windows (``limit`` 0:
    for every batch); else the identity."""

    name, device = "oom", "cpu"

    def __init__(self, limit: int) -> None:
        self.limit, self.sizes = limit, []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return batch.clone()


def test_out_of_memory_retries_with_fewer_windows_then_says_so():
    volume = np.random.default_rng(2).normal(size=(20, 40, 40)).astype(np.float32)
    backend = OutOfMemoryAbove(1)
    out = sliding_window(volume, backend, (8, 16, 16), batch_size=4)[0]
    np.testing.assert_allclose(out, volume, atol=1e-5)  # nothing lost, nothing counted twice
    assert backend.sizes[:3] == [4, 2, 1] and set(backend.sizes[3:]) == {1}
    with pytest.raises(SctconvError, match="out of memory for one 8 x 16 x 16 window"):
        sliding_window(volume, OutOfMemoryAbove(0), (8, 16, 16), batch_size=2)


def test_the_engine_matches_a_window_by_window_reference_loop():
    """Batched, device-side blending equals nnU-Net's loop: one window per call, accumulated one by one."""
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(19, 45, 38)).astype(np.float32)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.InstanceNorm3d(2)).eval()
    patch, weights = (8, 16, 16), gaussian_weights((8, 16, 16))
    total, count = np.zeros((2, *volume.shape), np.float32), np.zeros(volume.shape, np.float32)
    for start in itertools.product(*(window_starts(n, p, 0.3) for n, p in zip(volume.shape, patch))):
        w = tuple(slice(s, s + p) for s, p in zip(start, patch))
        with torch.no_grad():
            pred = network(torch.from_numpy(volume[w][None, None].copy()))[0].numpy()
        total[(slice(None), *w)] += pred * weights
        count[w] += weights
    engine = sliding_window(volume, TorchBackend(network, "cpu"), patch, blend="gaussian", batch_size=3)
    np.testing.assert_allclose(engine, total / count, atol=1e-5)
