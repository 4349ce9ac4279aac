"""The conversion pipeline: read -> mask -> normalize -> predict -> back to HU -> write.

:func:`convert` wraps the inference core (:func:`sctconv.inference.synthesize.synthesize`: an image in, an sCT
on the same grid out) with reading, writing, the report and atomic output.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from rich.progress import Progress

from sctconv import __version__
from sctconv.io.dicom.read import is_dicom_path, read_series_header
from sctconv.io.dicom.write import SeriesOptions, write_sct_series
from sctconv.errors import SctconvError
from sctconv.io.images import InputVolume, read_mask, read_volume, write_image
from sctconv.convert.limits import check_input_size, check_step, check_workload
from sctconv.preprocessing.body_mask import body_mask
from sctconv.io.output_dir import atomic_output_dir, check_output_dir
from sctconv.nn.model import MODALITIES, ONNX_NAME, Model, ModelCard, canonical_region, load_model, resolve_model
from sctconv.inference.predict import (Backend, OnnxBackend, TorchBackend, check_window_settings, export_onnx,
                                       resolve_device)
from sctconv.inference.synthesize import synthesize
from sctconv.preprocessing.grid import check_voxels
from sctconv.convert.preview import save_preview
from sctconv.preprocessing.region import detect_region

BACKENDS = ("torch", "onnx")


@dataclass
class ConvertOptions:
    """What `sctconv convert` was asked to do."""

    modality: str | None = None  # "mr" or "cbct"; None = from DICOM, the model, or the intensities
    region: str | None = None
    model: str | None = None  # shipped model name or model folder
    mask: Path | None = None
    series: str | None = None  # DICOM series UID or number (of the input, else of `like`)
    allow_uneven: bool = False  # resample a DICOM series with missing slices / uneven spacing
    allow_large: bool = False  # run past the size guards of sctconv.convert.limits
    like: Path | None = None  # DICOM series whose patient, study and FoR a non-DICOM input's sCT joins
    step: float = 0.3
    blend: str = "mean"
    batch_size: int = 2
    device: str = "auto"
    backend: str = "torch"
    image_format: str = "nii.gz"  # or "mha"
    dicom: bool = True
    preview: bool = True
    overwrite: bool = False
    series_options: SeriesOptions = field(default_factory=SeriesOptions)


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


def describe_like(path: Path, header: Dataset) -> dict:
    """The report's record of the `--like` series."""
    return {"path": str(path), "series": str(header.get("SeriesInstanceUID", "")),
            "study": str(header.get("StudyInstanceUID", "")), "frame_of_reference": str(header.FrameOfReferenceUID)}


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


