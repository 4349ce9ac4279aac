"""Training, read top to bottom: data, model, optimizer, loop, checkpoint, model folder.

Three stages (:mod:`sctconv.training.stages`) share the loop and differ in their card, target, loss,
validation and final metrics:

- ``l1`` (the paper's stage 1): the network's output against the CT, both in the CT dataset's
  z-score, L1 loss, SGD with Nesterov momentum 0.99, weight decay 3e-5, poly learning rate from
  1e-2, patches centred in the body two times out of three, no augmentation, gradient clipping at
  12, fp16 autocast on CUDA.
- ``afp`` (stage 2): fine-tuning of a stage-1 model with the Anatomical Feature-Prioritized loss of
  a frozen CT segmentation teacher plus a weighted L1 (paper: 500 epochs at 1e-3).
- ``teacher``: a compact CT segmentation network (plain U-Net, cross-entropy + soft Dice) on label
  maps or HU tissue classes, to serve as the AFP teacher and as the segmenter of `sctconv evaluate`.

Sizes (architecture, spacing, patch, batch) come from a preset or from a plan of `sctconv plan`
(:mod:`sctconv.training.setup`); the configuration is checked once (:mod:`sctconv.training.config`). The data
are raw case folders, read once into the cache (a prepared dataset, :mod:`sctconv.training.prepare`), or a
prepared dataset itself, which needs neither the raw images nor SimpleITK. The held-out cases are 20% of the
data, fold K of a 5-fold split, or a separate folder; the split is written to ``split.json``.

Each epoch is ``iterations`` steps; validation runs whole held-out volumes through the same
sliding-window inference that `sctconv convert` uses. A checkpoint after every epoch (written
atomically, loadable with ``weights_only=True``) holds the network, optimizer, scaler and random
states, so an interrupted run (even ``kill -9``) resumes exactly where the last epoch ended
(:mod:`sctconv.training.checkpoint`).

Under ``torchrun`` (one process per GPU) the network is wrapped in DistributedDataParallel, each
process samples its own ``batch_size`` patches with its own random generator (seed + rank), and
only rank 0 validates, prints and writes files while the others wait at a barrier
(:mod:`sctconv.training.distributed`).
"""

from __future__ import annotations

import json
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel

from sctconv.errors import SctconvError
from sctconv.inference.predict import cudnn_benchmark, export_onnx
from sctconv.nn.model import ONNX_NAME, Model, ModelCard, load_model, save_model
from sctconv.nn.network import UNet, build_network, count_parameters
from sctconv.preprocessing.normalize import bone_value
from sctconv.training.checkpoint import load_checkpoint, run_identity, save_checkpoint
from sctconv.training.config import TrainConfig
from sctconv.training.curves import save_curves
from sctconv.training.data import (
    Case,
    CaseArrays,
    PreparedArrays,
    PreparedCase,
    case_arrays,
    discover_cases,
    is_prepared,
    open_prepared,
    region_weights,
    sample_patch,
    select_regions,
    simulated_case_arrays,
)
from sctconv.training.distributed import Ranks, rank_rng_state, start_ranks
from sctconv.training.setup import network_setup
from sctconv.training.stages import Stage, make_stage


def train(config: TrainConfig, console: Console | None = None) -> Path:
    """Run one training stage (in this process, or as one of torchrun's); returns the model folder."""
    ranks = start_ranks(config.device)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
        with cudnn_benchmark(ranks.device.startswith("cuda")):  # patches of one size, as nnU-Net
            return run_stage(make_stage(config), ranks, (console or Console()) if ranks.main else Console(quiet=True))
    finally:
        if ranks.world > 1:
            torch.distributed.destroy_process_group()


