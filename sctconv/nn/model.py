"""Model folders: weights in safetensors plus a JSON model card with everything inference needs.

A model folder holds ``model.safetensors`` and ``model.json``. The card records the architecture,
the voxel spacing and patch size the network works at, how inputs are normalized (with the
dataset statistics where the scheme needs them), how outputs go back to HU, the training data and
the measured metrics. Weights are read with safetensors, so loading a model never runs pickled code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from sctconv.card_numbers import three
from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture, UNet, build_network

if TYPE_CHECKING:
    from sctconv.nn.nnunet import NnUNetNetwork
from sctconv.preprocessing.normalize import Normalization

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The models shipped inside the package (one folder per model): what names and the default choice resolve to."""

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
"""The weights exported to ONNX (optional; bound to ``model.safetensors`` by its hash)."""
REGIONS = ("head-neck", "thorax", "abdomen")
REGION_ALIASES = {"hn": "head-neck", "th": "thorax", "ab": "abdomen", "head and neck": "head-neck"}
Modality = Literal["mr", "cbct"]
"""The input of a synthesis model; a segmentation model's is ``"ct"``."""
MODALITIES: tuple[Modality, ...] = get_args(Modality)
Task = Literal["synthesis", "segmentation"]
"""What a model does: make a CT from its input, or segment a CT (a "teacher")."""
TASKS: tuple[Task, ...] = get_args(Task)


def canonical_region(name: str) -> str:
    """'HN' / 'th' / 'Abdomen' → 'head-neck' / 'thorax' / 'abdomen'."""
    key = name.strip().lower()
    region = REGION_ALIASES.get(key, key)
    if region not in REGIONS:
        raise SctconvError(f"unknown region {name!r}; use one of {', '.join(REGIONS)} (or HN, TH, AB)")
    return region


@dataclass
class ModelCard:
    """Everything inference needs to run a model, plus where it came from and how good it is."""

    name: str
    modality: Modality | Literal["ct"]  # input modality: "mr" or "cbct" (synthesis), "ct" (segmentation)
    regions: list[str]
    architecture: Architecture
    spacing: tuple[float, float, float]  # mm, (z, y, x)
    patch_size: tuple[int, int, int]  # voxels, (z, y, x)
    input_normalization: Normalization
    target_normalization: Normalization  # CT: always "zscore-dataset"; inverted to get HU
    description: str = ""
    version: str = "1"
    task: Task = "synthesis"  # or "segmentation" (a CT segmentation "teacher")
    classes: list[str] = field(default_factory=list)  # segmentation: one name per output channel
    fast: bool = False  # the shipped model that `convert --fast` picks (coarser, smaller)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a card that inference cannot run as it says, however it was made (JSON, training,
        by hand); spacing and patch size become tuples of floats and ints."""
        for key in ("name", "modality", "task", "description", "version"):
            if not isinstance(getattr(self, key), str):
                raise SctconvError(f"{key} must be text, not {getattr(self, key)!r}")
        if not self.name:
            raise SctconvError("name must not be empty")
        if not isinstance(self.fast, bool):
            raise SctconvError(f"fast must be true or false, not {self.fast!r}")
        if self.task not in TASKS:
            raise SctconvError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        expected = MODALITIES if self.task == "synthesis" else ("ct",)
        if self.modality not in expected:
            raise SctconvError(f"a {self.task} model's modality must be one of {', '.join(expected)}, "
                               f"not {self.modality!r}")
        self._check_lists()
        self._check_network()
        self.spacing = three(self.spacing, "spacing (mm)", integers=False)
        self.patch_size = three(self.patch_size, "patch_size", integers=True)
        if any(p % d for p, d in zip(self.patch_size, self.architecture.divisor)):
            raise SctconvError(f"patch size {self.patch_size} is not a multiple of {self.architecture.divisor}")

    def _check_lists(self) -> None:
        """Regions and class names are lists of text; training and metrics are mappings."""
        if not isinstance(self.regions, list) or any(r not in REGIONS for r in self.regions):
            raise SctconvError(f"regions must be a list of {', '.join(REGIONS)}, not {self.regions!r}")
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise SctconvError(f"classes must be a list of names, not {self.classes!r}")
        for key in ("training", "metrics"):
            if not isinstance(getattr(self, key), dict):
                raise SctconvError(f"{key} must be a mapping, not {getattr(self, key)!r}")

    def _check_network(self) -> None:
        """The architecture, channels and normalizations fit the task."""
        arch = self.architecture
        if not isinstance(arch, Architecture):
            raise SctconvError(f"architecture must be an Architecture, not {arch!r}")
        for key in ("input_normalization", "target_normalization"):
            if not isinstance(getattr(self, key), Normalization):
                raise SctconvError(f"{key} must be a Normalization, not {getattr(self, key)!r}")
        if self.target_normalization.scheme != "zscore-dataset":
            raise SctconvError("target_normalization must be zscore-dataset (it is inverted to get HU)")
        if arch.in_channels != 1:
            raise SctconvError(f"the network takes {arch.in_channels} input channels; sctconv gives it one image")
        if self.task == "segmentation" and len(self.classes) != arch.out_channels:
            raise SctconvError(f"{len(self.classes)} class names for {arch.out_channels} output channels")
        if self.task == "synthesis" and arch.out_channels != 1:
            raise SctconvError(f"a synthesis network has one output channel, not {arch.out_channels}")
        if self.target_normalization.anchor_hu is not None:
            raise SctconvError("target_normalization cannot have an anchor (it is inverted to get HU)")
        unanchored = replace(self.input_normalization, anchor_hu=None, air_anchor_hu=None)
        if arch.residual_output and unanchored != self.target_normalization:
            raise SctconvError("a residual-output network needs the same input and target normalization "
                               "(the input's anchors apart)")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        """A card from its JSON form; fields added since the first cards have defaults."""
        try:
            return cls(
                name=data["name"],
                modality=data["modality"],
                regions=data["regions"],
                architecture=Architecture.from_dict(data["architecture"]),
                spacing=data["spacing"],
                patch_size=data["patch_size"],
                input_normalization=Normalization(**data["input_normalization"]),
                target_normalization=Normalization(**data["target_normalization"]),
                description=data.get("description", ""),
                version=str(data.get("version", "1")),
                task=data.get("task", "synthesis"),
                classes=data.get("classes", []),
                fast=data.get("fast", False),
                training=data.get("training", {}),
                metrics=data.get("metrics", {}),
            )
        except KeyError as exc:
            raise SctconvError(f"the field {exc} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise SctconvError(f"malformed ({exc})") from None


@dataclass
class Model:
    """A loaded model: its card, its network (eval mode, on CPU), the folder it came from and the
    SHA-256 of the weights file's bytes that the network was loaded from."""

    card: ModelCard
    network: UNet | NnUNetNetwork  # sctconv's U-Net, or an nnU-Net network imported with `sctconv import-nnunet`
    folder: Path
    weights_sha256: str


