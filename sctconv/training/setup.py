"""The network a training run builds, and the grid it works on: a named preset, or a plan of `sctconv plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeGuard

from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture
from sctconv.training.plan import NetworkSetup, load_plan

Preset = Literal["small", "cpu", "paper"]
"""The names of :data:`PRESETS`."""

PRESETS: dict[Preset, NetworkSetup] = {
    # Small enough to train and run on a laptop CPU; the shipped models use it.
    "small": NetworkSetup(
        architecture=Architecture(kind="residual", features=(8, 16, 32, 64),
                                  strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                                  kernel_sizes=((3, 3, 3),) * 4, encoder_blocks=(1, 2, 2, 2),
                                  decoder_blocks=(1, 1, 1)),
        spacing=(3.0, 2.5, 2.5), patch_size=(32, 64, 64), batch_size=2),
    # What this project's 2-core CPU trains in hours (bf16 on AMX): 11 M parameters, 2 mm, 64 x 192 x 192 mm.
    "cpu": NetworkSetup(
        architecture=Architecture(kind="residual", features=(16, 32, 64, 128, 256),
                                  strides=((1, 1, 1),) + ((2, 2, 2),) * 4, kernel_sizes=((3, 3, 3),) * 5,
                                  encoder_blocks=(1, 1, 2, 2, 2), decoder_blocks=(1, 1, 1, 1)),
        spacing=(2.0, 2.0, 2.0), patch_size=(32, 96, 96), batch_size=2),
    # The paper's nnResU-Net (~122 M parameters) at SynthRAD2025's 1 x 1 x 3 mm.
    "paper": NetworkSetup(architecture=Architecture(), spacing=(3.0, 1.0, 1.0), patch_size=(40, 160, 224),
                          batch_size=2),
}


def network_setup(preset: str, plan: Path | None, modality: str | None) -> NetworkSetup:
    """Architecture, spacing, patch and batch size: from ``plan`` (made for ``modality``; None for a
    CT teacher, which fits any plan), else from ``preset`` (checked here, the one place)."""
    if plan:
        return load_plan(plan, modality)
    return PRESETS[check_preset(preset)]


def check_preset(name: str) -> Preset:
    """``name`` if it names a preset, else an error."""
    if not _is_preset(name):
        raise SctconvError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return name


def _is_preset(name: str) -> TypeGuard[Preset]:
    return name in PRESETS
