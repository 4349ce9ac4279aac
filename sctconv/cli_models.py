"""The model commands of the CLI: `sctconv models`, `export` and `import-nnunet`. Registered on the app in
:mod:`sctconv.cli`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
stdout = Console(width=None if sys.stdout.isatty() else 200)


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the model cards as JSON.")] = False,
) -> None:
    """List the shipped models."""
    from sctconv.nn.model import available_models

    found = available_models()
    if as_json:
        print(json.dumps([card.to_dict() for _, card in found], indent=2))
        return
    table = Table("name", "task", "input", "regions", "spacing (z,y,x) mm", "patch", "parameters",
                  "validation metrics")
    for _, card in found:
        metrics = card.metrics
        if "mae_hu" in metrics:
            water = "constant_water_mae_hu" in metrics  # cards before 2026-12-01: a constant soft-tissue CT
            baselines = (f"constant water {metrics['constant_water_mae_hu']:.1f}" if water else
                         f"constant soft tissue {metrics['constant_soft_tissue_mae_hu']:.1f}")
            if "input_cbct_mae_hu" in metrics:
                baselines += f", uncorrected CBCT {metrics['input_cbct_mae_hu']:.1f}"
            score = (f"MAE {metrics['mae_hu']:.1f} HU ({baselines}), PSNR {metrics['psnr_db']:.1f} dB, "
                     f"MS-SSIM {metrics['ms_ssim']:.3f}")
        else:
            score = f"mean Dice {metrics['mean_dice']:.3f}" if "mean_dice" in metrics else "-"
        table.add_row(card.name, card.task, card.modality, ", ".join(card.regions), str(card.spacing),
                      str(card.patch_size), f"{card.training.get('parameters', 0) / 1e6:.2f} M", score)
    stdout.print(table)


def export(
    model: Annotated[str, typer.Argument(help="Shipped model name or model folder.")],
    output: Annotated[Path | None, typer.Option(help="ONNX file (default: model.onnx in the model folder).")] = None,
) -> None:
    """Export a model to ONNX (for `convert --backend onnx`)."""
    from sctconv.inference.predict import export_onnx
    from sctconv.nn.model import ONNX_NAME, load_model, resolve_model

    loaded = load_model(resolve_model(model, "", None))
    path = output or loaded.folder / ONNX_NAME
    export_onnx(loaded, path)
    console.print(f"[green]exported[/] {loaded.card.name} to {path}")


def import_nnunet(
    results: Annotated[Path, typer.Argument(help="nnU-Net v2 results folder (Trainer__Plans__configuration), one "
                                                 "fold_K folder in it, or a checkpoint file.")],
    output: Annotated[Path, typer.Argument(help="The sctconv model folder to write (must not exist).")],
    modality: Annotated[str, typer.Option(help="What the model converts: mr or cbct.")],
    target_plans: Annotated[Path | None, typer.Option(help="plans.json of a dataset with the CT as image: the "
                                                           "output's mean and std.")] = None,
    target_mean: Annotated[float | None, typer.Option(help="The output z-score's mean (HU).")] = None,
    target_std: Annotated[float | None, typer.Option(help="The output z-score's std (HU).")] = None,
    region: Annotated[list[str] | None, typer.Option(help="A region it was trained for (repeat; default: "
                                                          "all three).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the dataset folder's).")] = None,
) -> None:
    """Turn an nnU-Net v2 synthesis model into an sctconv model folder."""
    from sctconv.errors import SctconvError
    from sctconv.nn.model import REGIONS, canonical_region
    from sctconv.nn.nnunet_import import import_nnunet as run_import
    from sctconv.nn.nnunet_import import target_normalization

    if output.exists():
        raise SctconvError(f"{output} exists; choose a new folder for the model")
    regions = [canonical_region(r) for r in region] if region else list(REGIONS)
    card = run_import(results, output, modality, regions, target_normalization(target_plans, target_mean, target_std),
                      name)
    console.print(f"[green]imported[/] {card.name} into {output}: spacing {card.spacing} mm, patch "
                  f"{card.patch_size}; use it with `sctconv convert --model {output}`", highlight=False)
