"""Sliding-window inference: overlapping patches through the network, blended into one volume.

Windows are placed as in nnU-Net: along each axis ``ceil((L - P) / (P * step)) + 1`` windows
spread evenly from the start to the end, so a step of 0.3 (the paper's) overlaps neighbours by 70%.
Overlaps are averaged (the paper's mean blending) or weighted by a Gaussian. The engine keeps
the volume, its padding, the float32 accumulators and the count map (computed once, before the
network runs) on the backend's device, sends several windows per network call and never waits on
the device per window; on a GPU that runs out of memory it retries with fewer windows per call,
then accumulates on the host. Windows that hold no voxel of the body are not predicted. The network
runs through PyTorch (CUDA with fp16 autocast when present) or through ONNX Runtime; both backends
take and return float32 tensors shaped (B, C, z, y, x).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from scipy import ndimage
from torch import nn

from sctconv.errors import SctconvError
from sctconv.nn.model import WEIGHTS_NAME, Model, ModelCard
from sctconv.preprocessing.normalize import air_value

if TYPE_CHECKING:
    import onnxruntime

WEIGHTS_HASH_KEY = "sctconv.weights_sha256"
"""ONNX metadata: the SHA-256 of the ``model.safetensors`` the file was exported from."""


class Backend(Protocol):
    """Runs the network on a batch of normalized patches: float32 (B, 1, z, y, x) on ``device`` in,
    float32 (B, C, z, y, x) on ``device`` out."""

    name: str
    device: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is present, else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SctconvError("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise SctconvError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


@contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """With ``on``, let cuDNN time its kernels and keep the fastest (inputs of one size) for the work inside;
    ``torch.backends.cudnn.benchmark`` is as it was afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class TorchBackend:
    """The network in PyTorch; fp16 autocast on CUDA, float32 on CPU."""

    name = "torch"

    def __init__(self, network: nn.Module, device: str) -> None:
        self.device = device
        self.network = network.to(device).eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        cuda = self.device.startswith("cuda")
        with cudnn_benchmark(cuda), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return self.network(batch).float()


class OnnxBackend:
    """``model``'s network exported to ONNX (``path``), in ONNX Runtime; the CUDA provider when
    present and wanted, else CPU. A file not exported from ``model``'s weights, or for another patch
    size, is refused. ``sha256`` is the hash of the file's bytes that run."""

    name = "onnx"

    def __init__(self, model: Model, path: Path, device: str) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            data = path.read_bytes()  # read once: the hash is of exactly the bytes that run
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SctconvError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        check_onnx_binding(self.session, model, path)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: batch.cpu().numpy()})[0]
        return torch.from_numpy(out).to(batch.device)


def check_onnx_binding(session: onnxruntime.InferenceSession, model: Model, path: Path) -> None:
    """Refuse an ONNX file that was not exported from ``model``'s weights file (its metadata holds
    that file's hash) or that takes other patches than ``model``'s card says."""
    again = f"export it again with `sctconv export {model.folder}`, or use --backend torch"
    bound = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_HASH_KEY)
    if bound is None:
        raise SctconvError(f"{path} does not record which weights it was exported from (an ONNX file from "
                           f"before sctconv bound them, or not sctconv's); {again}")
    if bound != model.weights_sha256:
        raise SctconvError(f"{path} is stale: it was exported from other weights than "
                           f"{model.folder / WEIGHTS_NAME} (SHA-256 {bound[:12]}..., not "
                           f"{model.weights_sha256[:12]}...); {again}")
    shape = session.get_inputs()[0].shape[2:]
    if list(shape) != list(model.card.patch_size):
        raise SctconvError(f"{path} takes patches of {shape}, but the card of {model.card.name} says "
                           f"{list(model.card.patch_size)}; {again}")


def export_onnx(model: Model, path: Path) -> None:
    """Export ``model``'s network to ONNX for its card's patch size, with a dynamic batch axis and the
    hash of its weights file in the metadata (checked by :class:`OnnxBackend`)."""
    network = model.network.cpu().eval()
    patch_size = model.card.patch_size
    example = torch.zeros((2, model.card.architecture.in_channels, *patch_size), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=256)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed": irrelevant to this network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not for our users
        program = torch.onnx.export(network, (example,), dynamo=True, input_names=["image"],
                                    output_names=["sct"], dynamic_shapes=({0: batch},), optimize=True,
                                    verbose=False)
    quiet.setLevel(level)
    assert program is not None, "dynamo=True always returns an ONNXProgram"
    program.model.metadata_props[WEIGHTS_HASH_KEY] = model.weights_sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    program.save(str(partial), external_data=False)
    partial.replace(path)  # never a half-written model.onnx that `convert --backend onnx` would pick up


