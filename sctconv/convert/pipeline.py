"""The conversion pipeline: read -> mask -> normalize -> predict -> back to HU -> write.

:func:`convert` wraps the inference core (:func:`sctconv.inference.synthesize.synthesize`: an image in, an sCT
on the same grid out) with reading, writing, the report and atomic output.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from rich.progress import Progress

from sctconv.convert.limits import check_input_size, check_workload
from sctconv.convert.options import ConvertOptions
from sctconv.convert.report import make_report, write_report
from sctconv.convert.writers import Conversion, output_writers
from sctconv.errors import SctconvError
from sctconv.inference.predict import Backend, OnnxBackend, TorchBackend, export_onnx, resolve_device
from sctconv.inference.synthesize import Member, synthesize
from sctconv.io.dicom.read import is_dicom_path, read_series_header
from sctconv.io.images import InputVolume, read_mask, read_volume
from sctconv.io.output_dir import atomic_output_dir, check_output_dir
from sctconv.nn.model import MODALITIES, ONNX_NAME, Model, ModelCard, canonical_region, load_model, resolve_model
from sctconv.preprocessing.body_mask import body_mask
from sctconv.preprocessing.grid import check_voxels
from sctconv.preprocessing.region import detect_region

__all__ = ["ConvertOptions", "convert", "guess_modality"]


def guess_modality(image: sitk.Image) -> str:
    """'cbct' when the volume looks like it is in HU (much air near -1000), else 'mr'."""
    array = sitk.GetArrayViewFromImage(image)
    air_fraction = float(np.mean(array < -500))
    return "cbct" if array.min() < -900 and air_fraction > 0.05 else "mr"


def choose_modality(volume: InputVolume, asked: str | None, model_card: ModelCard | None) -> tuple[str, str]:
    """The input modality and where it came from; a contradiction is an error."""
    dicom = volume.dicom_modality
    from_dicom = {"MR": "mr", "CT": "cbct"}.get(dicom) if dicom else None
    if dicom and from_dicom is None:
        raise SctconvError(f"the DICOM series has modality {dicom}; sctconv converts MR or CBCT/CT series")
    if asked is not None and asked not in MODALITIES:
        raise SctconvError(f"unknown modality {asked!r}; use mr or cbct")
    if asked and from_dicom and asked != from_dicom:
        raise SctconvError(f"--modality {asked} contradicts the DICOM series, whose Modality is {dicom}")
    if asked:
        return asked, "option"
    if from_dicom:
        return from_dicom, f"DICOM Modality {dicom}"
    if model_card:
        return model_card.modality, f"model {model_card.name}"
    return guess_modality(volume.image), "guessed from the intensities (set --modality to be sure)"


def read_like(input_path: Path, options: ConvertOptions) -> Dataset | None:
    """The header of the `--like` series that a non-DICOM input's sCT joins (patient, study and
    Frame of Reference), or None without `--like`; contradictory options are errors."""
    if options.like is None:
        return None
    if is_dicom_path(input_path):
        raise SctconvError("--like is for a non-DICOM input; a DICOM input already gives the sCT its "
                           "patient, study and Frame of Reference")
    if options.series_options.patient_id or options.series_options.patient_name:
        raise SctconvError("--patient-id/--patient-name make a new patient; with --like the sCT takes the "
                           "patient of the --like series")
    header = read_series_header(options.like, options.series)
    if not str(header.get("FrameOfReferenceUID", "") or ""):
        raise SctconvError(f"the --like series {header.get('SeriesInstanceUID', '')} in {options.like} has no "
                           "FrameOfReferenceUID to attach the sCT to")
    return header


def make_members(ensemble: list[Model], backend: str, device: str, work_dir: Path, notes: list[str]) -> list[Member]:
    """A backend for each model of the ensemble; the notes of ONNX files exported for this run go to ``notes``."""
    members = []
    for model in ensemble:
        runner, note = make_backend(model, backend, device, work_dir)
        notes += [note] if note else []
        members.append(Member(model.card, runner))
    return members


def make_backend(model: Model, backend: str, device: str, work_dir: Path) -> tuple[Backend, str | None]:
    """The backend asked for, and a note when the ONNX file had to be exported first."""
    if backend == "torch":
        return TorchBackend(model.network, device), None
    path = model.folder / ONNX_NAME
    note = None
    if not path.is_file():
        path = work_dir / ONNX_NAME
        export_onnx(model, path)
        note = f"{ONNX_NAME} not in the model folder; exported for this run (run `sctconv export` to keep it)"
    return OnnxBackend(model, path, device), note


def load_cached(folder: Path, models: dict[Path, Model] | None) -> Model:
    """``folder``'s model; loaded once when ``models`` keeps the loaded ones."""
    if models is None:
        return load_model(folder)
    key = folder.resolve()
    if key not in models:
        models[key] = load_model(folder)
    return models[key]


