"""What a training run depends on: :class:`TrainConfig`, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from sctconv.errors import SctconvError
from sctconv.nn.model import MODALITIES, Modality
from sctconv.training.setup import Preset

StageName = Literal["l1", "afp", "teacher"]
"""``l1``: stage 1 of a synthesis model; ``afp``: its fine-tuning with a teacher; ``teacher``: a CT segmenter."""
STAGES: tuple[StageName, ...] = get_args(StageName)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the model card)."""

    data: Path
    out: Path
    modality: Modality | Literal["ct"]  # "mr" or "cbct"; "ct" for the teacher
    name: str
    regions: list[str]
    stage: StageName = "l1"
    preset: Preset = "small"
    plan: Path | None = None  # a plan of `sctconv plan`, instead of the preset
    init: Path | None = None  # afp: the stage-1 model folder to fine-tune
    teacher: Path | None = None  # afp: the segmentation model folder
    afp_l1_weight: float = 0.5  # lambda of the L1 term (public code 0.5; the paper reports 5.0)
    bone_weight: float = 0.0  # l1: extra L1 weight on voxels the CT puts above hu.BONE_HU
    bone_fraction: float = 0.0  # synthesis: share of patches centred on a bone voxel (out of foreground_fraction)
    region_power: float = 0.0  # a region's share of the draws grows as its case count ** this (0: equal shares)
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

    def __post_init__(self) -> None:
        """Refuse what no stage can run: the one place where stage, modality and options are checked."""
        if self.stage not in STAGES:
            raise SctconvError(f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        modalities = ("ct",) if self.stage == "teacher" else MODALITIES
        if self.modality not in modalities:
            raise SctconvError(f"--task must be {' or '.join(modalities)} for stage {self.stage}, "
                               f"not {self.modality!r}")
        self._check_stage_options()
        if self.fold is not None and self.val_data:
            raise SctconvError("--fold splits --data; it cannot be combined with --val-data")
        if self.init and self.init.resolve() == self.out.resolve():
            raise SctconvError("--output must be a new folder, not the --init model's")
        if not 0 <= self.region_power <= 1:
            raise SctconvError("--region-power must lie between 0 (every region equally often) and 1 (every case "
                               "equally often)")
        if min(self.epochs, self.iterations, self.val_every) < 1:
            raise SctconvError("--epochs, --iterations and --val-every must be at least 1")

    def _check_stage_options(self) -> None:
        """Options that belong to some stages only."""
        if self.stage == "afp" and (self.init is None or self.teacher is None):
            raise SctconvError("stage afp needs --init (a stage-1 model folder) and --teacher")
        if self.stage != "afp" and self.teacher:
            raise SctconvError("--teacher belongs to --stage afp")
        if self.bone_weight and (self.stage != "l1" or self.bone_weight < 0):
            raise SctconvError("--bone-weight is an extra L1 weight of stage l1; it cannot be negative")
        if not 0 <= self.bone_fraction <= self.foreground_fraction or (self.bone_fraction
                                                                      and self.stage == "teacher"):
            raise SctconvError("--bone-fraction is a share of a synthesis model's body-centred patches (0 to "
                               f"{self.foreground_fraction})")
        if self.stage == "teacher" and self.init:
            raise SctconvError("--init continues a synthesis model (--stage l1) or fine-tunes one (--stage afp)")
        if self.simulate_input and (self.modality != "mr" or not self.val_data):
            raise SctconvError("--simulate-input makes MR inputs from CTs; it needs --task mr and --val-data "
                               "(paired cases made by sctconv simulate, for a fixed validation)")
        if self.stage == "afp" and self.plan:
            raise SctconvError("--plan does not apply to stage afp: it keeps the --init model's network")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
