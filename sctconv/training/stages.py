"""The training stages: what each one trains towards (card), its loss, its validation and its final metrics.

The loop (:func:`sctconv.training.train.run_stage`) is the same for all of them and asks its stage:

- ``l1`` (:class:`L1Stage`, the paper's stage 1): the synthesis network's output against the CT, L1
  (bone voxels weighted by ``bone_weight``);
- ``afp`` (:class:`AFPStage`, stage 2): stage 1 fine-tuned with the Anatomical Feature-Prioritized
  loss of a frozen CT segmentation teacher plus a weighted L1;
- ``teacher`` (:class:`TeacherStage`): a plain U-Net CT segmenter, cross-entropy + soft Dice, on label
  maps or HU tissue classes.

A new stage (another perceptual loss, a GAN term) is one class here with the methods of :class:`Stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F

from sctconv.errors import SctconvError
from sctconv.hu import HU_MAX, HU_MIN
from sctconv.nn.model import Model, ModelCard
from sctconv.nn.network import Architecture, UNet
from sctconv.nn.teacher import GROUPS, TISSUE_CLASSES, AFPLoss, load_teacher
from sctconv.preprocessing.normalize import Normalization, bone_value
from sctconv.training.config import StageName, TrainConfig
from sctconv.training.data import CaseArrays, PreparedCase, fingerprint
from sctconv.training.plan import NetworkSetup
from sctconv.training.validation import final_metrics, teacher_metrics, validate_segmentation, validate_synthesis

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(network output, target) → a scalar loss."""


class Stage(Protocol):
    """What the training loop needs to know about the stage it runs."""

    exports_onnx: ClassVar[bool]  # write model.onnx beside the weights at the end (when the config asks)

    @property
    def config(self) -> TrainConfig:
        """The run's configuration (stages are frozen dataclasses: read-only)."""

    @property
    def input_modality(self) -> str | None:
        """The modality that a plan or a prepared dataset must be made for; None: any (a CT teacher)."""

    def card(self, cases: list[PreparedCase], setup: NetworkSetup,
             init: Model | None) -> tuple[ModelCard, dict]:
        """The card the run trains towards, and the fingerprint of the training ``cases``."""

    def loss(self, card: ModelCard, device: str) -> Loss:
        """The training loss, on ``device``."""

    def validate(self, network: UNet, cases: list[CaseArrays], card: ModelCard, device: str) -> dict[str, float]:
        """The validation scores of an epoch."""

    def final_metrics(self, network: UNet, card: ModelCard, cases: list[PreparedCase],
                      arrays: list[CaseArrays], device: str) -> dict:
        """The model card's metrics on the validation ``cases`` (``arrays``: the same, normalized)."""

    def notes(self) -> dict:
        """What the model card's training record adds for this stage."""


def make_stage(config: TrainConfig) -> Stage:
    """The stage that ``config`` names."""
    stages: dict[StageName, Callable[[TrainConfig], Stage]] = {"l1": L1Stage, "afp": AFPStage, "teacher": TeacherStage}
    return stages[config.stage](config)


@dataclass(frozen=True)
class L1Stage:
    """Stage 1: output against the CT, both in the CT dataset's z-score, L1 with bone voxels weighted."""

    exports_onnx: ClassVar[bool] = True
    config: TrainConfig

    @property
    def input_modality(self) -> str | None:
        return self.config.modality

    def card(self, cases: list[PreparedCase], setup: NetworkSetup,
             init: Model | None) -> tuple[ModelCard, dict]:
        return synthesis_card(self.config, cases, setup, init)

    def loss(self, card: ModelCard, device: str) -> Loss:
        bone_level, weight = bone_value(card.target_normalization), self.config.bone_weight
        return lambda output, target: bone_weighted_l1(output.float(), target, bone_level, weight)

    def validate(self, network: UNet, cases: list[CaseArrays], card: ModelCard, device: str) -> dict[str, float]:
        return validate_synthesis(network, cases, card, device)

    def final_metrics(self, network: UNet, card: ModelCard, cases: list[PreparedCase],
                      arrays: list[CaseArrays], device: str) -> dict:
        return final_metrics(network, card, cases, self.config.modality, device)

    def notes(self) -> dict:
        return {}