def hu_statistics(sct: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """Summary of the sCT inside the body."""
    values = sitk.GetArrayViewFromImage(sct)[sitk.GetArrayViewFromImage(mask) > 0]
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return {
        "voxels": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "max": float(values.max()), "p01": float(p1), "median": float(p50),
        "p99": float(p99), "fraction_above_300_hu": float(np.mean(values > 300)),
        "fraction_below_minus_500_hu": float(np.mean(values < -500)),
    }


def describe_geometry(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def versions() -> dict[str, str]:
    import onnxruntime
    import pydicom
    import torch

    return {"sctconv": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "SimpleITK": sitk.Version.VersionString(),
            "pydicom": pydicom.__version__, "numpy": np.__version__}


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


def shipped_model(modality: str, region: dict) -> Path:
    """The shipped model for ``modality`` and the region; for a detected region that no shipped model
    covers, the first for the modality (the coverage check then warns)."""
    try:
        return resolve_model(None, modality, region["value"])
    except SctconvError:
        if region["source"] == "option":
            raise
        return resolve_model(None, modality, None)


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


def convert(input_path: Path, out_dir: Path, options: ConvertOptions,
            progress: Progress | None = None) -> dict:
    """Convert one MR or CBCT into an sCT folder; returns the run report (also written as report.json).

    Everything is written into a hidden staging folder beside ``out_dir`` and renamed into place
    at the end, so a failure leaves no output behind.
    """
    inputs = (input_path, options.mask, options.like)
    check_output_dir(out_dir, options.overwrite, inputs)
    check_window_settings(options.step, options.blend, options.batch_size)
    if not options.allow_large:
        check_step(options.step)
    if options.backend not in BACKENDS:
        raise SctconvError(f"unknown backend {options.backend!r}; use torch or onnx")
    timings: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    like = read_like(input_path, options)
    volume = read_volume(input_path, options.series, options.allow_uneven)
    check_voxels(volume.image, f"input {input_path}")
    if not options.allow_large:
        check_input_size(volume.image, f"input {input_path}")
    region = canonical_region(options.region) if options.region else None
    model = load_model(resolve_model(options.model, "", None)) if options.model else None
    modality, modality_source = choose_modality(volume, options.modality, model.card if model else None)
    if model:
        check_model(model.card, modality, modality_source)
    lap("read")

    if options.mask:
        mask = read_mask(options.mask, volume.image)
        mask_source = str(options.mask)
    else:
        mask = body_mask(volume.image, modality)
        mask_source = "automatic"
        if not sitk.GetArrayViewFromImage(mask).any():
            raise SctconvError("no body found in the input (automatic mask is empty); pass --mask")
    lap("mask")

    region_record = choose_region(region, volume.image, mask, modality)
    lap("region")
    if model is None:
        model = load_model(shipped_model(modality, region_record))
        check_model(model.card, modality, modality_source)
    if not options.allow_large:
        check_workload(volume.image, model.card, options.step)
    warnings, region_notes = coverage_warnings(model.card, region_record, modality_source, volume.image)
    notes += region_notes

    device = resolve_device(options.device)
    with atomic_output_dir(out_dir, options.overwrite, inputs) as staging:
        backend, note = make_backend(model, options.backend, device, staging)
        notes += [note] if note else []
        lap("load_model")
        sct = synthesize(model.card, backend, volume.image, mask, options.step, options.blend,
                         options.batch_size, progress)
        lap("predict")
        staging.joinpath(ONNX_NAME).unlink(missing_ok=True)
        image_name = f"sct.{options.image_format}"
        sct = sitk.Round(sct)  # whole HU, so that the image file and the DICOM series hold the same values
        write_image(sitk.Cast(sct, sitk.sitkInt16), staging / image_name)
        write_image(mask, staging / f"mask.{options.image_format}")
        outputs = [image_name, f"mask.{options.image_format}"]
        if options.dicom:
            series_options = replace(
                options.series_options,
                model_name=options.series_options.model_name or model.card.name,
                model_version=options.series_options.model_version or model.card.version,
                software_version=__version__,
                series_description=options.series_options.series_description or f"sCT {model.card.name}")
            files = write_sct_series(sct, staging / "dicom", volume.source, series_options, like)
            outputs.append(f"dicom/ ({len(files)} files)")
        if options.preview:
            save_preview(volume.image, sct, mask, staging / "preview.png",
                         f"{input_path.name} -> sCT ({model.card.name})")
            outputs.append("preview.png")
        lap("write")
        report = {
            "sctconv": __version__,
            "disclaimer": "Research tool, not a medical device: verify every sCT before clinical use.",
            "input": {"path": str(input_path), "modality": modality, "modality_source": modality_source,
                      "dicom_series": volume.source.series_instance_uid if volume.source else None,
                      "resampled": asdict(volume.source.resampled) if volume.source and volume.source.resampled
                      else None,
                      "like": describe_like(options.like, like) if like is not None else None,
                      **describe_geometry(volume.image)},
            "model": {"name": model.card.name, "folder": str(model.folder), "version": model.card.version,
                      "regions": model.card.regions, "weights_sha256": model.weights_sha256,
                      "onnx_sha256": backend.sha256 if isinstance(backend, OnnxBackend) else None},
            "region": region_record,
            "mask": mask_source,
            "inference": {"backend": backend.name, "device": backend.device, "step": options.step,
                          "blend": options.blend, "batch_size": options.batch_size,
                          "patch_size": list(model.card.patch_size), "spacing_zyx": list(model.card.spacing)},
            "timings_s": timings,
            "hu_in_body": hu_statistics(sct, mask),
            "outputs": outputs + ["report.json"],
            "notes": notes,
            "warnings": warnings,
            "versions": versions(),
        }
        report["timings_s"]["total"] = round(sum(timings.values()), 3)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