def run_stage(stage: Stage, ranks: Ranks, console: Console) -> Path:
    """The training stage itself, top to bottom; ``console`` is quiet on ranks other than 0."""
    config, device = stage.config, ranks.device

    # Data: find the cases, refuse another run's checkpoint, read raw cases once into the cache, normalize.
    setup = network_setup(config.preset, config.plan, stage.input_modality)
    init = trainable(load_model(config.init)) if config.init else None
    found = find_split(stage, init.card.spacing if init else setup.spacing)
    checkpoint_path = config.out / "checkpoint_latest.pt"
    identity = run_identity(config.stage, init.card.architecture if init else setup.architecture, found.spacing,
                            init.card.patch_size if init else setup.patch_size, *found.names())
    state = load_checkpoint(checkpoint_path, identity, device)  # before any work: a foreign one is refused
    cases = read_split(found, config, ranks, console)
    card, stats = stage.card(cases.train, setup, init)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + ranks.rank)
    batches, val_arrays = load_arrays(config, card, cases, rng, console)

    # Model, loss and optimizer, resumed from the last checkpoint when there is one.
    network = (own_network(init) if init else build_network(card.architecture)).to(device)
    loss_of = stage.loss(card, device)
    optimizer = torch.optim.SGD(network.parameters(), lr=config.initial_lr, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    precision = Precision(amp=device.startswith("cuda"), bf16=config.bf16 and not device.startswith("cuda"))
    precision.apply(network)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.amp)
    start_epoch, history = resume(state, network, optimizer, scaler, rng, ranks)
    if state is not None:
        console.print(f"resumed from {checkpoint_path} after epoch {start_epoch}")
    del state  # the copies in the network and optimizer are what training uses; free the loaded ones
    model = DistributedDataParallel(network) if ranks.world > 1 else network  # gradients averaged in backward()
    batch_size = config.batch_size or setup.batch_size
    console.print(describe(network, card, batch_size, ranks))

    # The loop.
    for epoch in range(start_epoch, config.epochs):
        network.train()
        started, losses, skipped = time.perf_counter(), [], 0
        if precision.amp:
            torch.cuda.reset_peak_memory_stats(device)
        with Progress(TextColumn(f"epoch {epoch + 1}/{config.epochs}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
                      transient=True) as progress:
            bar = progress.add_task("train", total=config.iterations, loss=float("nan"))
            for it in range(config.iterations):
                lr = poly_lr(config.initial_lr, epoch * config.iterations + it, config.epochs * config.iterations)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = batches.sample(batch_size, device, precision.memory_format)
                with torch.autocast("cuda", dtype=torch.float16, enabled=precision.amp), \
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.bf16):
                    loss = loss_of(model(x), y)
                if not torch.isfinite(loss):
                    raise SctconvError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}, step {it + 1}; "
                                       "lower --lr or check the data")
                skipped += not optimizer_step(loss, network, optimizer, scaler, precision, config.grad_clip)
                losses.append(loss.item())
                progress.update(bar, advance=1, loss=float(np.mean(losses[-20:])))
                batches.after_step(it)
        if skipped > config.iterations // 10:
            raise SctconvError(f"training diverged: gradients not finite in {skipped} of {config.iterations} steps "
                               f"of epoch {epoch + 1}; lower --lr, check the data, or train without --bf16")
        record = epoch_record(epoch, losses, lr, started, precision, ranks, batches, skipped)
        rng_states = ranks.gather(rng.bit_generator.state)
        if ranks.main:
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                in_memory_format(network, torch.contiguous_format)  # fp32 inference: oneDNN's fast layout
                record.update(stage.validate(network, val_arrays, card, device))
                precision.apply(network)
            history.append(record)
            console.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            save_checkpoint(checkpoint_path, identity, network, optimizer, scaler, epoch, history, rng_states)
            save_curves(history, config.out / "curves.png", f"{config.name} (stage {config.stage})")
            (config.out / "history.json").write_text(json.dumps(history, indent=2))
        ranks.barrier()
    if ranks.main:
        write_model(stage, network, card, stats, init, cases, val_arrays, history, ranks, console)
    return config.out


