"""Training a synthesis model, read top to bottom: data, model, optimizer, loop, checkpoint, export.

Stage 1 of the paper: L1 loss between the network's output and the CT (both in the CT dataset's
z-score), SGD with Nesterov momentum 0.99, weight decay 3e-5, a poly learning rate from 1e-2,
random patches centred in the body two times out of three, no augmentation, gradient clipping at
12, fp16 autocast on CUDA. Each epoch is ``iterations`` steps; validation runs whole held-out
volumes through the same sliding-window inference that `sctconv convert` uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sctconv.data import Case, CaseArrays, discover_cases, fingerprint, load_case_hu, preprocess_case, sample_patch
from sctconv.errors import SctconvError
from sctconv.metrics import image_metrics, mae
from sctconv.model import ModelCard, Normalization, save_model
from sctconv.network import Architecture, UNet, count_parameters
from sctconv.pipeline import synthesize
from sctconv.predict import TorchBackend, resolve_device, sliding_window
from sctconv.preprocess import HU_MAX, HU_MIN
from sctconv.preview import save_curves

PRESETS: dict[str, dict] = {
    # Small enough to train and run on a laptop CPU; the shipped models use it.
    "small": {
        "architecture": Architecture(kind="residual", features=(8, 16, 32, 64),
                                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                                     kernel_sizes=((3, 3, 3),) * 4, encoder_blocks=(1, 2, 2, 2),
                                     decoder_blocks=(1, 1, 1)),
        "spacing": (3.0, 2.5, 2.5), "patch_size": (32, 64, 64), "batch_size": 2,
    },
    # The paper's nnResU-Net (~122 M parameters) at SynthRAD2025's 1 x 1 x 3 mm.
    "paper": {
        "architecture": Architecture(), "spacing": (3.0, 1.0, 1.0), "patch_size": (40, 160, 224),
        "batch_size": 2,
    },
}


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved beside the model)."""

    data: Path
    out: Path
    modality: str
    name: str
    regions: list[str]
    preset: str = "small"
    val_data: Path | None = None
    val_fraction: float = 0.2
    epochs: int = 1000
    iterations: int = 250
    batch_size: int | None = None
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip: float = 12.0
    foreground_fraction: float = 0.67
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    cache: Path | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def poly_lr(initial: float, step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial learning-rate decay."""
    return initial * (1 - min(step, total - 1) / total) ** exponent


def split_cases(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Fixed random train/validation split of case names (at least one of each)."""
    if len(names) < 2:
        raise SctconvError("training needs at least two cases (one to train, one to validate), or --val-data")
    order = np.random.default_rng(seed).permutation(len(names))
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    val = sorted(names[i] for i in order[:count])
    return [n for n in names if n not in val], val


def validate(network: UNet, cases: list[CaseArrays], card: ModelCard, device: str) -> dict[str, float]:
    """Mean L1 (normalized) and MAE in HU inside the body over whole validation volumes."""
    network.eval()
    backend = TorchBackend(network, device)
    target = card.target_normalization
    losses, maes = [], []
    for case in cases:
        pred = sliding_window(case.x, backend, card.patch_size, step=0.5, batch_size=2)
        losses.append(float(np.abs(pred - case.y).mean()))
        hu_pred = np.clip(pred * target.std + target.mean, HU_MIN, HU_MAX)
        hu_true = case.y * target.std + target.mean
        inside = case.mask > 0
        maes.append(float(np.abs(hu_pred - hu_true)[inside].mean()))
    network.train()
    return {"val_loss": float(np.mean(losses)), "val_mae": float(np.mean(maes))}


def save_checkpoint(path: Path, network: UNet, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, epoch: int, history: list[dict],
                    rng: np.random.Generator) -> None:
    """Everything needed to resume, loadable with ``torch.load(weights_only=True)``; atomic."""
    state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "history": json.dumps(history),
             "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def train(config: TrainConfig, console: Console | None = None) -> Path:
    """Run stage-1 training; returns the model folder (``config.out``)."""
    console = console or Console()
    preset = PRESETS.get(config.preset)
    if preset is None:
        raise SctconvError(f"unknown preset {config.preset!r}; use one of {', '.join(PRESETS)}")
    arch, spacing, patch = preset["architecture"], preset["spacing"], preset["patch_size"]
    batch_size = config.batch_size or preset["batch_size"]
    device = resolve_device(config.device)
    config.out.mkdir(parents=True, exist_ok=True)
    cache = config.cache or config.out / "cache"

    # Data: find the cases, split them, measure the dataset, preprocess once into the cache.
    cases = discover_cases(config.data, config.modality)
    if config.val_data:
        train_cases, val_cases = cases, discover_cases(config.val_data, config.modality)
    else:
        train_names, val_names = split_cases([c.name for c in cases], config.val_fraction, config.seed)
        train_cases = [c for c in cases if c.name in train_names]
        val_cases = [c for c in cases if c.name in val_names]
    (config.out / "split.json").write_text(json.dumps(
        {"train": [c.name for c in train_cases], "validation": [c.name for c in val_cases]}, indent=2))
    console.print(f"{len(train_cases)} training and {len(val_cases)} validation cases; measuring the dataset")
    stats = fingerprint(train_cases, config.modality)
    target_norm = Normalization("zscore-dataset", (HU_MIN, HU_MAX), stats["ct_mean"], stats["ct_std"])
    input_norm = (Normalization("zscore-case") if config.modality == "mr" else
                  Normalization("zscore-dataset", (HU_MIN, HU_MAX), stats["cbct_mean"], stats["cbct_std"]))
    card = ModelCard(name=config.name, modality=config.modality, regions=config.regions, architecture=arch,
                     spacing=spacing, patch_size=patch, input_normalization=input_norm,
                     target_normalization=target_norm, description=config.description)
    prepare = [lambda c=c: preprocess_case(c, config.modality, spacing, input_norm, target_norm, cache)
               for c in train_cases + val_cases]
    with Progress(TextColumn("preprocessing"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        arrays = [fn() for fn in progress.track(prepare)]
    train_arrays, val_arrays = arrays[:len(train_cases)], arrays[len(train_cases):]

    # Model and optimizer, resumed from the last checkpoint when there is one.
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = UNet(arch).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=config.initial_lr, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint_path = config.out / "checkpoint_latest.pt"
    start_epoch, history = 0, []
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        console.print(f"resumed from {checkpoint_path} at epoch {start_epoch}")
    console.print(f"network: {arch.kind} U-Net, {count_parameters(network) / 1e6:.2f} M parameters, "
                  f"patch {patch}, spacing {spacing} mm, batch {batch_size}, device {device}")

    # The loop.
    total_steps = config.epochs * config.iterations
    for epoch in range(start_epoch, config.epochs):
        network.train()
        started, losses = time.perf_counter(), []
        with Progress(TextColumn(f"epoch {epoch + 1}/{config.epochs}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("train", total=config.iterations, loss=float("nan"))
            for it in range(config.iterations):
                lr = poly_lr(config.initial_lr, epoch * config.iterations + it, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                picks = [train_arrays[i] for i in rng.integers(len(train_arrays), size=batch_size)]
                patches = [sample_patch(c, patch, rng, rng.random() < config.foreground_fraction) for c in picks]
                x = torch.from_numpy(np.stack([p[0] for p in patches])[:, None]).to(device)
                y = torch.from_numpy(np.stack([p[1] for p in patches])[:, None]).to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    loss = torch.nn.functional.l1_loss(network(x), y)
                if not torch.isfinite(loss):
                    raise SctconvError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}, step {it + 1}; "
                                       "lower --lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
                progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": lr,
                  "seconds": round(time.perf_counter() - started, 2)}
        if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
            record.update(validate(network, val_arrays, card, device))
        history.append(record)
        console.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        save_checkpoint(checkpoint_path, network, optimizer, scaler, epoch, history, rng)
        save_curves(history, config.out / "curves.png", f"{config.name} (stage 1, L1)")
        (config.out / "history.json").write_text(json.dumps(history, indent=2))

    # The model folder: weights and card, with metrics measured as `sctconv convert` would produce them.
    console.print("measuring the validation cases on their own grids (step 0.3)")
    metrics = final_metrics(network.eval(), card, val_cases, config.modality, device)
    console.print(" ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    card = replace(card, training={
        "stage": "L1", "config": config.to_dict(), "train_cases": [c.name for c in train_cases],
        "validation_cases": [c.name for c in val_cases], "dataset_fingerprint": stats,
        "epochs": config.epochs, "parameters": count_parameters(network)}, metrics=metrics)
    save_model(config.out, card, network)
    return config.out


SOFT_TISSUE_HU = 40.0
"""The constant CT that a model has to beat: soft tissue everywhere inside the body."""


def final_metrics(network: UNet, card: ModelCard, cases: list[Case], modality: str,
                  device: str) -> dict[str, float | int]:
    """Mean MAE / PSNR / MS-SSIM (SynthRAD2025 definitions) of the sCT on each case's own grid, and the
    MAE of a constant soft-tissue CT inside the body for comparison."""
    backend = TorchBackend(network, device)
    rows = []
    for case in cases:
        image, ct, mask = load_case_hu(case, modality)
        sct = synthesize(card, backend, image, mask)
        gt, inside = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(mask)
        row = image_metrics(gt, sitk.GetArrayFromImage(sct), inside)
        row["constant_mae"] = mae(gt, np.where(inside > 0, SOFT_TISSUE_HU, HU_MIN), inside)
        rows.append(row)
    return {"cases": len(rows), "mae_hu": float(np.mean([r["mae"] for r in rows])),
            "psnr_db": float(np.mean([r["psnr"] for r in rows])),
            "ms_ssim": float(np.mean([r["ms_ssim"] for r in rows])),
            "constant_soft_tissue_mae_hu": float(np.mean([r["constant_mae"] for r in rows])),
            "evaluated_on": "validation cases" if cases else "none"}