SECONDARY_REGION_MM = 150.0
"""A region that is not the detected one but fills this much of the body's length is warned about too."""


def check_model(card: ModelCard, modality: str, modality_source: str) -> None:
    """A synthesis model for the input's modality, or an error."""
    if card.task != "synthesis":
        raise SctconvError(f"model {card.name} is a {card.task} model, not a synthesis model")
    if card.modality != modality:
        raise SctconvError(f"model {card.name} converts {card.modality} images, but the input is "
                           f"{modality} ({modality_source})")


def choose_region(asked: str | None, image: sitk.Image, mask: sitk.Image, modality: str) -> dict:
    """The report's record of the body region: ``value``, ``source`` ("option" or "detected") and the
    detection's ``evidence``. The region is detected even when ``--region`` gives it, to cross-check."""
    if not sitk.GetArrayViewFromImage(mask).any():  # an empty --mask: nothing to measure
        return {"value": asked, "source": "option" if asked else "unknown", "evidence": None}
    detected, evidence = detect_region(image, mask, modality)
    if asked:
        return {"value": asked, "source": "option", "detected": detected, "evidence": evidence}
    return {"value": detected, "source": "detected", "evidence": evidence}


def shipped_model(modality: str, region: dict, fast: bool = False) -> Path:
    """The shipped (``fast``) model for ``modality`` and the region; for a detected region that no shipped
    model covers, the first for the modality (the coverage check then warns)."""
    try:
        return resolve_model(None, modality, region["value"], fast=fast)
    except SctconvError:
        if region["source"] == "option":
            raise
        return resolve_model(None, modality, None, fast=fast)


def coverage_warnings(card: ModelCard, region: dict, modality_source: str,
                      image: sitk.Image) -> tuple[list[str], list[str]]:
    """(warnings, notes) on whether the model's card covers the input's region and modality."""
    warnings: list[str] = []
    notes: list[str] = []
    value, evidence = region["value"], region.get("evidence") or {}
    detected = region["source"] == "detected"
    trained = ", ".join(card.regions) or "no region"
    if value and value not in card.regions:
        warnings.append(f"model {card.name} was trained on {trained}, not on {value} "
                        f"({'detected' if detected else '--region'}); its sCT there is untested")
    if detected and evidence.get("confidence") == "low":
        warnings.append(f"the body region could not be measured ({evidence['rule']}); pass --region to say "
                        "which it is")
    if detected:
        lengths = evidence.get("lengths_mm", {})
        others = [f"{lengths[key]:.0f} mm of {name}" for key, name in (("thorax", "thorax"), ("abdomen", "abdomen"))
                  if name != value and name not in card.regions and lengths.get(key, 0.0) >= SECONDARY_REGION_MM]
        if others:
            warnings.append(f"the field of view also holds {' and '.join(others)}, which model {card.name} was "
                            "not trained on")
    elif region.get("detected") and region["detected"] != value and evidence.get("confidence") == "high":
        notes.append(f"--region {value}, but the volume looks like {region['detected']} ({evidence['rule']})")
    if modality_source.startswith("model "):  # nothing said what the input is: the model's modality was assumed
        looks = guess_modality(image)
        if looks != card.modality:
            warnings.append(f"the input's intensities look like {looks} ({'HU' if looks == 'cbct' else 'not HU'}), "
                            f"but model {card.name} converts {card.modality} images; pass --modality to say "
                            "which it is")
    return warnings, notes