def window_count(length: int, patch: int, step: float) -> int:
    """Number of windows along one axis (nnU-Net's placement)."""
    return 1 if length <= patch else math.ceil((length - patch) / (patch * step)) + 1


def window_starts(length: int, patch: int, step: float) -> list[int]:
    """Start indices of the windows along one axis (nnU-Net's placement)."""
    count = window_count(length, patch, step)
    if count == 1:
        return [0]
    spacing = (length - patch) / (count - 1)
    return [int(round(i * spacing)) for i in range(count)]


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian importance map (peak 1, no zeros) for Gaussian blending."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / max(n * sigma_scale, 1e-6)) ** 2) for n in patch]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return np.maximum(weights, weights[weights > 0].min()).astype(np.float32)


def check_window_settings(step: float, blend: str, batch_size: int | None) -> None:
    """Refuse window settings that cannot work, with the option's name."""
    if not 0 < step <= 1:
        raise SctconvError(f"--step must be in (0, 1], not {step}")
    if blend not in ("mean", "gaussian"):
        raise SctconvError(f"unknown blending {blend!r}; use mean or gaussian")
    if batch_size is not None and batch_size < 1:
        raise SctconvError(f"--batch-size must be at least 1, not {batch_size}")


def sliding_window(volume: np.ndarray, backend: Backend, patch: tuple[int, int, int], step: float = 0.3,
                   blend: str = "mean", batch_size: int | None = None, progress: Progress | None = None,
                   region: np.ndarray | None = None, outside: float | np.ndarray = 0.0) -> np.ndarray:
    """The blended prediction (C, z, y, x) of :func:`blend_windows`."""
    return blend_windows(volume, backend, patch, step, blend, batch_size, progress, region, outside).mean


@dataclass(frozen=True)
class Blend:
    """A blended prediction (C, z, y, x), and with ``squares`` the blend of the squared window outputs
    (their weighted mean square; minus ``mean`` squared, the variance across the windows)."""

    mean: np.ndarray
    mean_square: np.ndarray | None = None


def blend_windows(volume: np.ndarray, backend: Backend, patch: tuple[int, int, int], step: float = 0.3,
                  blend: str = "mean", batch_size: int | None = None, progress: Progress | None = None,
                  region: np.ndarray | None = None, outside: float | np.ndarray = 0.0,
                  squares: bool = False) -> Blend:
    """Predict a whole (z, y, x) normalized volume patch by patch and blend the overlaps.

    Returns (C, z, y, x) for a network with C output channels. Volumes smaller than the patch are
    padded with their minimum (air) and cropped back. With ``region`` (bool, the volume's shape; e.g.
    :func:`window_region` of the body), only the windows that hold a voxel of it are predicted, so no
    work goes to the air around the body; a voxel of ``region`` gets exactly the value it gets
    without ``region``, and voxels that no predicted window covers get ``outside`` (a value, or an
    array of the volume's shape). ``batch_size`` windows go through the network at a time (None:
    :func:`auto_batch_size`). With ``squares``, the squared outputs are blended too (for the spread
    of the windows' predictions of each voxel).
    """
    check_window_settings(step, blend, batch_size)
    device = torch.device(backend.device)
    pad = [max(0, p - s) for p, s in zip(patch, volume.shape)]
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)  # no copy on the CPU
    padded = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=float(x.min())) if any(pad) else x
    windows = [tuple(slice(s, s + p) for s, p in zip(start, patch))
               for start in itertools.product(*(window_starts(n, p, step) for n, p in zip(padded.shape, patch)))]
    if region is not None:
        wanted = np.pad(region, [(0, p) for p in pad]) if any(pad) else region
        windows = [w for w in windows if wanted[w].any()]
    weights = torch.from_numpy(gaussian_weights(patch) if blend == "gaussian" else np.ones(patch, np.float32))
    accumulator = Accumulator(padded.shape, windows, weights.to(device), squares)
    batch_size = batch_size or auto_batch_size(backend, patch)
    task = progress.add_task("predicting windows", total=len(windows)) if progress else None
    done = 0
    while done < len(windows):
        chunk = windows[done:done + batch_size]
        try:
            out = backend(torch.stack([padded[w] for w in chunk])[:, None])
        except torch.OutOfMemoryError:
            batch_size = accumulator.after_out_of_memory(batch_size, patch)
            continue
        accumulator.add(chunk, out)
        done += len(chunk)
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    return accumulator.result(volume.shape, outside)


CPU_BATCH_SIZE = 2
"""Windows per call on the CPU: more do not run faster there (measured, benchmarks/RESULTS.md)."""

