"""Training, read top to bottom: data, model, optimizer, loop, checkpoint, model folder.

Three stages share the loop and differ only in their data target and loss:

- ``l1`` (the paper's stage 1): the network's output against the CT, both in the CT dataset's
  z-score, L1 loss, SGD with Nesterov momentum 0.99, weight decay 3e-5, poly learning rate from
  1e-2, patches centred in the body two times out of three, no augmentation, gradient clipping at
  12, fp16 autocast on CUDA.
- ``afp`` (stage 2): fine-tuning of a stage-1 model with the Anatomical Feature-Prioritized loss of
  a frozen CT segmentation teacher plus a weighted L1 (paper: 500 epochs at 1e-3).
- ``teacher``: a compact CT segmentation network (plain U-Net, cross-entropy + soft Dice) on label
  maps or HU tissue classes, to serve as the AFP teacher and as the segmenter of `sctconv evaluate`.

Sizes (architecture, spacing, patch, batch) come from a preset or from a plan of `sctconv plan`
(:mod:`sctconv.training.plan`). The data are raw case folders, read once into the cache (a prepared
dataset, :mod:`sctconv.training.prepare`), or a prepared dataset itself, which needs neither the raw images
nor SimpleITK. The held-out cases are 20% of the data, fold K of a 5-fold split, or a separate
folder; the split is written to ``split.json``.

Each epoch is ``iterations`` steps; validation runs whole held-out volumes through the same
sliding-window inference that `sctconv convert` uses. A checkpoint after every epoch (written
atomically, loadable with ``weights_only=True``) holds the network, optimizer, scaler and random
states, so an interrupted run (even ``kill -9``) resumes exactly where the last epoch ended.

Under ``torchrun`` (one process per GPU) the network is wrapped in DistributedDataParallel, each
process samples its own ``batch_size`` patches with its own random generator (seed + rank), and
only rank 0 validates, prints and writes files while the others wait at a barrier.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sctconv.training.data import (Case, CaseArrays, PreparedCase, case_arrays, discover_cases, fingerprint,
                                   is_prepared, open_prepared, sample_patch, select_regions, simulated_case_arrays)
from sctconv.errors import SctconvError
from sctconv.evaluation.image_metrics import bone_dice, image_metrics, mae
from sctconv.nn.model import ONNX_NAME, Model, ModelCard, load_model, save_model
from sctconv.nn.network import Architecture, UNet, count_parameters
from sctconv.training.plan import load_plan
from sctconv.hu import BONE_HU, HU_MAX, HU_MIN
from sctconv.preprocessing.normalize import Normalization, ct_value, denormalize_ct, normalize
from sctconv.inference.predict import (TorchBackend, cudnn_benchmark, export_onnx, predict_body, resolve_device,
                                      sliding_window)
from sctconv.training.curves import save_curves
from sctconv.nn.teacher import GROUPS, TISSUE_CLASSES, AFPLoss, load_teacher

PRESETS: dict[str, dict] = {
    # Small enough to train and run on a laptop CPU; the shipped models use it.
    "small": {
        "architecture": Architecture(kind="residual", features=(8, 16, 32, 64),
                                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                                     kernel_sizes=((3, 3, 3),) * 4, encoder_blocks=(1, 2, 2, 2),
                                     decoder_blocks=(1, 1, 1)),
        "spacing": (3.0, 2.5, 2.5), "patch_size": (32, 64, 64), "batch_size": 2,
    },
    # What this project's 2-core CPU trains in hours (bf16 on AMX): 11 M parameters, 2 mm, 64 x 192 x 192 mm.
    "cpu": {
        "architecture": Architecture(kind="residual", features=(16, 32, 64, 128, 256),
                                     strides=((1, 1, 1),) + ((2, 2, 2),) * 4, kernel_sizes=((3, 3, 3),) * 5,
                                     encoder_blocks=(1, 1, 2, 2, 2), decoder_blocks=(1, 1, 1, 1)),
        "spacing": (2.0, 2.0, 2.0), "patch_size": (32, 96, 96), "batch_size": 2,
    },
    # The paper's nnResU-Net (~122 M parameters) at SynthRAD2025's 1 x 1 x 3 mm.
    "paper": {
        "architecture": Architecture(), "spacing": (3.0, 1.0, 1.0), "patch_size": (40, 160, 224),
        "batch_size": 2,
    },
}
STAGES = ("l1", "afp", "teacher")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the model card)."""

    data: Path
    out: Path
    modality: str  # "mr" or "cbct"; "ct" for the teacher
    name: str
    regions: list[str]
    stage: str = "l1"
    preset: str = "small"
    plan: Path | None = None  # a plan of `sctconv plan`, instead of the preset
    init: Path | None = None  # afp: the stage-1 model folder to fine-tune
    teacher: Path | None = None  # afp: the segmentation model folder
    afp_l1_weight: float = 0.5  # lambda of the L1 term (public code 0.5; the paper reports 5.0)
    bone_weight: float = 0.0  # l1: extra L1 weight on voxels the CT puts above hu.BONE_HU
    bone_fraction: float = 0.0  # synthesis: share of patches centred on a bone voxel (out of foreground_fraction)
    val_data: Path | None = None
    val_fraction: float = 0.2
    fold: int | None = None  # validate on fold K of ``folds`` instead of ``val_fraction``
    folds: int = 5
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
    onnx: bool = True  # synthesis models: export model.onnx beside the weights at the end
    simulate_input: bool = False  # MR: inputs made from --data's CTs by the domain-randomised simulator
    resimulate_every: int = 4  # with simulate_input: one training case gets a new MR every this many steps
    bf16: bool = False  # CPU: bf16 autocast with channels-last 3D (fast on AMX / AVX512-BF16 CPUs)
    description: str = ""

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def teacher_architecture(arch: Architecture, classes: int) -> Architecture:
    """The plain U-Net counterpart of a preset, with one output channel per class."""
    return replace(arch, kind="plain", encoder_blocks=(2,) * len(arch.features),
                   decoder_blocks=(2,) * (len(arch.features) - 1), out_channels=classes)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes present in the batch."""
    probabilities = logits.float().softmax(1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    intersection = (probabilities * onehot).sum(dims)
    total = probabilities.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1e-5) / (total + 1e-5)
    present = onehot.sum(dims)[1:] > 0
    return 1 - dice[1:][present].mean() if present.any() else logits.sum() * 0


def bone_weighted_l1(output: torch.Tensor, target: torch.Tensor, bone_level: float, weight: float) -> torch.Tensor:
    """L1 where a voxel the target puts above ``bone_level`` counts ``1 + weight`` times (a weighted mean)."""
    if not weight:
        return F.l1_loss(output, target)
    weights = 1.0 + weight * (target > bone_level).float()
    return ((output - target).abs() * weights).sum() / weights.sum()


def patch_centres(case: CaseArrays, draw: float, config: TrainConfig,
                  bone_voxels: dict[str, np.ndarray]) -> np.ndarray | None:
    """Where a patch of ``case`` is centred for a uniform ``draw``: on bone (``bone_fraction`` of the
    patches; in the body when the case has none), in the body (the rest of ``foreground_fraction``) or
    anywhere."""
    if draw < config.bone_fraction and bone_voxels[case.name].size:
        return bone_voxels[case.name]
    return case.body_voxels if draw < config.foreground_fraction else None


def poly_lr(initial: float, step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial learning-rate decay."""
    return initial * (1 - min(step, total - 1) / total) ** exponent


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


