"""Model folders: weights in safetensors plus a JSON model card with everything inference needs.

A model folder holds ``model.safetensors`` and ``model.json``. The card records the architecture,
the voxel spacing and patch size the network works at, how inputs are normalized (with the
dataset statistics where the scheme needs them), how outputs go back to HU, the training data and
the measured metrics. Weights are read with safetensors, so loading a model never runs pickled code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sctconv.errors import SctconvError
from sctconv.network import Architecture, UNet

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Models shipped with the project (one folder per model)."""

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
REGIONS = ("head-neck", "thorax", "abdomen")
REGION_ALIASES = {"hn": "head-neck", "th": "thorax", "ab": "abdomen"}
MODALITIES = ("mr", "cbct")


def canonical_region(name: str) -> str:
    """'HN' / 'th' / 'Abdomen' → 'head-neck' / 'thorax' / 'abdomen'."""
    key = name.strip().lower()
    region = REGION_ALIASES.get(key, key)
    if region not in REGIONS:
        raise SctconvError(f"unknown region {name!r}; use one of {', '.join(REGIONS)} (or HN, TH, AB)")
    return region


@dataclass
class Normalization:
    """Intensity normalization of a volume.

    ``scheme`` is ``"zscore-case"`` (per-case mean/std over the body, the paper's MRI scheme) or
    ``"zscore-dataset"`` (clip to ``clip``, then subtract the dataset ``mean`` and divide by
    ``std``: the paper's CT and CBCT scheme).
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("zscore-case", "zscore-dataset"):
            raise SctconvError(f"unknown normalization scheme {self.scheme!r}")
        if self.scheme == "zscore-dataset" and (self.mean is None or not self.std):
            raise SctconvError("dataset z-score normalization needs a mean and a non-zero std")


@dataclass
class ModelCard:
    """Everything inference needs to run a model, plus where it came from and how good it is."""

    name: str
    modality: str  # input modality: "mr" or "cbct" (synthesis), "ct" (segmentation)
    regions: list[str]
    architecture: Architecture
    spacing: tuple[float, float, float]  # mm, (z, y, x)
    patch_size: tuple[int, int, int]  # voxels, (z, y, x)
    input_normalization: Normalization
    target_normalization: Normalization  # CT: always "zscore-dataset"; inverted to get HU
    description: str = ""
    version: str = "1"
    task: str = "synthesis"  # or "segmentation" (a CT segmentation "teacher")
    classes: list[str] = field(default_factory=list)  # segmentation: one name per output channel
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        try:
            return cls(
                name=data["name"],
                modality=data["modality"],
                regions=list(data["regions"]),
                architecture=Architecture.from_dict(data["architecture"]),
                spacing=tuple(float(v) for v in data["spacing"]),
                patch_size=tuple(int(v) for v in data["patch_size"]),
                input_normalization=Normalization(**data["input_normalization"]),
                target_normalization=Normalization(**data["target_normalization"]),
                description=data.get("description", ""),
                version=str(data.get("version", "1")),
                task=data.get("task", "synthesis"),
                classes=list(data.get("classes", [])),
                training=data.get("training", {}),
                metrics=data.get("metrics", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SctconvError(f"model card is incomplete or malformed: {exc}") from exc


@dataclass
class Model:
    """A loaded model: its card, its network (eval mode, on CPU) and the folder it came from."""

    card: ModelCard
    network: UNet
    folder: Path


def read_card(folder: Path) -> ModelCard:
    """Read and check the model card of a model folder."""
    path = folder / CARD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SctconvError(f"{folder} is not a model folder: {CARD_NAME} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SctconvError(f"cannot read model card {path}: {exc}") from None
    card = ModelCard.from_dict(data)
    if card.task == "synthesis" and card.modality not in MODALITIES:
        raise SctconvError(f"model card {path}: modality must be one of {MODALITIES}, not {card.modality!r}")
    if card.task == "segmentation" and len(card.classes) != card.architecture.out_channels:
        raise SctconvError(f"model card {path}: {len(card.classes)} class names for "
                           f"{card.architecture.out_channels} output channels")
    if card.task not in ("synthesis", "segmentation"):
        raise SctconvError(f"model card {path}: unknown task {card.task!r}")
    if any(p % d for p, d in zip(card.patch_size, card.architecture.divisor)):
        raise SctconvError(f"model card {path}: patch size {card.patch_size} is not a multiple of {card.architecture.divisor}")
    return card


def load_model(folder: Path) -> Model:
    """Load a model folder; every failure is a one-line :class:`SctconvError`."""
    card = read_card(folder)
    network = UNet(card.architecture)
    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise SctconvError(f"model {card.name}: weights file {path} is missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise SctconvError(f"model {card.name}: cannot read weights {path}: {exc}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SctconvError(f"model {card.name}: weights do not match the architecture in the card ({first})") from None
    network.eval()
    return Model(card=card, network=network, folder=folder)


def save_model(folder: Path, card: ModelCard, network: torch.nn.Module, half: bool = False) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; with ``half``, floating-point
    weights are stored as float16 (half the size, for shipped models; loading casts them back)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"name": card.name, "format": "sctconv"})
    (folder / CARD_NAME).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def available_models(directory: Path = WEIGHTS_DIR) -> list[tuple[Path, ModelCard]]:
    """(folder, card) of each model in ``directory``, sorted by folder name."""
    if not directory.is_dir():
        return []
    return [(p, read_card(p)) for p in sorted(directory.iterdir()) if (p / CARD_NAME).is_file()]


def resolve_model(name_or_path: str | None, modality: str, region: str | None,
                  directory: Path = WEIGHTS_DIR) -> Path:
    """The folder of the model to use.

    ``name_or_path`` may be a model folder or the name of a shipped model. When it is None, the
    shipped model for ``modality`` (and ``region``, when given) is chosen.
    """
    if name_or_path:
        path = Path(name_or_path)
        if (path / CARD_NAME).is_file():
            return path
        if (directory / name_or_path / CARD_NAME).is_file():
            return directory / name_or_path
        names = ", ".join(p.name for p, _ in available_models(directory)) or "none"
        raise SctconvError(f"unknown model {name_or_path!r}: not a model folder, and not a shipped model ({names})")
    candidates = [p for p, c in available_models(directory) if c.task == "synthesis"
                  and c.modality == modality and (region is None or region in c.regions)]
    if not candidates:
        where = f" and region {region}" if region else ""
        raise SctconvError(f"no shipped model for modality {modality}{where}; train one or pass --model")
    return candidates[0]
