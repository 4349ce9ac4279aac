"""The `sctconv` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sctconv import __version__, cli_models, cli_node, failures
from sctconv.errors import SctconvError
from sctconv.failures import user_errors

if TYPE_CHECKING:
    from sctconv.convert.options import ConvertOptions

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Synthetic CT from MRI or CBCT for radiotherapy planning. "
                       "Research tool, not a medical device.")
console = Console(stderr=True)
stdout = Console(width=None if sys.stdout.isatty() else 200)


def _version(value: bool) -> None:
    if value:
        print(f"sctconv {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Synthetic CT from MRI or CBCT for radiotherapy planning (research tool, not a medical device)."""
    failures.show_tracebacks(debug)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    for noisy in ("torch.onnx", "torch._export", "onnxscript", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)


@app.command()
@user_errors
def convert(
    paths: Annotated[list[Path], typer.Argument(
        metavar="INPUT OUTPUT | INPUT... -o OUTDIR",
        help="MRI or CBCT (NIfTI, MHA/MHD, NRRD, a DICOM folder or zip, or one DICOM file: its series is read "
             "from its folder) and the output folder (created; must not exist unless --overwrite). With -o: "
             "any number of inputs, and CSV files of input,output rows.")],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Batch: each input into "
                                                    "OUTDIR/<case name>/, the summary in OUTDIR/batch*.json.")] = None,
    num_parts: Annotated[int, typer.Option(help="Batch: split the cases into this many parts (machines).")] = 1,
    part_id: Annotated[int, typer.Option(help="Batch: the part this run converts, 0 to --num-parts - 1.")] = 0,
    modality: Annotated[str | None, typer.Option(help="mr or cbct (default: DICOM Modality, else the model, "
                                                         "else guessed).")] = None,
    region: Annotated[str | None, typer.Option(help="head-neck, thorax, abdomen (or HN, TH, AB).")] = None,
    model: Annotated[str | None, typer.Option(help="Shipped model name or model folder.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Body mask (default: computed).")] = None,
    series: Annotated[str | None, typer.Option(help="DICOM series UID or number when a folder (the input's, "
                                                       "else --like's) holds several.")] = None,
    allow_uneven: Annotated[bool, typer.Option(help="Resample a DICOM series with missing slices or uneven spacing "
                                                    "onto a regular grid instead of refusing it.")] = False,
    like: Annotated[Path | None, typer.Option(help="DICOM series (folder, zip or file) whose patient, study and "
                                                      "Frame of Reference a non-DICOM input's sCT joins.")] = None,
    fast: Annotated[bool, typer.Option(help="The shipped fast model (coarser, smaller) at step 0.5.")] = False,
    step: Annotated[float | None, typer.Option(help="Window step as a fraction of the patch size (default 0.3, "
                                                    "the paper's; 0.5 with --fast).")] = None,
    allow_large: Annotated[bool, typer.Option(help="Run even where the input's extent or voxel count, the model "
                                                   "grid, the number of windows or --step is beyond what a real "
                                                   "scan needs (refused by default).")] = False,
    blend: Annotated[str, typer.Option(help="mean (the paper's) or gaussian.")] = "mean",
    batch_size: Annotated[int | None, typer.Option(help="Windows per network call (default: 2 on the CPU, "
                                                        "as many as fit on a GPU).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    tta: Annotated[int, typer.Option(help="Test-time augmentation: average over this many flips (1-8).")] = 1,
    ensemble: Annotated[list[str] | None, typer.Option(help="Another model to average with --model (repeat).")] = None,
    uncertainty: Annotated[bool, typer.Option(help="Write uncertainty.nii.gz: the per-voxel standard deviation "
                                                   "over TTA/ensemble members and overlapping windows.")] = False,
    uncertainty_threshold: Annotated[float, typer.Option(help="Flag a mean body uncertainty above this (HU).")] = 50,
    image_format: Annotated[str, typer.Option("--format", help="sct image format: nii.gz or mha.")] = "nii.gz",
    dicom: Annotated[bool, typer.Option("--dicom/--no-dicom", help="Write the sCT DICOM series.")] = True,
    series_description: Annotated[str | None, typer.Option(
        help="DICOM SeriesDescription (default 'sCT <model>').")] = None,
    series_number: Annotated[int | None, typer.Option(min=0, max=2**31 - 1, help="DICOM SeriesNumber (default: "
                                                         "the source's + 1000).")] = None,
    manufacturer: Annotated[str, typer.Option(help="DICOM Manufacturer of the sCT series.")] = "sctconv",
    manufacturer_model_name: Annotated[str, typer.Option(help="DICOM ManufacturerModelName; with --station-name, "
                                                              "what a planning system may match its CT-to-density "
                                                              "table by.")] = "sctconv",
    station_name: Annotated[str | None, typer.Option(help="DICOM StationName (default: none).")] = None,
    institution_name: Annotated[str | None, typer.Option(help="DICOM InstitutionName (default: the source's).")] = None,
    kvp: Annotated[float | None, typer.Option(min=0, help="DICOM KVP to write (default: empty).")] = None,
    patient_id: Annotated[str | None, typer.Option(help="PatientID for a non-DICOM input.")] = None,
    patient_name: Annotated[str | None, typer.Option(help="PatientName for a non-DICOM input.")] = None,
    synthetic_data_tag: Annotated[bool, typer.Option(help="Write SyntheticData (0008,001C) = YES.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Convert an MRI or CBCT into a synthetic CT (sct image, DICOM series, report.json, preview.png)."""
    from sctconv.convert.options import FAST_STEP, ConvertOptions
    from sctconv.io.dicom.write import SeriesOptions

    options = ConvertOptions(
        modality=modality, region=region, model=model, fast=fast, mask=mask, series=series, blend=blend,
        step=step if step is not None else (FAST_STEP if fast else 0.3),
        batch_size=batch_size, device=device, backend=backend, image_format=image_format, dicom=dicom, tta=tta,
        ensemble=tuple(ensemble or ()), uncertainty=uncertainty, uncertainty_threshold_hu=uncertainty_threshold,
        overwrite=overwrite, allow_uneven=allow_uneven, allow_large=allow_large, like=like,
        series_options=SeriesOptions(series_description=series_description or "", patient_id=patient_id,
                                     patient_name=patient_name, synthetic_data=synthetic_data_tag,
                                     series_number=series_number, manufacturer=manufacturer,
                                     manufacturer_model_name=manufacturer_model_name, station_name=station_name,
                                     institution_name=institution_name, kvp=None if kvp is None else str(kvp)))
    if output_dir is not None:
        _convert_batch(paths, output_dir, options, num_parts, part_id, quiet)
    else:
        _convert_one(paths, options, (num_parts, part_id) != (1, 0), quiet)


def _convert_one(paths: list[Path], options: ConvertOptions, sharded: bool, quiet: bool) -> None:
    """`convert INPUT OUTPUT`: one case, what it became on the console."""
    from sctconv.convert.pipeline import convert as run_convert
    from sctconv.convert.report import console_lines

    if len(paths) != 2 or sharded:
        raise SctconvError("give one INPUT and one OUTPUT folder, or several inputs with -o OUTDIR "
                           "(--num-parts and --part-id split a batch)")
    with _progress() as progress:
        report = run_convert(paths[0], paths[1], options, None if quiet else progress)
    for line in console_lines(report, paths[1]):
        console.print(line, highlight=False)


def _convert_batch(paths: list[Path], output_dir: Path, options: ConvertOptions, num_parts: int, part_id: int,
                   quiet: bool) -> None:
    """`convert -o OUTDIR`: the cases of ``paths`` (this part of them), a summary, exit 1 if any failed."""
    from sctconv.convert.batch import batch_cases, convert_batch, shard, summary_name, summary_table

    cases = shard(batch_cases(paths, output_dir), num_parts, part_id)
    summary = output_dir / summary_name(num_parts, part_id)
    with _progress() as progress:
        results = convert_batch(cases, summary, options, console, None if quiet else progress)
    console.print(summary_table(results))
    failed = sum(r.status == "failed" for r in results)
    if failed:
        raise SctconvError(f"{failed} of {len(results)} cases failed (reasons above and in {summary})")


# Commands kept in modules of their own: the DICOM node's and the models'.
app.command("serve")(user_errors(cli_node.serve))
app.command("send")(user_errors(cli_node.send))
app.command("models")(user_errors(cli_models.models))
app.command("export")(user_errors(cli_models.export))
app.command("import-nnunet")(user_errors(cli_models.import_nnunet))


@app.command()
@user_errors
def challenge(
    input: Annotated[Path, typer.Option(help="The grand-challenge input folder (images/mri or images/cbct, "
                                             "images/body, region.json).")] = Path("/input"),
    output: Annotated[Path, typer.Option(help="Where images/synthetic-ct/*.mha go.")] = Path("/output"),
    model: Annotated[str | None, typer.Option(help="Shipped model name or model folder (default: by task).")] = None,
) -> None:
    """SynthRAD2025 container entry point: every image of --input to an sCT .mha in --output."""
    from sctconv.convert.challenge import run_challenge

    for path in run_challenge(input, output, model):
        console.print(f"sCT written to {path}", highlight=False)


@app.command()
@user_errors
def series(
    path: Annotated[Path, typer.Argument(help="DICOM folder (searched recursively), file or zip.")],
) -> None:
    """List the DICOM image series in a folder (pick one with `convert --series`)."""
    from sctconv.io.dicom.read import list_series

    found = list_series(path)
    if not found:
        raise SctconvError(f"no DICOM image series under {path}")
    table = Table("number", "modality", "description", "slices", "rows x cols", "orientation", "SeriesInstanceUID")
    for item in found:
        table.add_row(str(item.series_number or ""), item.modality, item.description, str(item.slices),
                      f"{item.rows} x {item.columns}", item.orientation, item.series_instance_uid)
    stdout.print(table)


@app.command()
@user_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="sCT image, or a folder of predictions: <case>/sct.* (convert "
                                              "outputs) or <case>.mha / <case>.nii.gz.")],
    gt: Annotated[Path, typer.Argument(help="CT image, or a folder of cases <case>/ct.* (+ mask.*), the "
                                            "SynthRAD2025 layout.")],
    mask: Annotated[Path | None, typer.Option(help="Body mask; with folders, a folder of <case>.* or "
                                                      "<case>/mask.* (default: the case's mask.*, else the CT's "
                                                      "body, HU > -500).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout (null: not finite).")] = False,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the per-case metrics to this CSV.")] = None,
    segmenter: Annotated[Path | None, typer.Option(help="Segmentation model folder (a teacher) for Dice and "
                                                           "HD95 per structure.")] = None,
    device: Annotated[str, typer.Option(help="Segmentation device: auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Score sCTs against CTs as SynthRAD2025 does: MAE, PSNR, MS-SSIM (Dice and HD95 with --segmenter)."""
    from sctconv.evaluation.evaluate import (
        SUMMARY_METRICS,
        SUMMARY_STATS,
        convert_output_image,
        evaluate_files,
        evaluate_folders,
        json_safe,
        load_segmenter,
        summarize,
        write_csv,
    )

    model = load_segmenter(segmenter, device) if segmenter else None
    folders = pred.is_dir() and gt.is_dir() and convert_output_image(pred) is None
    if folders:
        with _progress() as progress:
            rows = evaluate_folders(pred, gt, mask, model, progress)
        summary = summarize(rows)
        result = {"cases": rows, "summary": summary}
    else:
        result = evaluate_files(pred, gt, mask, model)
        rows = [{"case": pred.name, **result}]
    if csv_file:
        write_csv(rows, csv_file)
    if as_json:
        print(json.dumps(json_safe(result), allow_nan=False))
        return
    metrics = [metric for metric in SUMMARY_METRICS if metric in rows[0]]
    table = Table("case", *metrics, *(["missed structures"] if model else []))
    for row in rows:
        missed = [", ".join(map(str, row["missing_classes"]))] if model else []
        table.add_row(row["case"], *(f"{row[metric]:.4g}" for metric in metrics), *missed)
    stdout.print(table)
    if folders:
        table = Table("", *metrics, title="summary")
        for stat in SUMMARY_STATS:
            table.add_row(stat, *(f"{summary[metric][stat]:.4g}" for metric in metrics))
        stdout.print(table)
    if csv_file:
        console.print(f"per-case metrics written to {csv_file}")


@app.command()
@user_errors
def simulate(
    ct: Annotated[Path, typer.Argument(help="A real CT in HU (NIfTI, MHA, NRRD or DICOM).")],
    output: Annotated[Path, typer.Argument(help="Output case folder: <modality>.mha, ct.mha, mask.mha.")],
    modality: Annotated[str, typer.Option(help="mr or cbct.")] = "mr",
    labels: Annotated[Path | None, typer.Option(help="Label map on the CT's grid (MR simulation).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Make a paired training case from a real CT: a simulated MRI or CBCT on the CT's grid."""
    from sctconv.simulation.simulate import write_simulated_case

    write_simulated_case(ct, output, modality, labels, seed, overwrite)
    console.print(f"[green]simulated {modality} case written to {output}[/]")


@app.command("plan")
@user_errors
def plan_command(
    data: Annotated[Path, typer.Option(help="Paired cases, as for sctconv train.")],
    modality: Annotated[str, typer.Option("--task", help="Input modality: mr or cbct.")] = "mr",
    region: Annotated[list[str] | None, typer.Option(help="Plan for these region(s) only; repeat for several "
                                                             "(default: all cases).")] = None,
    gpu_memory: Annotated[float, typer.Option(help="GPU memory per training process, GiB (nnU-Net plans for 8; "
                                                   "its L and XL presets for 24 and 40).")] = 8.0,
    network: Annotated[str, typer.Option(
        help="paper (nnResU-Net widths, 32..320 features) or small (CPU widths).")] = "paper",
    output: Annotated[Path, typer.Option(help="Plan file to write.")] = Path("plan.json"),
) -> None:
    """Fingerprint a dataset and plan spacing, network depth, patch and batch size (for train --plan)."""
    from sctconv.nn.model import MODALITIES, canonical_region
    from sctconv.training.data import discover_cases, select_regions
    from sctconv.training.plan import plan_document, write_plan
    from sctconv.training.prepare import fingerprint_cases

    if modality not in MODALITIES:
        raise SctconvError(f"--task must be mr or cbct, not {modality!r}")
    regions = [canonical_region(r) for r in region or []]
    cases = discover_cases(data, modality)
    cases = select_regions(cases, regions) if regions else cases
    console.print(f"fingerprinting {len(cases)} cases")
    plan = plan_document(fingerprint_cases(cases, modality), data, modality,
                         regions or sorted({c.region for c in cases if c.region}), gpu_memory, network)
    write_plan(plan, output)
    setup, reasons = plan["configuration"], plan["configuration"]["reasoning"]
    console.print(f"spacing {' x '.join(f'{v:.3g}' for v in setup['spacing'])} mm, patch "
                  f"{' x '.join(map(str, setup['patch_size']))}, batch {setup['batch_size']}, "
                  f"{reasons['stages']} stages, {reasons['parameters'] / 1e6:.1f} M parameters, "
                  f"estimated {reasons['estimated_memory_gib']} GiB of {gpu_memory:g}")
    console.print(f"[green]plan written to {output}[/]")


@app.command("prepare")
@user_errors
def prepare_command(
    data: Annotated[Path, typer.Option(help="Paired cases, as for sctconv train.")],
    output: Annotated[Path, typer.Option(
        help="Prepared dataset folder to write (dataset.json and one .npz per case).")],
    modality: Annotated[str, typer.Option(
        "--task", help="Input modality: mr or cbct; ct for CT-only teacher data.")] = "mr",
    region: Annotated[list[str], typer.Option(help="Region(s); repeat for several (as for train).")] = ["thorax"],
    preset: Annotated[str | None, typer.Option(help="small (the default) or paper: the spacing to prepare at.")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan from sctconv plan, instead of --preset.")] = None,
) -> None:
    """Read raw cases once into a prepared dataset (model grid, cropped to the body, no identifiers
    or paths) that sctconv train --data reads anywhere, without the raw images or SimpleITK."""
    from sctconv.nn.model import canonical_region
    from sctconv.training.data import discover_cases, select_regions
    from sctconv.training.prepare import prepare_dataset
    from sctconv.training.setup import network_setup

    if modality not in ("mr", "cbct", "ct"):
        raise SctconvError(f"--task must be mr, cbct or ct, not {modality!r}")
    if preset and plan:
        raise SctconvError("--preset and --plan are alternatives; give one")
    spacing = network_setup(preset or "small", plan, None if modality == "ct" else modality).spacing
    cases = select_regions(discover_cases(data, modality), [canonical_region(r) for r in region])
    prepared = prepare_dataset(cases, modality, spacing, output, console)
    size = sum(c.path.stat().st_size for c in prepared) / 2 ** 20
    console.print(f"[green]{len(prepared)} cases prepared at {' x '.join(f'{v:g}' for v in spacing)} mm in "
                  f"{output} ({size:.1f} MiB)[/]")


@app.command("train")
@user_errors
def train_command(
    data: Annotated[Path, typer.Option(help="Paired cases: <case>/{mr|cbct|input,ct,mask}.*, SynthRAD2025's "
                                            "Task1/ or Task2/ with HN, TH, AB region folders, or a prepared "
                                            "dataset (sctconv prepare).")],
    output: Annotated[Path, typer.Option(help="Model folder to write (checkpoints, curves, weights, card); "
                                              "an existing checkpoint there is resumed.")],
    modality: Annotated[str, typer.Option("--task", help="Input modality: mr or cbct.")] = "mr",
    region: Annotated[list[str], typer.Option(help="Region(s) the model is for; repeat for several. Cases in HN/TH/AB "
                                                   "folders of other regions are left out.")] = ["thorax"],
    stage: Annotated[str, typer.Option(help="l1 (stage 1) or afp (stage 2: fine-tune --init with --teacher).")] = "l1",
    init: Annotated[Path | None, typer.Option(help="afp: the stage-1 model folder to fine-tune; l1: a model "
                                                     "folder to continue training (its network and "
                                                     "normalization).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="afp: the CT segmentation model folder.")] = None,
    afp_l1_weight: Annotated[float, typer.Option(
        help="afp: weight of the L1 term (public code 0.5, paper 5.0).")] = 0.5,
    bone_weight: Annotated[float, typer.Option(help="l1: extra L1 weight on bone (CT above 250 HU); 4 makes a bone "
                                                    "voxel count 5 times.")] = 0.0,
    bone_fraction: Annotated[float, typer.Option(help="Share of the patches centred on a bone voxel of the CT "
                                                      "(taken from the 2/3 centred in the body).")] = 0.0,
    region_power: Annotated[float, typer.Option(help="A region's share of the drawn patches grows as its case "
                                                     "count ** POWER: 0 every region equally often, 1 every case "
                                                     "equally often, 0.5 by the square root.")] = 0.0,
    name: Annotated[str | None, typer.Option(help="Model name (default: the output folder's name).")] = None,
    preset: Annotated[str | None, typer.Option(help="small (the default), cpu (11 M, 2 mm; the shipped models) or "
                                                       "paper (~122 M parameters).")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan from sctconv plan, instead of --preset.")] = None,
    val_data: Annotated[Path | None, typer.Option(help="Held-out cases (default: 20% of --data).")] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on fold K (0..folds-1) of a fixed split of --data "
                                                     "instead of 20%.")] = None,
    folds: Annotated[int, typer.Option(help="Number of folds for --fold.")] = 5,
    epochs: Annotated[int, typer.Option(help="Epochs (paper: 1000-1500 for l1, 500 for afp).")] = 1000,
    iterations: Annotated[int, typer.Option(help="Iterations per epoch.")] = 250,
    batch_size: Annotated[int | None, typer.Option(help="Patches per step and process (default: the preset's "
                                                           "or plan's).")] = None,
    lr: Annotated[float | None, typer.Option(
        help="Initial learning rate, poly decay (default 1e-2; afp 1e-3).")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    cache: Annotated[Path | None, typer.Option(help="Where raw cases are prepared (default: <output>/cache; "
                                                       "a prepared dataset that --data can name later).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Export model.onnx at the end.")] = True,
    simulate_input: Annotated[bool, typer.Option(help="MR: --data holds CTs (<case>/ct.*); each case's MR is made "
                                                      "by the domain-randomised simulator, anew during training.")
                              ] = False,
    bf16: Annotated[bool, typer.Option(help="CPU: bf16 autocast (2-3x faster where the CPU has AMX or "
                                            "AVX512-BF16; see benchmarks/RESULTS.md).")] = False,
    description: Annotated[str, typer.Option(help="The model card's description: what the data are, how inputs "
                                                  "were made (simulator, literature), what the model is for.")] = "",
) -> None:
    """Train a synthesis model: stage 1 (L1) or stage 2 (AFP fine-tuning), as in the paper.

    On several GPUs, one process per GPU (DistributedDataParallel):
    torchrun --standalone --nproc_per_node N -m sctconv train ...
    """
    if stage not in ("l1", "afp"):
        raise SctconvError(f"--stage must be l1 or afp, not {stage!r} (teachers: sctconv train-teacher)")
    _run_training(data=data, out=output, modality=modality, name=name or output.name, region=region,
                  stage=stage, preset=preset, plan=plan, init=init, teacher=teacher, afp_l1_weight=afp_l1_weight,
                  bone_weight=bone_weight, bone_fraction=bone_fraction, region_power=region_power, val_data=val_data,
                  fold=fold, folds=folds, epochs=epochs, iterations=iterations, batch_size=batch_size,
                  initial_lr=lr if lr is not None else (1e-3 if stage == "afp" else 1e-2), val_every=val_every,
                  seed=seed, device=device, cache=cache, onnx=onnx, simulate_input=simulate_input, bf16=bf16,
                  description=description)


@app.command("train-teacher")
@user_errors
def train_teacher_command(
    data: Annotated[Path, typer.Option(help="Cases with ct.* (and optional mask.*, labels.* grouped as "
                                            "sctconv.nn.teacher.GROUPS); HU tissue classes when no labels.")],
    output: Annotated[Path, typer.Option(help="Model folder to write.")],
    region: Annotated[list[str], typer.Option(help="Region(s); repeat for several.")] = ["thorax"],
    name: Annotated[str | None, typer.Option(help="Model name (default: the output folder's name).")] = None,
    preset: Annotated[str | None, typer.Option(help="small (the default) or paper.")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan from sctconv plan, instead of --preset.")] = None,
    val_data: Annotated[Path | None, typer.Option(help="Held-out cases (default: 20% of --data).")] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on fold K of a fixed split of --data.")] = None,
    folds: Annotated[int, typer.Option(help="Number of folds for --fold.")] = 5,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 300,
    iterations: Annotated[int, typer.Option(help="Iterations per epoch.")] = 250,
    lr: Annotated[float, typer.Option(help="Initial learning rate.")] = 1e-2,
    val_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache.")] = None,
) -> None:
    """Train a compact CT segmentation network: the AFP teacher and the evaluation segmenter (torchrun works
    as for train)."""
    _run_training(data=data, out=output, modality="ct", name=name or output.name, region=region, stage="teacher",
                  preset=preset, plan=plan, val_data=val_data, fold=fold, folds=folds, epochs=epochs,
                  iterations=iterations, initial_lr=lr,
                  val_every=val_every, seed=seed, device=device, cache=cache)


def _run_training(region: list[str], preset: str | None, plan: Path | None, **settings) -> None:
    from sctconv.nn.model import canonical_region
    from sctconv.training.config import TrainConfig
    from sctconv.training.setup import check_preset
    from sctconv.training.train import train

    if preset and plan:
        raise SctconvError("--preset and --plan are alternatives; give one")
    train(TrainConfig(regions=[canonical_region(r) for r in region], preset=check_preset(preset or "small"), plan=plan,
                      **settings), console)
