"""Training curves as a PNG: loss and the validation metric per epoch. matplotlib's object API (no pyplot, no
backend switch), so that importing this module changes nothing global."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def save_curves(history: list[dict], path: Path, title: str) -> None:
    """Training and validation loss, and the validation metric (MAE or Dice), per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss", marker=".")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        left.plot(*zip(*val), label="validation loss")
    left.set_xlabel("epoch")
    left.set_yscale("log")
    left.legend()
    key, label = (("val_dice", "validation mean Dice") if any("val_dice" in h for h in history)
                  else ("val_mae", "validation MAE in body (HU)"))
    points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    if points:
        right.plot(*zip(*points), color="tab:red", marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