def data_task(config: TrainConfig) -> str:
    """What --data's cases hold: an input of the modality and a CT, or a CT alone (a teacher's data,
    or CTs whose MR the simulator makes during training)."""
    return "ct" if config.simulate_input else config.modality


def find_cases(folder: Path, config: TrainConfig, spacing: tuple[float, float, float],
               task: str) -> list[Case] | list[PreparedCase]:
    """The cases of ``task`` under ``folder`` of the configured regions: raw case folders, or a prepared
    dataset (checked to be of the task and at the model's ``spacing``)."""
    if not is_prepared(folder):
        return select_regions(discover_cases(folder, task), config.regions)
    prepared_task, prepared_spacing, cases = open_prepared(folder)
    if config.stage != "teacher" and prepared_task != task:
        raise SctconvError(f"{folder} was prepared for --task {prepared_task}, not {task}")
    if not np.allclose(prepared_spacing, spacing):
        raise SctconvError(f"{folder} was prepared at {prepared_spacing} mm, but this model works at "
                           f"{spacing} mm; prepare it again with the same --preset or --plan")
    return select_regions(cases, config.regions)


def prepare_cases(cases: list[Case] | list[PreparedCase], task: str, spacing: tuple[float, float, float],
                  folder: Path, console: Console, index: bool) -> list[PreparedCase]:
    """Raw cases read once into ``folder`` (the cache; listed there with ``index``); prepared ones as they are."""
    if not cases or isinstance(cases[0], PreparedCase):
        return list(cases)
    from sctconv.training.prepare import prepare_dataset  # SimpleITK: needed only to read raw images

    return prepare_dataset(cases, task, spacing, folder, console, index)


