"""Sliding-window inference: overlapping patches through the network, blended into one volume.

Windows are placed as in nnU-Net: along each axis ``ceil((L - P) / (P * step)) + 1`` windows
spread evenly from the start to the end, so a step of 0.3 (the paper's) overlaps neighbours by 70%.
Overlaps are averaged (the paper's mean blending) or weighted by a Gaussian, in float32
accumulators. The network runs through PyTorch (CUDA with fp16 autocast when present) or through
ONNX Runtime; both backends take and return float32 batches shaped (B, 1, z, y, x).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
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
    """Runs the network on a batch of normalized patches."""

    name: str
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


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
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device)
        cuda = self.device.startswith("cuda")
        with cudnn_benchmark(cuda), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            y = self.network(x)
        return y.float().cpu().numpy()


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

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


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
    example = torch.zeros((2, network.arch.in_channels, *patch_size), dtype=torch.float32)
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


def check_window_settings(step: float, blend: str, batch_size: int) -> None:
    """Refuse window settings that cannot work, with the option's name."""
    if not 0 < step <= 1:
        raise SctconvError(f"--step must be in (0, 1], not {step}")
    if blend not in ("mean", "gaussian"):
        raise SctconvError(f"unknown blending {blend!r}; use mean or gaussian")
    if batch_size < 1:
        raise SctconvError(f"--batch-size must be at least 1, not {batch_size}")


def sliding_window(volume: np.ndarray, backend: Backend, patch: tuple[int, int, int], step: float = 0.3,
                   blend: str = "mean", batch_size: int = 2, progress: Progress | None = None,
                   region: np.ndarray | None = None, outside: float | np.ndarray = 0.0) -> np.ndarray:
    """Predict a whole (z, y, x) normalized volume patch by patch and blend the overlaps.

    Returns (C, z, y, x) for a network with C output channels. Volumes smaller than the patch are
    padded with their minimum (air) and cropped back. With ``region`` (bool, the volume's shape; e.g.
    :func:`window_region` of the body), only the windows that hold a voxel of it are predicted, so no
    work goes to the air around the body; a voxel of ``region`` gets exactly the value it gets
    without ``region``, and voxels that no predicted window covers get ``outside`` (a value, or an
    array of the volume's shape).
    """
    check_window_settings(step, blend, batch_size)
    pad = [(0, max(0, p - s)) for p, s in zip(patch, volume.shape)]
    padded = np.pad(volume, pad, constant_values=float(volume.min())) if any(p[1] for p in pad) else volume
    starts = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(padded.shape, patch))))
    if region is not None:
        wanted = np.pad(region, pad) if any(p[1] for p in pad) else region
        starts = [start for start in starts if wanted[tuple(slice(s, s + p) for s, p in zip(start, patch))].any()]
    weights = gaussian_weights(patch) if blend == "gaussian" else np.ones(patch, dtype=np.float32)
    total: np.ndarray | None = None
    count = np.zeros(padded.shape, dtype=np.float32)
    task = progress.add_task("predicting windows", total=len(starts)) if progress else None
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        slices = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in chunk]
        batch = np.stack([padded[sl] for sl in slices])[:, None].astype(np.float32, copy=False)
        out = backend(np.ascontiguousarray(batch))
        if total is None:
            total = np.zeros((out.shape[1], *padded.shape), dtype=np.float32)
        for sl, pred in zip(slices, out):
            total[(slice(None),) + sl] += pred * weights
            count[sl] += weights
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    if total is None:  # nothing to predict: the region is empty
        total = np.zeros((1, *padded.shape), dtype=np.float32)
    inside = tuple(slice(0, n) for n in volume.shape)
    result = (total / np.maximum(count, np.float32(1e-12)))[(slice(None),) + inside]
    covered = count[inside] > 0
    if not covered.all():
        result[:, ~covered] = outside if np.isscalar(outside) else np.asarray(outside)[~covered]
    return result


def window_region(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """The voxels whose prediction is used: ``mask`` widened by ``margin`` voxels, so that resampling
    the prediction back to the input grid near the body's edge reads predicted voxels only."""
    return ndimage.binary_dilation(mask > 0, iterations=margin) if margin else mask > 0


def predict_body(x: np.ndarray, mask: np.ndarray, backend: Backend, card: ModelCard, step: float = 0.3,
                 blend: str = "mean", batch_size: int = 2, progress: Progress | None = None) -> np.ndarray:
    """:func:`sliding_window` of ``card``'s network on the windows that hold the body (``mask``, widened);
    elsewhere air, or for a residual model the input itself (no correction)."""
    outside = x if card.architecture.residual_output else air_value(card.target_normalization)
    return sliding_window(x, backend, card.patch_size, step, blend, batch_size, progress,
                          region=window_region(mask), outside=outside)