MAX_GPU_BATCH_SIZE = 32


def auto_batch_size(backend: Backend, patch: tuple[int, int, int]) -> int:
    """Windows per network call: :data:`CPU_BATCH_SIZE` on the CPU or through ONNX Runtime; on a GPU as
    many as fit in 80% of its free memory, from the memory that one and then two windows take (as
    KonfAI does), at most :data:`MAX_GPU_BATCH_SIZE`."""
    if not (isinstance(backend, TorchBackend) and backend.device.startswith("cuda")):
        return CPU_BATCH_SIZE
    device = torch.device(backend.device)
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        backend(torch.zeros((n, 1, *patch), device=device))
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    per_window = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_GPU_BATCH_SIZE, (0.8 * free - peaks[0]) // per_window + 1)))


class Accumulator:
    """The blended prediction under way: float32 sums of weighted window outputs (and of their squares,
    when asked) and the count map (the sum of the weights over all windows, computed once), on the
    device until a GPU runs out of memory, then on the host."""

    def __init__(self, shape: tuple[int, ...], windows: list[tuple[slice, ...]], weights: torch.Tensor,
                 squares: bool = False) -> None:
        self.weights = weights
        self.uniform = bool((weights == 1).all())
        self.count = torch.zeros(shape, dtype=torch.float32, device=weights.device)
        for w in windows:
            self.count[w] += weights
        self.squares = squares
        self.sums: list[torch.Tensor] = []  # (C, z, y, x) sums, and of squares, once the first output gives C

    def add(self, windows: list[tuple[slice, ...]], out: torch.Tensor) -> None:
        """Outputs (B, C, z, y, x) of ``windows`` added in, weighted."""
        if not self.sums:
            self.sums = [torch.zeros((out.shape[1], *self.count.shape), dtype=torch.float32,
                                     device=self.count.device) for _ in range(1 + self.squares)]
        out = out.to(self.count.device)
        for w, pred in zip(windows, out):
            for power, total in enumerate(self.sums, start=1):
                value = pred if power == 1 else pred * pred
                view = total[(slice(None),) + w]
                view += value if self.uniform else value * self.weights

    def after_out_of_memory(self, batch_size: int, patch: tuple[int, int, int]) -> int:
        """The batch size to retry with after the GPU ran out of memory: half as many windows, then
        one window with the accumulators on the host; an error when even that does not fit."""
        if self.count.device.type == "cuda":
            torch.cuda.empty_cache()
        if batch_size > 1:
            return batch_size // 2
        if self.count.device.type != "cpu":
            self.count, self.weights = self.count.cpu(), self.weights.cpu()
            self.sums = [total.cpu() for total in self.sums]
            torch.cuda.empty_cache()
            return 1
        raise SctconvError(f"out of memory for one {' x '.join(map(str, patch))} window; use --device cpu "
                           "or a smaller model")

    def result(self, shape: tuple[int, ...], outside: float | np.ndarray) -> Blend:
        """The blend cropped to ``shape``, ``outside`` where no window was predicted, on the host."""
        inside = tuple(slice(0, n) for n in shape)
        count = self.count[inside]
        covered = (count > 0).cpu().numpy()
        fill = outside if np.isscalar(outside) else np.asarray(outside)[~covered]
        blends = []
        for power in range(1, 2 + self.squares):
            if self.sums:
                blended = (self.sums[power - 1][(slice(None),) + inside] / count.clamp_min(1e-12)).cpu().numpy()
            else:  # nothing to predict: the region is empty
                blended = np.zeros((1, *shape), dtype=np.float32)
            if not covered.all():
                blended[:, ~covered] = np.power(fill, power)
            blends.append(blended)
        return Blend(blends[0], blends[1] if self.squares else None)


def window_region(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """The voxels whose prediction is used: ``mask`` widened by ``margin`` voxels, so that resampling
    the prediction back to the input grid near the body's edge reads predicted voxels only."""
    return ndimage.binary_dilation(mask > 0, iterations=margin) if margin else mask > 0


def predict_body(x: np.ndarray, mask: np.ndarray, backend: Backend, card: ModelCard, step: float = 0.3,
                 blend: str = "mean", batch_size: int | None = None, progress: Progress | None = None,
                 squares: bool = False) -> Blend:
    """:func:`blend_windows` of ``card``'s network on the windows that hold the body (``mask``, widened);
    elsewhere air, or for a residual model the input itself (no correction)."""
    outside = x if card.architecture.residual_output else air_value(card.target_normalization)
    return blend_windows(x, backend, card.patch_size, step, blend, batch_size, progress,
                         region=window_region(mask), outside=outside, squares=squares)