def make_mask(image: sitk.Image, mask_path: Path | None, modality: str) -> tuple[sitk.Image, str]:
    """The body mask (from ``mask_path``, else computed) and where it came from; an empty automatic mask
    is an error."""
    if mask_path:
        return read_mask(mask_path, image), str(mask_path)
    mask = body_mask(image, modality)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise SctconvError("no body found in the input (automatic mask is empty); pass --mask")
    return mask, "automatic"


class Stopwatch:
    """Seconds per stage of a conversion, for the report."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Record the time since the previous lap as ``stage``."""
        now = time.perf_counter()
        self.timings[stage] = round(now - self._clock, 3)
        self._clock = now


def convert(input_path: Path, out_dir: Path, options: ConvertOptions,
            progress: Progress | None = None, models: dict[Path, Model] | None = None) -> dict:
    """Convert one MR or CBCT into an sCT folder; returns the run report (also written as report.json).

    Read -> mask -> choose the model -> synthesize (normalize, predict, back to HU) -> write each output.
    Everything is written into a hidden staging folder beside ``out_dir`` and renamed into place
    at the end, so a failure leaves no output behind. ``models`` keeps the models loaded across the
    cases of a batch.
    """
    options.check()
    inputs = (input_path, options.mask, options.like)
    check_output_dir(out_dir, options.overwrite, inputs)
    stopwatch = Stopwatch()
    like = read_like(input_path, options)
    volume = read_volume(input_path, options.series, options.allow_uneven)
    check_voxels(volume.image, f"input {input_path}")
    if not options.allow_large:
        check_input_size(volume.image, f"input {input_path}")
    region = canonical_region(options.region) if options.region else None
    model = load_cached(resolve_model(options.model, "", None), models) if options.model else None
    modality, modality_source = choose_modality(volume, options.modality, model.card if model else None)
    if model:
        check_model(model.card, modality, modality_source)
    stopwatch.lap("read")

    mask, mask_source = make_mask(volume.image, options.mask, modality)
    stopwatch.lap("mask")
    region_record = choose_region(region, volume.image, mask, modality)
    stopwatch.lap("region")
    if model is None:
        model = load_cached(shipped_model(modality, region_record, options.fast), models)
        check_model(model.card, modality, modality_source)
    if not options.allow_large:
        check_workload(volume.image, model.card, options.step)
    warnings, notes = coverage_warnings(model.card, region_record, modality_source, volume.image)

    ensemble = [model] + [load_cached(resolve_model(name, "", None), models) for name in options.ensemble]
    for extra in ensemble[1:]:
        check_model(extra.card, modality, modality_source)
    device = resolve_device(options.device)
    with atomic_output_dir(out_dir, options.overwrite, inputs) as staging:
        members = make_members(ensemble, options.backend, device, staging, notes)
        stopwatch.lap("load_model")
        synthesis = synthesize(members, volume.image, mask, options.step, options.blend, options.batch_size,
                               progress, options.tta, options.uncertainty)
        stopwatch.lap("predict")
        staging.joinpath(ONNX_NAME).unlink(missing_ok=True)
        # whole HU, so that the image file and the DICOM series hold the same values
        conversion = Conversion(input_path, volume, modality, modality_source, mask, mask_source, region_record,
                                model, sitk.Round(synthesis.sct), like, synthesis.uncertainty, synthesis.anchor_maps)
        outputs = [writer.write(conversion, staging) for writer in output_writers(options)]
        stopwatch.lap("write")
        report = make_report(conversion, options, members, outputs, stopwatch.timings, notes, warnings)
        write_report(report, staging)
    return report