def trainable(init: Model) -> Model:
    """The --init model, refused before any data is read when :func:`own_network` would refuse it."""
    own_network(init)
    return init


def own_network(init: Model) -> UNet:
    """The network of the --init model, which must be one of sctconv's (not an imported nnU-Net network)."""
    if not isinstance(init.network, UNet):
        raise SctconvError(f"{init.folder} is an imported nnU-Net model; sctconv trains its own networks only "
                           "(continue training it with nnU-Net)")
    return init.network


def in_memory_format(network: UNet, memory_format: torch.memory_format) -> None:
    """``network``'s weights in ``memory_format``, in place."""
    network.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's stub omits memory_format


@dataclass(frozen=True)
class Precision:
    """fp16 autocast with a gradient scaler on CUDA (``amp``); on CPU, bf16 autocast with channels-last
    3D tensors when asked (oneDNN's fast bf16 convolutions want them); else fp32."""

    amp: bool
    bf16: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.bf16 else torch.contiguous_format

    def apply(self, network: UNet) -> None:
        """The network's weights in this memory format."""
        in_memory_format(network, self.memory_format)


@dataclass(frozen=True)
class FoundCases:
    """--data's and --val-data's cases (raw or prepared), which of --data's are held out, and how."""

    data: list[Case] | list[PreparedCase]
    val_data: list[Case] | list[PreparedCase]
    held_out: set[str]
    split: dict
    spacing: tuple[float, float, float]  # the model's, mm (z, y, x)
    modality: str  # what --data's cases hold (see data_modality)

    def names(self) -> tuple[list[str], list[str]]:
        """The training and validation case names."""
        return ([c.name for c in self.data if c.name not in self.held_out],
                [c.name for c in self.val_data] + [c.name for c in self.data if c.name in self.held_out])


@dataclass(frozen=True)
class Cases:
    """The run's prepared training and validation cases, and how they were split."""

    train: list[PreparedCase]
    validation: list[PreparedCase]
    split: dict


def data_modality(config: TrainConfig) -> str:
    """What --data's cases hold: an input of the modality and a CT, or a CT alone (a teacher's data,
    or CTs whose MR the simulator makes during training)."""
    return "ct" if config.simulate_input else config.modality


def find_split(stage: Stage, spacing: tuple[float, float, float]) -> FoundCases:
    """The cases of --data and --val-data for a model at ``spacing``, and which of --data's are held out."""
    config, any_modality = stage.config, stage.input_modality is None
    modality = data_modality(config)
    data = find_cases(config.data, config, spacing, modality, any_modality)
    val_data = find_cases(config.val_data, config, spacing, config.modality, any_modality) if config.val_data else []
    held_out, split = choose_validation(config, [c.name for c in data])
    return FoundCases(data, val_data, held_out, split, spacing, modality)


def find_cases(folder: Path, config: TrainConfig, spacing: tuple[float, float, float], modality: str,
               any_modality: bool) -> list[Case] | list[PreparedCase]:
    """The cases of ``modality`` under ``folder`` of the configured regions: raw case folders, or a
    prepared dataset (checked to be at the model's ``spacing`` and, unless ``any_modality``, of ``modality``)."""
    if not is_prepared(folder):
        return select_regions(discover_cases(folder, modality), config.regions)
    prepared_modality, prepared_spacing, cases = open_prepared(folder)
    if not any_modality and prepared_modality != modality:
        raise SctconvError(f"{folder} was prepared for --task {prepared_modality}, not {modality}")
    if not np.allclose(prepared_spacing, spacing):
        raise SctconvError(f"{folder} was prepared at {prepared_spacing} mm, but this model works at "
                           f"{spacing} mm; prepare it again with the same --preset or --plan")
    return select_regions(cases, config.regions)


