"""Checkpoints: everything needed to resume a run exactly, written after every epoch.

``checkpoint_latest.pt`` is written atomically and loads with ``torch.load(weights_only=True)``. It
holds the run's identity (:func:`run_identity`), the network, optimizer and scaler states, the epoch,
the history, and the random states (numpy's of every rank, torch's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture, UNet


def run_identity(stage: str, architecture: Architecture, spacing: tuple[float, float, float],
                 patch_size: tuple[int, int, int], train: list[str], validation: list[str]) -> str:
    """What a checkpoint must have been trained as for this run to resume it: stage, network and cases."""
    return json.dumps({"stage": stage, "architecture": architecture.to_dict(), "spacing": list(spacing),
                       "patch_size": list(patch_size), "train": train, "validation": validation}, sort_keys=True)


def load_checkpoint(path: Path, identity: str, device: str) -> dict | None:
    """The checkpoint at ``path`` when there is one, refused when another run wrote it."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("identity") != identity:
        raise SctconvError(f"{path} belongs to another run (stage, network or cases differ); use a new --output folder")
    return state


def save_checkpoint(path: Path, identity: str, network: UNet, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, epoch: int, history: list[dict],
                    rng_states: list[dict]) -> None:
    """Everything needed to resume, loadable with ``torch.load(weights_only=True)``; atomic.

    ``rng_states`` holds each rank's numpy generator state, in rank order.
    """
    state = {"identity": identity, "network": network.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "history": json.dumps(history),
             "numpy_rng": json.dumps(rng_states), "torch_rng": torch.get_rng_state()}
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)