def choose_validation(config: TrainConfig, names: list[str]) -> tuple[set[str], dict]:
    """The names of --data's cases held out for validation (none with --val-data), and how."""
    if config.val_data:
        return set(), {"val_data": str(config.val_data)}
    _, val_names = split_cases(names, config.val_fraction, config.seed, config.fold, config.folds)
    split = ({"val_fraction": config.val_fraction} if config.fold is None else
             {"fold": config.fold, "folds": config.folds})
    return set(val_names), {**split, "seed": config.seed}


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict[int, float]:
    """Dice of each foreground class present in ``truth``."""
    return {c: float(2 * np.sum((pred == c) & (truth == c)) / (np.sum(pred == c) + np.sum(truth == c)))
            for c in range(1, classes) if np.any(truth == c)}


def validate(network: UNet, cases: list[CaseArrays], card: ModelCard, device: str) -> dict[str, float]:
    """Synthesis: mean L1 (normalized) and MAE in HU inside the body. Segmentation: mean Dice.

    Whole validation volumes go through the sliding window (step 0.5 to keep it quick).
    """
    network.eval()
    backend = TorchBackend(network, device)
    target = card.target_normalization
    losses, scores = [], []
    for case in cases:
        pred = predict_body(case.x, case.mask, backend, card, step=0.5)
        if card.task == "segmentation":
            scores.append(np.mean(list(dice_per_class(pred.argmax(0), case.y, len(card.classes)).values())))
            continue
        losses.append(float(np.abs(pred[0] - case.y).mean()))
        hu_pred = denormalize_ct(pred[0], target)
        hu_true = case.y * target.std + target.mean
        scores.append(float(np.abs(hu_pred - hu_true)[case.mask > 0].mean()))
    network.train()
    if card.task == "segmentation":
        return {"val_dice": float(np.mean(scores))}
    return {"val_loss": float(np.mean(losses)), "val_mae": float(np.mean(scores))}


