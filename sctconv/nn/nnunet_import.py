"""`sctconv import-nnunet`: an nnU-Net v2 synthesis model (nnsyn, nnUNet_translation, plain nnU-Net
networks trained for regression) as an sctconv model folder, so that it gets sctconv's DICOM handling,
QA and inference engine.

The network is rebuilt from the plans with dynamic-network-architectures (the allow-listed classes of
:mod:`sctconv.nn.nnunet`, checkpoint read without executing pickled code) and its weights are written
as ``model.safetensors``; the card's architecture keeps the plans' network block (kind ``nnunet``) so
that :func:`sctconv.nn.model.load_model` rebuilds it. Spacing and patch size come from the plans'
configuration, the input normalization from its ``normalization_schemes`` (CTNormalization: the
dataset's foreground clip range, mean and std; ZScoreNormalization: per image, inside the body).
The network's output is a CT in a z-score whose mean and std nnU-Net does not keep in the synthesis
model's folder (nnUNet_translation takes them from the plans of a dataset with the CT as its image):
they are given with ``target_plans`` (those plans) or explicitly. What cannot be mapped (several input
channels, several outputs, other normalizations, network classes outside the allow-list) is refused
with the reason.
"""

from __future__ import annotations

from pathlib import Path

from sctconv.errors import SctconvError
from sctconv.hu import HU_MAX, HU_MIN
from sctconv.nn.model import MODALITIES, ModelCard, save_model
from sctconv.nn.network import Architecture
from sctconv.nn.nnunet import NnUNetFolder, network_of, read_json, read_nnunet, untranspose
from sctconv.preprocessing.normalize import Normalization


def input_normalization(found: NnUNetFolder) -> Normalization:
    """The plans' normalization of the one input channel, as sctconv's."""
    schemes = found.configuration.get("normalization_schemes")
    if schemes == ["ZScoreNormalization"]:
        return Normalization("zscore-case")
    if schemes == ["CTNormalization"]:
        stats = found.plans["foreground_intensity_properties_per_channel"]["0"]
        return Normalization("zscore-dataset", (float(stats["percentile_00_5"]), float(stats["percentile_99_5"])),
                             float(stats["mean"]), float(stats["std"]))
    raise SctconvError(f"{found.folder} normalizes its input with {schemes}; sctconv maps ZScoreNormalization and "
                       "CTNormalization")


def target_normalization(target_plans: Path | None, mean: float | None, std: float | None) -> Normalization:
    """The z-score of the network's output CT: from the plans of a CT dataset, or given."""
    if target_plans is not None:
        stats = read_json(target_plans).get("foreground_intensity_properties_per_channel", {}).get("0")
        if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
            raise SctconvError(f"{target_plans} has no foreground_intensity_properties_per_channel/0 mean and std")
        mean, std = float(stats["mean"]), float(stats["std"])
    if mean is None or std is None:
        raise SctconvError("the output's CT z-score is not in an nnU-Net synthesis folder: give --target-plans "
                           "(the plans of a dataset with the CT as image) or --target-mean and --target-std (HU)")
    return Normalization("zscore-dataset", (HU_MIN, HU_MAX), mean, std)


def import_nnunet(path: Path, out: Path, modality: str, regions: list[str], target: Normalization,
                  name: str | None = None) -> ModelCard:
    """Write the sctconv model folder ``out`` for the nnU-Net synthesis model at ``path``; returns its card."""
    if modality not in MODALITIES:
        raise SctconvError(f"--modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    found = read_nnunet(path)
    network, spec = network_of(found)
    if spec["outputs"] != 1:
        raise SctconvError(f"{found.folder} has {spec['outputs']} outputs; a synthesis network has one (a "
                           "segmentation model is used with `evaluate --segmenter` or as an AFP --teacher instead)")
    transpose = tuple(spec["transpose_forward"])
    try:
        spacing = untranspose([float(s) for s in found.configuration["spacing"]], transpose)
        patch_size = untranspose([int(p) for p in found.configuration["patch_size"]], transpose)
    except (KeyError, TypeError, ValueError) as exc:
        raise SctconvError(f"{found.folder}: plans.json is incomplete or malformed ({exc!r})") from None
    card = ModelCard(
        name=name or found.folder.parent.name, modality=modality, regions=regions,
        architecture=Architecture(kind="nnunet", nnunet=spec), spacing=spacing, patch_size=patch_size,
        input_normalization=input_normalization(found), target_normalization=target,
        description=f"nnU-Net v2 synthesis model imported from {found.folder} ({found.configuration_name}, "
                    f"{found.checkpoint.parent.name}/{found.checkpoint.name}). Research use only; not a medical "
                    "device.",
        training={"imported_from": str(found.folder), "checkpoint": str(found.checkpoint),
                  "configuration": found.configuration_name})
    save_model(out, card, network)
    return card