def read_card(folder: Path) -> ModelCard:
    """Read and check the model card of a model folder."""
    path = folder / CARD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SctconvError(f"{folder} is not a model folder: {CARD_NAME} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SctconvError(f"cannot read model card {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SctconvError(f"model card {path} is not a JSON object")
    try:
        return ModelCard.from_dict(data)
    except SctconvError as exc:
        raise SctconvError(f"model card {path}: {exc}") from None


def load_model(folder: Path) -> Model:
    """Load a model folder; every failure is a one-line :class:`SctconvError`."""
    card = read_card(folder)
    network = build_network(card.architecture) if card.architecture.nnunet is None else imported_network(card)
    path = folder / WEIGHTS_NAME
    try:
        data = path.read_bytes()  # read once: the hash is of exactly the bytes loaded
        state = with_aliases(load_safetensors(data), weights_metadata(data))
    except FileNotFoundError:
        raise SctconvError(f"model {card.name}: weights file {path} is missing") from None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise SctconvError(f"model {card.name}: cannot read weights {path}: {exc}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SctconvError(f"model {card.name}: weights do not match the architecture in the card ({first})") from None
    network.eval()
    return Model(card=card, network=network, folder=folder, weights_sha256=hashlib.sha256(data).hexdigest())


ALIASES_KEY = "sctconv.aliases"
"""Weights metadata: names of a state dict that share a tensor with another name (an nnU-Net network's
decoder holds its encoder, and its conv blocks list their layers twice), stored once under that name."""


def without_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` with each shared tensor kept under its first name, and {other name: first name}."""
    kept: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()))
        if key in kept and tensor.numel():
            aliases[name] = kept[key]
        else:
            kept[key] = name
            unique[name] = tensor
    return unique, aliases


def weights_metadata(data: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes (its JSON header's ``__metadata__``)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}


def with_aliases(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """``state`` with the names :func:`without_aliases` left out, pointing at their tensors again."""
    aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    return state | {name: state[first] for name, first in aliases.items()}


def imported_network(card: ModelCard) -> NnUNetNetwork:
    """The network of an imported nnU-Net model (needs dynamic-network-architectures)."""
    from sctconv.nn.nnunet import build_imported

    return build_imported(card.architecture)


def save_model(folder: Path, card: ModelCard, network: torch.nn.Module, half: bool = False) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; with ``half``, floating-point
    weights are stored as float16 (half the size, for shipped models; loading casts them back).
    A ``model.onnx`` already there was exported from other weights, so it is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ONNX_NAME).unlink(missing_ok=True)
    state, aliases = without_aliases(network.state_dict())
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"name": card.name, "format": "sctconv"} | ({ALIASES_KEY: json.dumps(aliases)} if aliases else {})
    save_file(state, str(folder / WEIGHTS_NAME), metadata=metadata)
    (folder / CARD_NAME).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def available_models(directory: Path = SHIPPED_MODELS) -> list[tuple[Path, ModelCard]]:
    """(folder, card) of each model in ``directory``, sorted by folder name."""
    if not directory.is_dir():
        return []
    return [(p, read_card(p)) for p in sorted(directory.iterdir()) if (p / CARD_NAME).is_file()]


def resolve_model(name_or_path: str | None, modality: str, region: str | None,
                  directory: Path = SHIPPED_MODELS, fast: bool = False) -> Path:
    """The folder of the model to use.

    ``name_or_path`` may be a model folder or the name of a shipped model. When it is None, the
    shipped model for ``modality`` (and ``region``, when given) is chosen: the default one, or with
    ``fast`` the one whose card says it is the fast model.
    """
    if name_or_path:
        path = Path(name_or_path)
        if (path / CARD_NAME).is_file():
            return path
        if (directory / name_or_path / CARD_NAME).is_file():
            return directory / name_or_path
        names = ", ".join(p.name for p, _ in available_models(directory)) or "none"
        raise SctconvError(f"unknown model {name_or_path!r}: not a model folder, and not a shipped model ({names})")
    candidates = [p for p, c in available_models(directory) if c.task == "synthesis" and c.fast == fast
                  and c.modality == modality and (region is None or region in c.regions)]
    if not candidates:
        where = f" and region {region}" if region else ""
        raise SctconvError(f"no shipped {'fast ' if fast else ''}model for modality {modality}{where}; train one "
                           "or pass --model")
    return candidates[0]