def read_split(found: FoundCases, config: TrainConfig, ranks: Ranks, console: Console) -> Cases:
    """The found cases prepared (raw ones read once into the cache, in --data's order so that they
    split as they do; rank 0 first, the others then read it) and split; rank 0 writes ``split.json``."""
    cache = config.cache or config.out / "cache"
    if not ranks.main:
        ranks.barrier()
    prepared = prepare_cases(found.data, found.modality, found.spacing, cache, console, index=ranks.main)
    val_cache = cache if found.modality == config.modality else cache.with_name(cache.name + "-validation")
    prepared_val = prepare_cases(found.val_data, config.modality, found.spacing, val_cache, console, index=False)
    if ranks.main:
        ranks.barrier()
    cases = Cases(train=[c for c in prepared if c.name not in found.held_out],
                  validation=prepared_val + [c for c in prepared if c.name in found.held_out], split=found.split)
    if ranks.main:
        (config.out / "split.json").write_text(json.dumps(
            {**cases.split, "train": [c.name for c in cases.train],
             "validation": [c.name for c in cases.validation]}, indent=2))
    console.print(f"stage {config.stage}: {len(cases.train)} training and {len(cases.validation)} validation cases")
    return cases


@dataclass
class Batches:
    """Random training patches (nanoGPT's ``get_batch``): cases drawn with ``weights`` (see
    :func:`region_weights`), patches centred as :func:`patch_centres` says. With ``simulate_input``,
    ``sources`` are the CTs whose MR is made anew."""

    arrays: list[CaseArrays]
    cases: list[PreparedCase]
    sources: list[PreparedArrays]
    card: ModelCard
    config: TrainConfig
    rng: np.random.Generator
    bone_voxels: dict[str, np.ndarray]
    weights: np.ndarray

    def sample(self, size: int, device: str, memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` (input, target) patches as (B, 1, z, y, x) tensors on ``device``."""
        started = time.perf_counter()
        picks = [self.arrays[i] for i in self.rng.choice(len(self.arrays), size=size, p=self.weights)]
        patches = [sample_patch(c, self.card.patch_size, self.rng,
                                patch_centres(c, self.rng.random(), self.config, self.bone_voxels)) for c in picks]
        x = torch.from_numpy(np.stack([p[0] for p in patches])[:, None]).to(device, memory_format=memory_format)
        y = torch.from_numpy(np.stack([p[1] for p in patches])[:, None]).to(device)
        self.data_seconds += time.perf_counter() - started
        return x, y

    pending: tuple[int, Future[CaseArrays]] | None = None  # the case being simulated, and its new arrays
    data_seconds: float = 0.0  # time the loop waited for patches and simulations (read and reset per epoch)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "resimulate"))  # ends with Batches

    def after_step(self, step: int) -> None:
        """With simulated inputs, every ``resimulate_every`` steps one training case gets a new contrast.

        The new contrast is simulated in a background thread while the network takes the next
        ``resimulate_every`` steps (the simulation is NumPy/SciPy work that would otherwise leave a core
        idle), and swapped in at a fixed step, so a run stays reproducible."""
        if not self.sources or (step + 1) % self.config.resimulate_every:
            return
        if self.pending is not None:
            i, future = self.pending
            started = time.perf_counter()
            self.arrays[i] = future.result()
            self.data_seconds += time.perf_counter() - started
        i = int(self.rng.integers(len(self.sources)))
        rng = np.random.default_rng(int(self.rng.integers(2 ** 63)))
        self.pending = i, self.pool.submit(simulated_case_arrays, self.cases[i].name, self.sources[i], self.card, rng)


def load_arrays(config: TrainConfig, card: ModelCard, cases: Cases, rng: np.random.Generator,
                console: Console) -> tuple[Batches, list[CaseArrays]]:
    """The training cases as :class:`Batches` and the validation cases, normalized for ``card``."""
    with Progress(TextColumn("loading"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        sources = [c.load() for c in progress.track(cases.train)] if config.simulate_input else []
        arrays = [simulated_case_arrays(c.name, a, card, rng) for c, a in zip(cases.train, sources)]
        arrays += [case_arrays(c, card) for c in progress.track(cases.validation if sources
                                                                 else cases.train + cases.validation)]
    train_arrays, val_arrays = arrays[:len(cases.train)], arrays[len(cases.train):]
    bone_level = bone_value(card.target_normalization)
    bone_voxels = {a.name: np.flatnonzero(a.y > bone_level) for a in train_arrays} if config.bone_fraction else {}
    return Batches(train_arrays, cases.train, sources, card, config, rng, bone_voxels,
                   region_weights(cases.train, config.region_power)), val_arrays


def resume(state: dict | None, network: UNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           rng: np.random.Generator, ranks: Ranks) -> tuple[int, list[dict]]:
    """The first epoch to run and the history so far; the states of a checkpoint restored when there is one."""
    if state is None:
        return 0, []
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    rng.bit_generator.state = rank_rng_state(json.loads(state["numpy_rng"]), ranks)
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"] + 1, json.loads(state["history"])


def optimizer_step(loss: torch.Tensor, network: UNet, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, precision: Precision, grad_clip: float) -> bool:
    """Backward, gradient clipping and the update; False, with no update, when the gradients are not finite
    (bf16 on some CPUs gives a rare NaN gradient; on CUDA the scaler skips an fp16 overflow itself)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    stepped = precision.amp or bool(torch.isfinite(norm))
    if stepped:
        scaler.step(optimizer)
    scaler.update()
    return stepped


def epoch_record(epoch: int, losses: list[float], lr: float, started: float, precision: Precision,
                 ranks: Ranks, batches: Batches, skipped: int) -> dict:
    """The history's entry of an epoch: mean training loss over the ranks, learning rate, seconds (and of
    them the seconds the loop waited for data), steps skipped for a non-finite gradient, GPU memory."""
    record = {"epoch": epoch + 1, "train_loss": ranks.mean(float(np.mean(losses))), "lr": lr,
              "seconds": round(time.perf_counter() - started, 2), "data_seconds": round(batches.data_seconds, 2),
              "skipped_steps": skipped}
    batches.data_seconds = 0.0
    if precision.amp:  # peak GPU memory of this process: tensors, and what PyTorch's allocator held
        record.update(gpu_allocated_gib=round(torch.cuda.max_memory_allocated(ranks.device) / 2 ** 30, 2),
                      gpu_reserved_gib=round(torch.cuda.max_memory_reserved(ranks.device) / 2 ** 30, 2))
    return record


def write_model(stage: Stage, network: UNet, card: ModelCard, stats: dict, init: Model | None, cases: Cases,
                val_arrays: list[CaseArrays], history: list[dict], ranks: Ranks, console: Console) -> None:
    """The model folder: weights and card, with metrics measured as `sctconv convert` would produce
    them and the training record; ``model.onnx`` beside them for a synthesis model."""
    config, device = stage.config, ranks.device
    console.print("measuring the validation cases")
    in_memory_format(network, torch.contiguous_format)
    network.eval()
    metrics = stage.final_metrics(network, card, cases.validation, val_arrays, device)
    console.print(" ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    training = {"stage": config.stage, "config": config.to_dict(), "train_cases": [c.name for c in cases.train],
                "validation_cases": [c.name for c in cases.validation], "fold": config.fold, "split": cases.split,
                "dataset_fingerprint": stats, "epochs": config.epochs, "processes": ranks.world,
                "parameters": count_parameters(network), "device": device_name(device),
                "iterations": config.epochs * config.iterations * ranks.world,
                "wall_seconds": round(sum(r["seconds"] for r in history), 1)}
    if init is not None:
        training.update(init_model=init.card.name, init_metrics=init.card.metrics,
                        init_training=init.card.training)
    training.update(stage.notes())
    save_model(config.out, replace(card, training=training, metrics=metrics), network)
    if config.onnx and stage.exports_onnx:
        console.print("exporting to ONNX")
        try:
            export_onnx(load_model(config.out), config.out / ONNX_NAME)  # bound to the weights file just written
        except Exception as exc:  # noqa: BLE001 - the trained model is saved; ONNX is a convenience on top
            console.print(f"[yellow]warning:[/] ONNX export failed ({type(exc).__name__}: {exc}); the model is "
                          "saved, export it later with sctconv export")
    console.print(f"[green]model written to {config.out}[/]")


def describe(network: UNet, card: ModelCard, batch_size: int, ranks: Ranks) -> str:
    """One line on the network and where it trains."""
    return (f"network: {card.architecture.kind} U-Net, {count_parameters(network) / 1e6:.2f} M parameters, "
            f"patch {card.patch_size}, spacing {card.spacing} mm, batch {batch_size}, device {ranks.device}"
            + (f", {ranks.world} processes" if ranks.world > 1 else ""))


def poly_lr(initial: float, step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial learning-rate decay."""
    return initial * (1 - min(step, total - 1) / total) ** exponent


def patch_centres(case: CaseArrays, draw: float, config: TrainConfig,
                  bone_voxels: dict[str, np.ndarray]) -> np.ndarray | None:
    """Where a patch of ``case`` is centred for a uniform ``draw``: on bone (``bone_fraction`` of the
    patches; in the body when the case has none), in the body (the rest of ``foreground_fraction``) or
    anywhere."""
    if draw < config.bone_fraction and bone_voxels[case.name].size:
        return bone_voxels[case.name]
    return case.body_voxels if draw < config.foreground_fraction else None


def split_cases(names: list[str], fraction: float, seed: int, fold: int | None = None,
                folds: int = 5) -> tuple[list[str], list[str]]:
    """Fixed train/validation split of case names by a permutation drawn from ``seed``.

    Validation is the permutation's first ``fraction`` (at least one case, at most all but one) or,
    with ``fold``, its ``fold``-th of ``folds`` near-equal parts (k-fold cross-validation).
    """
    if len(names) < 2:
        raise SctconvError("training needs at least two cases (one to train, one to validate), or --val-data")
    order = np.random.default_rng(seed).permutation(len(names))
    if fold is None:
        picked = order[:min(len(names) - 1, max(1, round(fraction * len(names))))]
    elif folds < 2 or not 0 <= fold < folds:
        raise SctconvError(f"--fold must be 0 to {folds - 1} and --folds at least 2 (got fold {fold} of {folds})")
    elif len(names) < folds:
        raise SctconvError(f"{folds} folds need at least {folds} cases; there are {len(names)}")
    else:
        picked = np.array_split(order, folds)[fold]
    val = sorted(names[i] for i in picked)
    return [n for n in names if n not in val], val


def choose_validation(config: TrainConfig, names: list[str]) -> tuple[set[str], dict]:
    """The names of --data's cases held out for validation (none with --val-data), and how."""
    if config.val_data:
        return set(), {"val_data": str(config.val_data)}
    _, val_names = split_cases(names, config.val_fraction, config.seed, config.fold, config.folds)
    split = ({"val_fraction": config.val_fraction} if config.fold is None else
             {"fold": config.fold, "folds": config.folds})
    return set(val_names), {**split, "seed": config.seed}


def prepare_cases(cases: list[Case] | list[PreparedCase], modality: str, spacing: tuple[float, float, float],
                  folder: Path, console: Console, index: bool) -> list[PreparedCase]:
    """Raw cases read once into ``folder`` (the cache; listed there with ``index``); prepared ones as they are."""
    raw = [case for case in cases if isinstance(case, Case)]
    if not raw:
        return [case for case in cases if isinstance(case, PreparedCase)]
    from sctconv.training.prepare import prepare_dataset  # SimpleITK: needed only to read raw images

    return prepare_dataset(raw, modality, spacing, folder, console, index)


def device_name(device: str) -> str:
    """The GPU's or the CPU's model name, for the model card and benchmarks."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