@dataclass(frozen=True)
class Ranks:
    """This process among those torchrun started (rank 0 of 1 without torchrun), and its device."""

    device: str
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, prints and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: object) -> list:
        """``value`` of every rank, in rank order."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        return float(np.mean(self.gather(value)))


DISTRIBUTED_TIMEOUT = timedelta(hours=2)
"""How long ranks wait for each other, e.g. for rank 0's validation (nccl's default is 10 minutes)."""


def start_ranks(device: str) -> Ranks:
    """Join torchrun's process group when ``WORLD_SIZE`` and ``LOCAL_RANK`` are set: nccl with
    ``cuda:LOCAL_RANK`` on GPUs, gloo on CPU. Without torchrun, one process on ``device``."""
    device = resolve_device(device)
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ:
        return Ranks(device)
    local = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise SctconvError(f"torchrun started local rank {local}, but there are {torch.cuda.device_count()} GPUs")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=DISTRIBUTED_TIMEOUT)
    return Ranks(device, dist.get_rank(), dist.get_world_size())


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


def network_setup(preset: str, plan: Path | None, modality: str | None) -> dict:
    """Architecture, spacing, patch and batch size: from ``plan`` (made for ``modality``; None for a
    CT teacher, which fits any plan), else from ``preset``."""
    if plan:
        return load_plan(plan, modality)
    if preset not in PRESETS:
        raise SctconvError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def make_card(config: TrainConfig, cases: list[PreparedCase], setup: dict,
              init: Model | None) -> tuple[ModelCard, dict]:
    """The card the run trains towards (sizes, spacing, normalization) and the fingerprint of the
    training ``cases`` (without its per-case list); for afp, those of the ``init`` model."""
    if config.stage == "afp" and (init is None or config.teacher is None):
        raise SctconvError("stage afp needs --init (a stage-1 model folder) and --teacher")
    if init is not None:  # fine-tuning (afp) or continuing (l1): the model's network and normalization
        start = init.card
        if start.modality != config.modality:
            raise SctconvError(f"--init model {start.name} converts {start.modality}, not {config.modality}")
        return replace(start, name=config.name, regions=config.regions, metrics={}, training={}), \
            start.training.get("dataset_fingerprint", {})
    stats = {k: v for k, v in fingerprint([c.measurement() for c in cases]).items() if k != "per_case"}
    ct_norm = Normalization("zscore-dataset", (HU_MIN, HU_MAX), stats["ct"]["mean"], stats["ct"]["std"])
    if config.stage == "teacher":
        classes = list(GROUPS) if all(c.labels for c in cases) else list(TISSUE_CLASSES)
        return ModelCard(name=config.name, modality="ct", regions=config.regions, task="segmentation",
                         classes=classes, architecture=teacher_architecture(setup["architecture"], len(classes)),
                         spacing=setup["spacing"], patch_size=setup["patch_size"], input_normalization=ct_norm,
                         target_normalization=ct_norm, description=config.description), stats
    # MR: z-score per case. CBCT: a correction added to the input (the method's residual principle), so
    # input and output share the CT's normalization and the network learns CT minus CBCT.
    residual = config.modality == "cbct"
    input_norm = ct_norm if residual else Normalization("zscore-case")
    return ModelCard(name=config.name, modality=config.modality, regions=config.regions,
                     architecture=replace(setup["architecture"], residual_output=residual),
                     spacing=setup["spacing"], patch_size=setup["patch_size"],
                     input_normalization=input_norm, target_normalization=ct_norm,
                     description=config.description), stats


def train(config: TrainConfig, console: Console | None = None) -> Path:
    """Run one training stage (in this process, or as one of torchrun's); returns the model folder."""
    if config.stage not in STAGES:
        raise SctconvError(f"unknown stage {config.stage!r}; use one of {', '.join(STAGES)}")
    if config.stage != "afp" and config.teacher:
        raise SctconvError("--teacher belongs to --stage afp")
    if config.bone_weight and (config.stage != "l1" or config.bone_weight < 0):
        raise SctconvError("--bone-weight is an extra L1 weight of stage l1; it cannot be negative")
    if not 0 <= config.bone_fraction <= config.foreground_fraction or (config.bone_fraction
                                                                        and config.stage == "teacher"):
        raise SctconvError("--bone-fraction is a share of a synthesis model's body-centred patches (0 to "
                           f"{config.foreground_fraction})")
    if config.stage == "teacher" and config.init:
        raise SctconvError("--init continues a synthesis model (--stage l1) or fine-tunes one (--stage afp)")
    if config.simulate_input and (config.modality != "mr" or not config.val_data):
        raise SctconvError("--simulate-input makes MR inputs from CTs; it needs --task mr and --val-data "
                           "(paired cases made by sctconv simulate, for a fixed validation)")
    if config.stage == "afp" and config.plan:
        raise SctconvError("--plan does not apply to stage afp: it keeps the --init model's network")
    if config.fold is not None and config.val_data:
        raise SctconvError("--fold splits --data; it cannot be combined with --val-data")
    if config.init and config.init.resolve() == config.out.resolve():
        raise SctconvError("--output must be a new folder, not the --init model's")
    if min(config.epochs, config.iterations, config.val_every) < 1:
        raise SctconvError("--epochs, --iterations and --val-every must be at least 1")
    ranks = start_ranks(config.device)
    try:
        with cudnn_benchmark(ranks.device.startswith("cuda")):  # patches of one size, as nnU-Net
            return run_stage(config, ranks, (console or Console()) if ranks.main else Console(quiet=True))
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def run_stage(config: TrainConfig, ranks: Ranks, console: Console) -> Path:
    """The training stage itself, top to bottom; ``console`` is quiet on ranks other than 0."""
    device = ranks.device
    config.out.mkdir(parents=True, exist_ok=True)
    cache = config.cache or config.out / "cache"

    # Data: find the cases, read raw ones once into the cache (a prepared dataset of --data's cases, in
    # their order, so that it splits as they do), split them, normalize.
    setup = network_setup(config.preset, config.plan, None if config.stage == "teacher" else config.modality)
    init = load_model(config.init) if config.init else None
    spacing = init.card.spacing if init else setup["spacing"]
    task = data_task(config)
    data_cases = find_cases(config.data, config, spacing, task)
    val_data_cases = find_cases(config.val_data, config, spacing, config.modality) if config.val_data else []
    held_out, split = choose_validation(config, [c.name for c in data_cases])
    checkpoint_path = config.out / "checkpoint_latest.pt"
    identity = run_identity(config.stage, init.card.architecture if init else setup["architecture"], spacing,
                            init.card.patch_size if init else setup["patch_size"],
                            [c.name for c in data_cases if c.name not in held_out],
                            [c.name for c in val_data_cases] + [c.name for c in data_cases if c.name in held_out])
    state = load_checkpoint(checkpoint_path, identity, device)  # before any work: a foreign one is refused
    if not ranks.main:
        ranks.barrier()  # rank 0 fills the cache first; the others then read it
    prepared = prepare_cases(data_cases, task, spacing, cache, console, index=ranks.main)
    val_cache = cache if task == config.modality else cache.with_name(cache.name + "-validation")
    prepared_val = prepare_cases(val_data_cases, config.modality, spacing, val_cache, console, index=False)
    if ranks.main:
        ranks.barrier()
    train_cases = [c for c in prepared if c.name not in held_out]
    val_cases = prepared_val + [c for c in prepared if c.name in held_out]
    if ranks.main:
        (config.out / "split.json").write_text(json.dumps(
            {**split, "train": [c.name for c in train_cases], "validation": [c.name for c in val_cases]}, indent=2))
    console.print(f"stage {config.stage}: {len(train_cases)} training and {len(val_cases)} validation cases")
    card, stats = make_card(config, train_cases, setup, init)
    segmentation = card.task == "segmentation"
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + ranks.rank)
    with Progress(TextColumn("loading"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        sources = [c.load() for c in progress.track(train_cases)] if config.simulate_input else []
        arrays = [simulated_case_arrays(c.name, a, card, rng) for c, a in zip(train_cases, sources)]
        arrays += [case_arrays(c, card) for c in progress.track(val_cases if sources else train_cases + val_cases)]
    train_arrays, val_arrays = arrays[:len(train_cases)], arrays[len(train_cases):]

    # Model, loss and optimizer, resumed from the last checkpoint when there is one.
    network = (init.network if init else UNet(card.architecture)).to(device)
    if config.stage == "afp":
        teacher = load_teacher(config.teacher)
        teacher.model.network.to(device)
        afp = AFPLoss(teacher, card.target_normalization, config.afp_l1_weight)

    bone_level = ct_value(BONE_HU, card.target_normalization)
    bone_voxels = {a.name: np.flatnonzero(a.y > bone_level) for a in train_arrays} if config.bone_fraction else {}

    def loss_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if config.stage == "afp":
            return afp(output, target)
        if segmentation:
            labels = target[:, 0].long()
            return F.cross_entropy(output.float(), labels) + soft_dice_loss(output, labels)
        return bone_weighted_l1(output.float(), target, bone_level, config.bone_weight)

    optimizer = torch.optim.SGD(network.parameters(), lr=config.initial_lr, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    use_amp = device.startswith("cuda")
    bf16 = config.bf16 and not use_amp
    if bf16:  # oneDNN's fast bf16 convolutions want channels-last 3D tensors
        network.to(memory_format=torch.channels_last_3d)
    memory_format = torch.channels_last_3d if bf16 else torch.contiguous_format
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, history = 0, []
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        rng.bit_generator.state = rank_rng_state(json.loads(state["numpy_rng"]), ranks)
        torch.set_rng_state(state["torch_rng"])
        console.print(f"resumed from {checkpoint_path} after epoch {start_epoch}")
        del state  # the copies in the network and optimizer are what training uses; free the loaded ones
    # Several processes: gradients are averaged over the ranks in backward().
    model = DistributedDataParallel(network) if ranks.world > 1 else network
    batch_size = config.batch_size or setup["batch_size"]
    console.print(f"network: {card.architecture.kind} U-Net, {count_parameters(network) / 1e6:.2f} M parameters, "
                  f"patch {card.patch_size}, spacing {card.spacing} mm, batch {batch_size}, device {device}"
                  + (f", {ranks.world} processes" if ranks.world > 1 else ""))

    # The loop.
    total_steps = config.epochs * config.iterations
    for epoch in range(start_epoch, config.epochs):
        network.train()
        started, losses = time.perf_counter(), []
        if use_amp:
            torch.cuda.reset_peak_memory_stats(device)
        with Progress(TextColumn(f"epoch {epoch + 1}/{config.epochs}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("train", total=config.iterations, loss=float("nan"))
            for it in range(config.iterations):
                lr = poly_lr(config.initial_lr, epoch * config.iterations + it, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                picks = [train_arrays[i] for i in rng.integers(len(train_arrays), size=batch_size)]
                patches = [sample_patch(c, card.patch_size, rng, patch_centres(c, rng.random(), config, bone_voxels))
                           for c in picks]
                x = torch.from_numpy(np.stack([p[0] for p in patches])[:, None]).to(device,
                                                                                  memory_format=memory_format)
                y = torch.from_numpy(np.stack([p[1] for p in patches])[:, None]).to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp), \
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_of(model(x), y)
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
                if sources and (it + 1) % config.resimulate_every == 0:  # a new contrast for one case
                    i = int(rng.integers(len(sources)))
                    train_arrays[i] = simulated_case_arrays(train_cases[i].name, sources[i], card, rng)
        record = {"epoch": epoch + 1, "train_loss": ranks.mean(float(np.mean(losses))), "lr": lr,
                  "seconds": round(time.perf_counter() - started, 2)}
        if use_amp:  # peak GPU memory of this process: tensors, and what PyTorch's allocator held
            record.update(gpu_allocated_gib=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2),
                          gpu_reserved_gib=round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 2))
        rng_states = ranks.gather(rng.bit_generator.state)
        if ranks.main:
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                network.to(memory_format=torch.contiguous_format)  # fp32 inference: oneDNN's fast layout
                record.update(validate(network, val_arrays, card, device))
                network.to(memory_format=memory_format)
            history.append(record)
            console.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            save_checkpoint(checkpoint_path, identity, network, optimizer, scaler, epoch, history, rng_states)
            save_curves(history, config.out / "curves.png", f"{config.name} (stage {config.stage})")
            (config.out / "history.json").write_text(json.dumps(history, indent=2))
        ranks.barrier()
    if not ranks.main:
        return config.out

    # The model folder: weights and card, with metrics measured as `sctconv convert` would produce them.
    console.print("measuring the validation cases")
    network.to(memory_format=torch.contiguous_format)
    network.eval()
    metrics = (teacher_metrics(network, card, val_arrays, device) if segmentation
               else final_metrics(network, card, val_cases, config.modality, device))
    console.print(" ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    training = {"stage": config.stage, "config": config.to_dict(), "train_cases": [c.name for c in train_cases],
                "validation_cases": [c.name for c in val_cases], "fold": config.fold, "split": split,
                "dataset_fingerprint": stats, "epochs": config.epochs, "processes": ranks.world,
                "parameters": count_parameters(network), "device": device_name(device),
                "iterations": config.epochs * config.iterations * ranks.world,
                "wall_seconds": round(sum(r["seconds"] for r in history), 1)}
    if init is not None:
        training.update(init_model=init.card.name, init_metrics=init.card.metrics,
                        init_training=init.card.training)
    if config.stage == "afp":
        training.update(teacher=str(config.teacher), afp_l1_weight=config.afp_l1_weight)
    save_model(config.out, replace(card, training=training, metrics=metrics), network)
    if config.onnx and not segmentation:
        console.print("exporting to ONNX")
        try:
            export_onnx(load_model(config.out), config.out / ONNX_NAME)  # bound to the weights file just written
        except Exception as exc:  # noqa: BLE001 - the trained model is saved; ONNX is a convenience on top
            console.print(f"[yellow]warning:[/] ONNX export failed ({type(exc).__name__}: {exc}); the model is "
                          "saved, export it later with sctconv export")
    console.print(f"[green]model written to {config.out}[/]")
    return config.out


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


def rank_rng_state(states: list[dict] | dict, ranks: Ranks) -> dict:
    """This rank's numpy generator state from a checkpoint's (one per rank; a bare state from before
    multi-process training counts as one rank's)."""
    states = states if isinstance(states, list) else [states]
    if len(states) != ranks.world:
        raise SctconvError(f"the checkpoint was written by {len(states)} process(es); resume it with as many "
                           f"(torchrun --nproc_per_node {len(states)}, or without torchrun for 1)")
    return states[ranks.rank]


def teacher_metrics(network: UNet, card: ModelCard, cases: list[CaseArrays], device: str) -> dict:
    """Per-class Dice of the teacher on the validation cases (model grid)."""
    backend = TorchBackend(network, device)
    per_class: dict[str, list[float]] = {}
    for case in cases:
        pred = sliding_window(case.x, backend, card.patch_size, step=0.5, blend="gaussian").argmax(0)
        for c, dice in dice_per_class(pred, case.y, len(card.classes)).items():
            per_class.setdefault(card.classes[c], []).append(dice)
    means = {name: float(np.mean(values)) for name, values in per_class.items()}
    return {"cases": len(cases), "mean_dice": float(np.mean(list(means.values()))) if means else 0.0,
            "dice": means, "evaluated_on": "validation cases"}


WATER_HU = 0.0
"""The constant CT that a model has to beat: water everywhere inside the body."""


def final_metrics(network: UNet, card: ModelCard, cases: list[PreparedCase], modality: str,
                  device: str) -> dict[str, float | int | str | dict]:
    """Mean MAE / PSNR / MS-SSIM (SynthRAD2025 definitions) and bone Dice of the sCT inside the body,
    with baselines: the MAE of a constant water CT, and for CBCT the MAE of the uncorrected CBCT;
    over all cases and per region.

    On each case's own grid, as `sctconv convert` makes the sCT, when the raw files are on this
    machine; else (a prepared dataset alone) on the model grid, from the prepared arrays.
    """
    backend = TorchBackend(network, device)
    own_grid = all(case.source is not None for case in cases)
    rows = []
    for case in cases:
        gt, sct, inside, image = (own_grid_arrays(case.source, card, backend, modality) if own_grid
                                  else model_grid_arrays(case, card, backend))
        scores = image_metrics(gt, sct, inside)
        row = {"mae_hu": scores["mae"], "psnr_db": scores["psnr"], "ms_ssim": scores["ms_ssim"],
               "bone_dice": bone_dice(gt, sct, inside),
               "constant_water_mae_hu": mae(gt, np.where(inside > 0, WATER_HU, HU_MIN), inside)}
        if modality == "cbct":
            row["input_cbct_mae_hu"] = mae(gt, np.clip(image, HU_MIN, HU_MAX), inside)
        rows.append((case.region or "unknown", row))

    def means(selected: list[dict]) -> dict[str, float]:
        return {key: float(np.mean([r[key] for r in selected])) for key in selected[0]}

    where = "validation cases, own grids" if own_grid else "validation cases, model grid (prepared dataset)"
    if not rows:
        return {"cases": 0, "evaluated_on": "none"}
    regions = sorted({region for region, _ in rows})
    per_region = {region: {"cases": sum(1 for r, _ in rows if r == region),
                           **means([row for r, row in rows if r == region])} for region in regions}
    return {"cases": len(rows), **means([row for _, row in rows]), "per_region": per_region, "evaluated_on": where}


def own_grid_arrays(case: Case, card: ModelCard, backend: TorchBackend,
                    modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CT, sCT, mask and input of a raw case on its own grid, the sCT made as `sctconv convert` does."""
    import SimpleITK as sitk  # reading raw images; a prepared dataset trains without SimpleITK

    from sctconv.inference.synthesize import synthesize
    from sctconv.training.prepare import load_case_hu

    image, ct, mask = load_case_hu(case, modality)
    sct = synthesize(card, backend, image, mask)
    return tuple(sitk.GetArrayFromImage(i) for i in (ct, sct, mask, image))


def model_grid_arrays(case: PreparedCase, card: ModelCard,
                      backend: TorchBackend) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """CT, sCT, mask and input of a prepared case on the model grid (sliding window at step 0.3, mean
    blending, -1024 HU outside the body, as `sctconv convert`)."""
    arrays = case.load()
    x = normalize(arrays.input, arrays.mask, card.input_normalization)
    sct = denormalize_ct(predict_body(x, arrays.mask, backend, card)[0], card.target_normalization)
    sct[arrays.mask == 0] = HU_MIN
    return arrays.ct, sct, arrays.mask, arrays.input
