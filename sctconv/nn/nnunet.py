"""nnU-Net v2 trained models as frozen CT segmentation teachers (AFP loss, Dice/HD95 in evaluate).

An nnU-Net v2 trained model folder (``<Trainer>__<Plans>__<configuration>/``) holds ``dataset.json``,
``plans.json`` and ``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``). The paper's teacher,
a 7-class TotalSegmentator grouping, is such a model. :func:`load_nnunet_segmenter` accepts the model
folder (it takes the first fold with a checkpoint, ``fold_0`` normally; nnU-Net would ensemble all
folds), one ``fold_K`` folder in it, or a checkpoint file in one; ``checkpoint_final.pth`` is
preferred over ``checkpoint_best.pth``.

Network. Rebuilt with dynamic-network-architectures (the library nnU-Net itself uses) from the
plans' ``architecture`` block of the configuration the checkpoint was trained with
(``init_args['configuration']``, else ``3d_fullres``), with ``deep_supervision=False``, one input
channel per ``dataset.json`` channel and one output per label. Dotted names in the plans resolve
through an allow-list (:func:`_known_classes`), never through arbitrary imports. Old-style plans
(``UNet_class_name`` ...) are converted as nnU-Net converts them.

Weights. ``torch.load(weights_only=True)``, so no pickled code ever runs. nnU-Net stores numpy
scalars in the training log and ``_best_ema``, so exactly these globals are allowed besides
PyTorch's defaults (:data:`SAFE_GLOBALS`): numpy's scalar constructor (under its numpy 1 name
``numpy.core.multiarray.scalar`` and its numpy 2 name ``numpy._core.multiarray.scalar``),
``numpy.dtype``, and the float64 and float32 dtype classes. A checkpoint referring to anything else
is refused before it is unpickled. ``network_weights`` is loaded strictly.

Features (:meth:`NnUNetNetwork.features`), as the public AFP code returns them: the encoder's
skips except the two deepest (the bottleneck and the stage just above it), then each decoder stage's
output from coarse to fine, then the logits; 4 + 5 + 1 maps for the paper's 6-stage teacher.
``AFPLoss`` uses all but the logits by default, i.e. the reference's layers 0..8.

Preprocessing. nnU-Net's CTNormalization becomes ``Normalization("zscore-dataset")`` with the
dataset's foreground ``percentile_00_5``/``percentile_99_5`` as the clip range and its foreground
mean/std. nnU-Net transposes arrays by ``transpose_forward`` and states ``spacing`` and
``patch_size`` in that transposed order; the network wrapper transposes inside, so spacing, patch
size and divisor here are in sctconv's (z, y, x) order and AFP patches enter as they are.

Orientation. nnU-Net feeds SimpleITK's (z, y, x) array in the file's own voxel order, without
reorienting; :func:`sctconv.evaluation.evaluate.segment` reorients to LPS first, as sctconv does for every network
(and as the AFP patches are). For images stored in LPS order (identity direction: SynthRAD2025
``.mha`` files, DICOM series of axial scans) reorienting is a no-op, so the network sees what
nnU-Net would feed it; for other storage orders the teacher sees LPS, the order of those training
data, where nnU-Net would feed flipped or permuted axes. Other differences from
``nnUNetv2_predict``: one fold, no mirroring test-time augmentation, linear rather than cubic
resampling of the CT. Logits are blended with a Gaussian at step 0.5 and, as nnU-Net does,
resampled (linearly, one class at a time) onto the CT's grid before the argmax.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from sctconv.errors import SctconvError
from sctconv.nn.network import Architecture
from sctconv.nn.segmenter import Segmenter
from sctconv.preprocessing.normalize import Normalization

PLANS_NAME = "plans.json"
DATASET_NAME = "dataset.json"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
DEFAULT_CONFIGURATION = "3d_fullres"

T = TypeVar("T")

_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
SAFE_GLOBALS: list[Any] = [
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),  # checkpoints written with numpy 1
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),  # checkpoints written with numpy 2
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
]
"""What ``torch.load(weights_only=True)`` may build besides its defaults: numpy float scalars."""
_SAFE_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__name__}" for g in SAFE_GLOBALS}

_DNA_UNET = "dynamic_network_architectures.architectures.unet"
_TORCH_OPS = ("Conv3d", "InstanceNorm3d", "BatchNorm3d", "Dropout3d", "Dropout", "LeakyReLU", "ReLU", "PReLU",
              "GELU")
_OLD_STYLE_BLOCKS = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}


def _known_classes() -> tuple[dict[str, type], dict[str, type]]:
    """(networks, building blocks) that plans may name, by every dotted name nnU-Net writes for them."""
    try:
        from dynamic_network_architectures.architectures import unet
        from dynamic_network_architectures.building_blocks import residual
    except ImportError:
        raise SctconvError("nnU-Net models need dynamic-network-architectures: "
                           "pip install 'sctconv[nnunet]'") from None
    networks = {f"{_DNA_UNET}.{c.__name__}": c for c in (unet.PlainConvUNet, unet.ResidualEncoderUNet,
                                                          unet.ResidualUNet)}
    networks["dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"] = (
        unet.ResidualEncoderUNet)  # the module path of old plans
    blocks: dict[str, type] = {f"{residual.__name__}.{c.__name__}": c for c in (residual.BasicBlockD,
                                                                               residual.BottleneckD)}
    for name in _TORCH_OPS:
        op = getattr(nn, name)
        blocks[f"torch.nn.{name}"] = blocks[f"{op.__module__}.{name}"] = op
    return networks, blocks


class NnUNetNetwork(nn.Module):
    """A dynamic-network-architectures U-Net that takes and returns (B, C, z, y, x) in sctconv's order.

    ``forward`` gives the logits; ``features`` the maps described in the module docstring.
    ``divisor`` is the product of the strides per (z, y, x) axis.
    """

    def __init__(self, net: nn.Module, transpose_forward: tuple[int, int, int],
                 strides: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.net: Any = net  # dynamic-network-architectures has no type information
        self.arch: Architecture | None = None  # the card's, when the network was imported as an sctconv model
        backward = tuple(int(a) for a in np.argsort(transpose_forward))
        self.to_network = (0, 1, *(2 + a for a in transpose_forward))
        self.from_network = (0, 1, *(2 + a for a in backward))
        self.divisor = untranspose([int(t) for t in np.prod(np.array(strides), axis=0)], transpose_forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(self.to_network)).permute(self.from_network)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder skips but the two deepest, decoder stage outputs (coarse to fine), then the logits."""
        skips = self.net.encoder(x.permute(self.to_network))
        decoder = self.net.decoder
        maps = list(skips[:-2])
        y = skips[-1]
        for s, (up, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
            y = stage(torch.cat((up(y), skips[-(s + 2)]), 1))
            maps.append(y)
        maps.append(decoder.seg_layers[-1](y))
        return [m.permute(self.from_network) for m in maps]


@dataclass
class NnUNetModel:
    """A loaded nnU-Net model, with what preprocessing needs in sctconv's (z, y, x) order."""

    network: NnUNetNetwork
    folder: Path
    checkpoint: Path
    configuration: str
    classes: list[str]  # one name per output channel; the channel index is the label value
    spacing: tuple[float, float, float]  # mm
    patch_size: tuple[int, int, int]  # voxels
    normalization: Normalization


def nnunet_folder(path: Path) -> Path | None:
    """The nnU-Net model folder that ``path`` is or lies in (as ``fold_K`` or a checkpoint in it), else None."""
    if (path / PLANS_NAME).is_file():
        return path
    fold = path.parent if path.is_file() else path
    return fold.parent if fold.name.startswith("fold_") and (fold.parent / PLANS_NAME).is_file() else None


def _checkpoint_path(path: Path, folder: Path) -> Path:
    if path.is_file():
        return path
    folds = [path] if path != folder else sorted(p for p in folder.glob("fold_*") if p.is_dir())
    for fold in folds:
        for name in CHECKPOINT_NAMES:
            if (fold / name).is_file():
                return fold / name
    raise SctconvError(f"nnU-Net model {path} has no {' or '.join(CHECKPOINT_NAMES)} in a fold_K folder")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, unpickled with ``weights_only=True`` and :data:`SAFE_GLOBALS` only."""
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - _SAFE_NAMES
        if unsafe:
            raise SctconvError(f"checkpoint {path} refers to {', '.join(sorted(unsafe))}; only tensors, plain "
                               "data and numpy scalars are loaded")
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise SctconvError(f"cannot read checkpoint {path}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise SctconvError(f"checkpoint {path} has no network_weights; it is not an nnU-Net v2 checkpoint")
    return checkpoint


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SctconvError(f"cannot read {path}: {exc}") from None


def _configuration(plans: dict, name: str) -> dict:
    """A configuration of the plans with ``inherits_from`` resolved."""
    configurations = plans["configurations"]
    if name not in configurations:
        raise SctconvError(f"the plans have no configuration {name!r} (they have {', '.join(configurations)})")
    configuration = dict(configurations[name])
    parent = configuration.pop("inherits_from", None)
    return {**_configuration(plans, parent), **configuration} if parent else configuration


def _architecture(configuration: dict) -> dict:
    """The configuration's ``architecture`` block; old-style plans are converted as nnU-Net does."""
    if "architecture" in configuration:
        return configuration["architecture"]
    name = configuration["UNet_class_name"]
    if name not in _OLD_STYLE_BLOCKS:
        raise SctconvError(f"old-style plans with network {name!r}; only {', '.join(_OLD_STYLE_BLOCKS)} are known")
    stages = len(configuration["n_conv_per_stage_encoder"])
    return {
        "network_class_name": f"{_DNA_UNET}.{name}",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": [min(configuration["UNet_base_num_features"] * 2 ** i,
                                       configuration["unet_max_num_features"]) for i in range(stages)],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": configuration["conv_kernel_sizes"],
            "strides": configuration["pool_op_kernel_sizes"],
            _OLD_STYLE_BLOCKS[name]: configuration["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _build_network(architecture: dict, in_channels: int, classes: int) -> nn.Module:
    """The plans' network class, resolved through the allow-list, with deep supervision off."""
    networks, blocks = _known_classes()
    name = architecture["network_class_name"]
    if name not in networks:
        raise SctconvError(f"the plans ask for network {name!r}; known: {', '.join(sorted(networks))}")
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            if kwargs[key] not in blocks:
                raise SctconvError(f"the plans ask for {key} {kwargs[key]!r}, which is not a known building block")
            kwargs[key] = blocks[kwargs[key]]
    try:
        return networks[name](input_channels=in_channels, num_classes=classes, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise SctconvError(f"cannot build {name.rsplit('.', 1)[-1]} from the plans: {exc}") from None


def _per_axis(value: int | list[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    z, y, x = value
    return z, y, x


def untranspose(values: list[T], transpose_forward: tuple[int, int, int]) -> tuple[T, T, T]:
    """Per-axis values of the transposed array back in (z, y, x) order."""
    z, y, x = (values[transpose_forward.index(axis)] for axis in range(3))
    return z, y, x


def _classes(dataset: dict, where: Path) -> list[str]:
    labels = {name: value for name, value in dataset["labels"].items() if name != "ignore"}
    if any(not isinstance(v, int) for v in labels.values()):
        raise SctconvError(f"{where} is a region-based nnU-Net model; only one-label-per-voxel models are supported")
    if sorted(labels.values()) != list(range(len(labels))):
        raise SctconvError(f"{where}: the labels of dataset.json are not 0..N-1")
    return sorted(labels, key=labels.__getitem__)


@dataclass
class NnUNetFolder:
    """What an nnU-Net v2 model folder holds for one checkpoint: its plans' configuration and weights."""

    folder: Path
    checkpoint: Path
    configuration_name: str
    configuration: dict
    plans: dict
    dataset: dict
    weights: dict


def read_nnunet(path: Path) -> NnUNetFolder:
    """The configuration and weights of an nnU-Net v2 model (folder, fold folder or checkpoint)."""
    folder = nnunet_folder(path)
    if folder is None:
        raise SctconvError(f"{path} is not an nnU-Net model: no {PLANS_NAME} beside it")
    checkpoint_path = _checkpoint_path(path, folder)
    plans, dataset = read_json(folder / PLANS_NAME), read_json(folder / DATASET_NAME)
    checkpoint = read_checkpoint(checkpoint_path)
    init_args = checkpoint.get("init_args")
    name = init_args.get("configuration", DEFAULT_CONFIGURATION) if isinstance(init_args, dict) else (
        DEFAULT_CONFIGURATION)
    try:
        configuration = _configuration(plans, name)
    except (KeyError, TypeError) as exc:
        raise SctconvError(f"{folder}: plans.json is incomplete or malformed ({exc!r})") from None
    return NnUNetFolder(folder, checkpoint_path, name, configuration, plans, dataset, checkpoint["network_weights"])


def network_of(found: NnUNetFolder) -> tuple[NnUNetNetwork, dict]:
    """The network of the plans with the checkpoint's weights, and its spec for a model card
    (:func:`build_imported` rebuilds it from the spec)."""
    try:
        channels = found.dataset.get("channel_names", found.dataset.get("modality", {}))
        if len(channels) != 1:
            raise SctconvError(f"{found.folder} takes {len(channels)} input channels; sctconv gives it one image")
        if len(found.configuration["patch_size"]) != 3:
            raise SctconvError(f"{found.folder}: configuration {found.configuration_name} is not 3D")
        architecture = _architecture(found.configuration)
        transpose = _per_axis([int(a) for a in found.plans["transpose_forward"]])
        strides = [_per_axis(s) for s in architecture["arch_kwargs"]["strides"]]
        heads = [k for k in found.weights if k.startswith("decoder.seg_layers.") and k.endswith(".weight")]
        outputs = int(found.weights[max(heads, key=lambda k: int(k.split(".")[2]))].shape[0])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SctconvError(f"{found.folder}: plans.json or the checkpoint is incomplete or malformed "
                           f"({exc!r})") from None
    net = _build_network(architecture, 1, outputs)
    try:
        net.load_state_dict(found.weights, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()  # "Error(s) in loading state_dict for ...:", then the details
        raise SctconvError(f"checkpoint {found.checkpoint} does not match the network of its plans: "
                           f"{lines[-1].strip()[:300]}") from None
    network = NnUNetNetwork(net, transpose, strides)
    spec = {"architecture": architecture, "transpose_forward": list(transpose), "divisor": list(network.divisor),
            "outputs": outputs}
    return network, spec


def build_imported(arch: Architecture) -> NnUNetNetwork:
    """An imported nnU-Net network (weights not loaded) from the spec in its card's architecture."""
    spec = arch.nnunet
    if spec is None:
        raise SctconvError("the architecture is not an imported nnU-Net network")
    architecture = spec["architecture"]
    network = NnUNetNetwork(_build_network(architecture, arch.in_channels, arch.out_channels),
                            _per_axis([int(a) for a in spec["transpose_forward"]]),
                            [_per_axis(s) for s in architecture["arch_kwargs"]["strides"]])
    network.arch = arch
    return network


def load_nnunet(path: Path) -> NnUNetModel:
    """Load an nnU-Net v2 model (folder, fold folder or checkpoint) as a CT teacher; every failure is a
    one-line SctconvError."""
    found = read_nnunet(path)
    folder, configuration = found.folder, found.configuration
    if configuration.get("normalization_schemes") != ["CTNormalization"]:
        raise SctconvError(f"{folder} normalizes with {configuration.get('normalization_schemes')}; a CT teacher "
                           "needs nnU-Net's CTNormalization")
    try:
        classes = _classes(found.dataset, folder)
        stats = found.plans["foreground_intensity_properties_per_channel"]["0"]
        normalization = Normalization("zscore-dataset", (float(stats["percentile_00_5"]),
                                                         float(stats["percentile_99_5"])),
                                      float(stats["mean"]), float(stats["std"]))
        transpose = _per_axis([int(a) for a in found.plans["transpose_forward"]])
        spacing = untranspose([float(s) for s in configuration["spacing"]], transpose)
        patch_size = untranspose([int(p) for p in configuration["patch_size"]], transpose)
    except (KeyError, TypeError, ValueError) as exc:
        raise SctconvError(f"{folder}: plans.json or dataset.json is incomplete or malformed ({exc!r})") from None
    network, _ = network_of(found)
    if len(classes) != network.net.decoder.seg_layers[-1].out_channels:
        raise SctconvError(f"{folder}: dataset.json has {len(classes)} labels for a network of "
                           f"{network.net.decoder.seg_layers[-1].out_channels} outputs")
    return NnUNetModel(network=network, folder=folder, checkpoint=found.checkpoint,
                       configuration=found.configuration_name, classes=classes, spacing=spacing,
                       patch_size=patch_size, normalization=normalization)


def load_nnunet_segmenter(path: Path) -> Segmenter:
    """An nnU-Net v2 model (folder, fold folder or checkpoint) as a frozen segmenter."""
    model = load_nnunet(path)
    return Segmenter(network=model.network, classes=tuple(model.classes), normalization=model.normalization,
                     spacing=model.spacing, patch_size=model.patch_size, divisor=model.network.divisor, model=model)
