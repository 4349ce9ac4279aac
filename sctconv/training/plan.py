"""Experiment planning (`sctconv plan`): target spacing, network depth, patch and batch size for a
memory budget, from a dataset fingerprint, by nnU-Net v2's rules.

The steps, as :func:`make_plan` takes them:

1. Target spacing: the median spacing of the cases along each axis. nnU-Net resamples the coarse
   axis of strongly anisotropic data (ratio > 3) more finely; the paper keeps SynthRAD2025's
   3 x 1 x 1 mm, so the median is kept in every case and the anisotropy only shapes the network.
2. Initial patch: 256^3 voxels' worth with the aspect of 1/spacing, capped by the median shape at
   the target spacing.
3. Topology (:func:`topology`, nnU-Net's ``get_pool_and_conv_props``): stage after stage, an axis
   is pooled (stride 2) while its size at that stage stays >= 8 (so >= 4 after pooling; >= 12 when it
   is the only axis left) and its spacing is less than 2x the finest current spacing; the kernel is 1
   along an axis whose spacing is >= 2x the finest at that stage, else 3 (once 3, always 3); the
   bottleneck kernel is 3. The patch is padded to a multiple of the total stride.
4. Widths: features min(320, 32 * 2^i), encoder blocks 1, 3, 4, 6, 6, 6, ..., decoder 2 blocks per
   stage (the paper's residual U-Net), or the ``small`` width for CPU training (min(64, 8 * 2^i),
   blocks 1, 2, 2, ..., decoder 1).
5. Memory (:func:`estimate_memory_gib`)::

       memory = 12 B x parameters + batch x 4.0 B x activations(patch)

   with ``activations`` the number of elements all convolutions output for one sample
   (:func:`activation_elements`, counted on the network itself; nnU-Net's
   ``compute_conv_feature_map_size`` derives it by hand) and 12 bytes per
   parameter for the fp32 weight, its gradient and the SGD momentum. 4.0 bytes per counted element
   (fp16 activations under autocast, the norms' and nonlinearities' saved tensors, cuDNN workspace,
   the CUDA context) is calibrated so that 8 GiB with SynthRAD-like data (3 x 1 x 1 mm, median shape
   100 x 400 x 500) gives the paper's 40 x 160 x 224 patch with batch 2 for the 6-stage 122 M network,
   as nnU-Net's nnResUNetPlans (reference value 9e8 at 8 GB) does.
6. Shrink: while batch 2 does not fit, the axis largest relative to the median shape loses one
   multiple of its total stride, and the topology is redone.
7. Batch: as many patches as fit (at least 2), but not more than cover the dataset once (nnU-Net's
   ``max_dataset_covered = 1`` of the residual planners).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture, build_network, count_parameters

PLAN_FORMAT = "sctconv-plan"
WIDTHS = ("paper", "small")
MIN_EDGE = 4
"""Smallest feature-map edge after pooling (nnU-Net's ``UNet_featuremap_min_edge_length``)."""
INITIAL_PATCH_VOXELS = 256 ** 3
ANISOTROPY = 3.0
"""Largest / smallest spacing above which data counts as strongly anisotropic (nnU-Net's threshold)."""
BYTES_PER_PARAMETER = 12
BYTES_PER_ACTIVATION = 4.0
MIN_BATCH = 2
GIB = 2 ** 30

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class NetworkSetup:
    """What a training run's network is and works on: a plan's configuration, or a preset."""

    architecture: Architecture
    spacing: tuple[float, float, float]  # mm, (z, y, x)
    patch_size: Shape  # voxels, (z, y, x)
    batch_size: int  # patches per step and process


def topology(spacing: tuple[float, ...], patch: Shape) -> tuple[list[Shape], list[Shape], Shape]:
    """Strides and kernels per stage for ``patch`` at ``spacing`` (z, y, x), and the patch padded to
    a multiple of the total stride (nnU-Net's ``get_pool_and_conv_props``)."""
    current, size = list(spacing), list(patch)
    strides: list[Shape] = [(1, 1, 1)]
    kernels: list[Shape] = []
    kernel = [1, 1, 1]
    while True:
        axes = [a for a in range(3) if size[a] >= 2 * MIN_EDGE]
        if not axes:
            break
        finest = min(current[a] for a in axes)
        axes = [a for a in axes if current[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * MIN_EDGE:
            break
        kernel = [3 if k == 3 or current[a] / min(current) < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append((kernel[0], kernel[1], kernel[2]))
        strides.append((2 if 0 in axes else 1, 2 if 1 in axes else 1, 2 if 2 in axes else 1))
        for a in axes:
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append((3, 3, 3))
    divisor = total_stride(strides)
    padded = np.ceil(np.array(patch) / divisor).astype(int) * divisor
    return strides, kernels, (int(padded[0]), int(padded[1]), int(padded[2]))


def total_stride(strides: list[Shape]) -> np.ndarray:
    """The product of the strides along each axis: what the patch size must be a multiple of."""
    return np.prod(strides, axis=0)


def shrink(spacing: tuple[float, ...], patch: Shape, median: np.ndarray) -> Shape:
    """nnU-Net's shrinking step: the axis largest relative to the median shape loses the total stride
    that the patch has once reduced by its current one (so that no valid size is skipped)."""
    axis = int(np.argmax(np.array(patch) / median))
    smaller = list(patch)
    smaller[axis] -= int(total_stride(topology(spacing, patch)[0])[axis])
    smaller[axis] = patch[axis] - int(total_stride(topology(spacing, (smaller[0], smaller[1], smaller[2]))[0])[axis])
    return (smaller[0], smaller[1], smaller[2])


def network(width: str, strides: list[Shape], kernels: list[Shape]) -> Architecture:
    """The residual U-Net of ``width`` ("paper" or "small") with the given topology."""
    stages = len(strides)
    encoder: tuple[int, ...]
    if width == "paper":
        features = tuple(min(320, 32 * 2 ** i) for i in range(stages))
        encoder, decoder = (1, 3, 4, 6), 2
    else:
        features = tuple(min(64, 8 * 2 ** i) for i in range(stages))
        encoder, decoder = (1, 2), 1
    return Architecture(kind="residual", features=features, strides=tuple(strides), kernel_sizes=tuple(kernels),
                        encoder_blocks=tuple(encoder[min(i, len(encoder) - 1)] for i in range(stages)),
                        decoder_blocks=(decoder,) * (stages - 1))


@functools.lru_cache(maxsize=256)
def activation_elements(arch: Architecture, patch: Shape) -> int:
    """Elements output by all convolutions of the network of ``arch`` for one ``patch``: counted by
    forward hooks while it runs on the meta device (no memory, no arithmetic)."""
    with torch.device("meta"):
        network = build_network(arch)
    counted: list[int] = []
    for module in network.modules():
        if isinstance(module, nn.Conv3d):
            module.register_forward_hook(lambda _module, _inputs, out: counted.append(out.numel()))
    with torch.no_grad():
        network(torch.empty(1, arch.in_channels, *patch, device="meta"))
    return sum(counted)


@functools.lru_cache(maxsize=64)
def parameters(arch: Architecture) -> int:
    """Trainable parameters of the network (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return count_parameters(build_network(arch))


def estimate_memory_gib(arch: Architecture, patch: Shape, batch: int) -> float:
    """Training memory estimate (GiB) of ``batch`` patches; see the module docstring."""
    return (BYTES_PER_PARAMETER * parameters(arch)
            + batch * BYTES_PER_ACTIVATION * activation_elements(arch, patch)) / GIB


def make_plan(fp: dict, gpu_memory: float, width: str = "paper") -> dict:
    """Configuration and reasoning for the dataset of fingerprint ``fp`` and ``gpu_memory`` GiB."""
    if width not in WIDTHS:
        raise SctconvError(f"unknown network width {width!r}; use one of {', '.join(WIDTHS)}")
    if gpu_memory <= 0:
        raise SctconvError("--gpu-memory must be positive")
    spacing = tuple(float(s) for s in fp["median_spacing"])
    shapes = np.array([np.array(c["shape"]) * np.array(c["spacing"]) / spacing for c in fp["per_case"]])
    median = np.median(shapes, 0)
    aspect = 1 / np.array(spacing)
    initial = np.round(aspect * (INITIAL_PATCH_VOXELS / np.prod(aspect)) ** (1 / 3))
    initial = np.maximum(1, np.minimum(initial, np.round(median))).astype(int)
    z, y, x = (int(v) for v in initial)
    strides, kernels, patch = topology(spacing, (z, y, x))
    arch = network(width, strides, kernels)
    steps = []
    while estimate_memory_gib(arch, patch, MIN_BATCH) > gpu_memory:
        steps.append({"patch_size": list(patch), "stages": len(strides),
                      "estimated_memory_gib": round(estimate_memory_gib(arch, patch, MIN_BATCH), 2)})
        smaller = shrink(spacing, patch, median)
        if min(smaller) < MIN_EDGE:
            raise SctconvError(f"--gpu-memory {gpu_memory:g} GiB is too small: even a {patch} patch needs "
                               f"{estimate_memory_gib(arch, patch, MIN_BATCH):.2f} GiB")
        strides, kernels, patch = topology(spacing, smaller)
        arch = network(width, strides, kernels)
    per_sample = BYTES_PER_ACTIVATION * activation_elements(arch, patch) / GIB
    fits = math.floor((gpu_memory - BYTES_PER_PARAMETER * parameters(arch) / GIB) / per_sample)
    covers_dataset = round(np.prod(median) * len(shapes) / np.prod(patch))
    batch = max(MIN_BATCH, min(fits, covers_dataset))
    return {
        "network": width, "spacing": list(spacing), "patch_size": list(patch), "batch_size": batch,
        "architecture": arch.to_dict(),
        "reasoning": {
            "gpu_memory_gib": gpu_memory,
            "spacing_ratio": max(spacing) / min(spacing), "anisotropic": max(spacing) / min(spacing) > ANISOTROPY,
            "target_spacing": "median spacing, kept as it is for anisotropic data (as the paper keeps 3 x 1 x 1 mm)",
            "median_shape_at_target_spacing": [round(float(v), 1) for v in median],
            "initial_patch_size": initial.tolist(), "shrink_steps": steps, "stages": len(strides),
            "parameters": parameters(arch), "activation_elements_per_sample": activation_elements(arch, patch),
            "estimated_memory_gib": round(estimate_memory_gib(arch, patch, batch), 2),
            "memory_formula": f"{BYTES_PER_PARAMETER} B x parameters + batch x {BYTES_PER_ACTIVATION} B x "
                              "activation elements (conv outputs of one sample)",
            "batch_size_limits": {"fits_in_memory": fits, "covers_dataset_once": int(covers_dataset),
                                  "minimum": MIN_BATCH},
        },
    }


def plan_document(fp: dict, data: Path, modality: str, regions: list[str], gpu_memory: float, width: str) -> dict:
    """The plan file's content: the plan for fingerprint ``fp`` of the ``modality`` cases of
    ``regions`` under ``data``, with the fingerprint itself."""
    return {"format": PLAN_FORMAT, "version": 1, "task": modality, "data": str(data.resolve()), "regions": regions,
            "configuration": make_plan(fp, gpu_memory, width), "fingerprint": fp}


def write_plan(plan: dict, path: Path) -> None:
    """Write ``plan`` as indented JSON, lists of numbers on one line."""

    def one_line(match: re.Match) -> str:
        return re.sub(r"\s+", " ", match.group()).replace("[ ", "[").replace(" ]", "]")

    text = re.sub(r"\[[^\[\]{}\"]*\]", one_line, json.dumps(plan, indent=2))  # lists without lists, objects, strings
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def load_plan(path: Path, modality: str | None) -> NetworkSetup:
    """The network setup of a plan file (as a training preset gives one).

    ``modality`` (None for a CT teacher, which fits any plan) must match the plan's (its ``task`` key, as --task).
    """
    try:
        plan = json.loads(path.read_text())
        if plan.get("format") != PLAN_FORMAT:
            raise SctconvError(f"{path} is not an sctconv plan (make one with sctconv plan)")
        if modality and plan["task"] != modality:
            raise SctconvError(f"plan {path} is for --task {plan['task']}, not {modality}")
        setup = plan["configuration"]
        spacing, patch = [float(s) for s in setup["spacing"]], [int(p) for p in setup["patch_size"]]
        return NetworkSetup(Architecture.from_dict(setup["architecture"]), (spacing[0], spacing[1], spacing[2]),
                            (patch[0], patch[1], patch[2]), int(setup["batch_size"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SctconvError(f"cannot read plan {path}: {exc}") from None