@dataclass(frozen=True)
class AFPStage(L1Stage):
    """Stage 2: stage 1 with the AFP loss of a frozen teacher (``config.teacher``) in place of L1."""

    def loss(self, card: ModelCard, device: str) -> Loss:
        assert self.config.teacher is not None  # TrainConfig refuses afp without a teacher
        teacher = load_teacher(self.config.teacher)
        teacher.network.to(device)
        return AFPLoss(teacher, card.target_normalization, self.config.afp_l1_weight)

    def notes(self) -> dict:
        return {"teacher": str(self.config.teacher), "afp_l1_weight": self.config.afp_l1_weight}


@dataclass(frozen=True)
class TeacherStage:
    """A CT segmenter: plain U-Net, cross-entropy + soft Dice, on label groups or HU tissue classes."""

    exports_onnx: ClassVar[bool] = False
    config: TrainConfig

    @property
    def input_modality(self) -> str | None:
        return None  # a CT teacher trains on the CT of any dataset and fits any plan

    def card(self, cases: list[PreparedCase], setup: NetworkSetup,
             init: Model | None) -> tuple[ModelCard, dict]:
        ct_norm, stats = ct_statistics(cases)
        classes = list(GROUPS) if all(c.labels for c in cases) else list(TISSUE_CLASSES)
        config = self.config
        return ModelCard(name=config.name, modality="ct", regions=config.regions, task="segmentation",
                         classes=classes, architecture=teacher_architecture(setup.architecture, len(classes)),
                         spacing=setup.spacing, patch_size=setup.patch_size, input_normalization=ct_norm,
                         target_normalization=ct_norm, description=config.description), stats

    def loss(self, card: ModelCard, device: str) -> Loss:
        def segmentation_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            labels = target[:, 0].long()
            return F.cross_entropy(output.float(), labels) + soft_dice_loss(output, labels)

        return segmentation_loss

    def validate(self, network: UNet, cases: list[CaseArrays], card: ModelCard, device: str) -> dict[str, float]:
        return validate_segmentation(network, cases, card, device)

    def final_metrics(self, network: UNet, card: ModelCard, cases: list[PreparedCase],
                      arrays: list[CaseArrays], device: str) -> dict:
        return teacher_metrics(network, card, arrays, device)

    def notes(self) -> dict:
        return {}


def ct_statistics(cases: list[PreparedCase]) -> tuple[Normalization, dict]:
    """The CT z-score of the training ``cases``, and their fingerprint (without its per-case list)."""
    stats = {k: v for k, v in fingerprint([c.measurement() for c in cases]).items() if k != "per_case"}
    return Normalization("zscore-dataset", (HU_MIN, HU_MAX), stats["ct"]["mean"], stats["ct"]["std"]), stats


def synthesis_card(config: TrainConfig, cases: list[PreparedCase], setup: NetworkSetup,
                   init: Model | None) -> tuple[ModelCard, dict]:
    """The card a synthesis run trains towards (sizes, spacing, normalization) and the fingerprint of
    the training ``cases``; when it continues or fine-tunes ``init``, those of the ``init`` model."""
    if init is not None:  # fine-tuning (afp) or continuing (l1): the model's network and normalization
        start = init.card
        if start.modality != config.modality:
            raise SctconvError(f"--init model {start.name} converts {start.modality}, not {config.modality}")
        return replace(start, name=config.name, regions=config.regions, metrics={}, training={}), \
            start.training.get("dataset_fingerprint", {})
    ct_norm, stats = ct_statistics(cases)
    # MR: z-score per case. CBCT: a correction added to the input (the method's residual principle), so
    # input and output share the CT's normalization and the network learns CT minus CBCT; the input is
    # first shifted so the peak of its body histogram lies at water (0 HU) and scaled about it so the air
    # around the body lies at -1000 HU, which removes most of a CBCT's global offset and scale error before
    # the network sees a patch of it.
    residual = config.modality == "cbct"
    input_norm = (replace(ct_norm, anchor_hu=0.0, air_anchor_hu=-1000.0) if residual
                  else Normalization("zscore-case"))
    return ModelCard(name=config.name, modality=config.modality, regions=config.regions,
                     architecture=replace(setup.architecture, residual_output=residual),
                     spacing=setup.spacing, patch_size=setup.patch_size,
                     input_normalization=input_norm, target_normalization=ct_norm,
                     description=config.description), stats


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
