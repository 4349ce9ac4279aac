"""``report.json``: the record of a conversion (input, model, region, inference settings, timings, HU in
the body, outputs, notes, warnings, versions)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from rich.markup import escape
from scipy import ndimage

from sctconv import __version__
from sctconv.convert.options import ConvertOptions
from sctconv.convert.writers import Conversion
from sctconv.hu import BONE_HU
from sctconv.inference.predict import OnnxBackend
from sctconv.inference.synthesize import Member
from sctconv.preprocessing.normalize import SCALE_LIMITS

REPORT_NAME = "report.json"
DISCLAIMER = "Research tool, not a medical device: verify every sCT before clinical use."


def make_report(conversion: Conversion, options: ConvertOptions, members: list[Member], outputs: list[str],
                timings: dict[str, float], notes: list[str], warnings: list[str]) -> dict:
    """The report of ``conversion``; ``members`` the networks that ran (the first is the model's),
    ``outputs`` the writers' entries, ``timings`` seconds per stage."""
    volume, model, backend = conversion.volume, conversion.model, members[0].backend
    uncertainty = uncertainty_summary(conversion, options.uncertainty_threshold_hu)
    if uncertainty and uncertainty["flagged"]:
        warnings = warnings + [f"the sCT's uncertainty is {uncertainty['mean_in_body']:.0f} HU on average in the body, "
                               f"above the threshold of {uncertainty['threshold_hu']:.0f} HU: look at "
                               "uncertainty.nii.gz and the preview before using this sCT"]
    anchors = input_anchors(members, conversion.anchor_maps)
    notes, warnings = notes + anchors.notes, warnings + anchors.warnings
    source = volume.source
    return {
        "sctconv": __version__,
        "disclaimer": DISCLAIMER,
        "input": {"path": str(conversion.input_path), "modality": conversion.modality,
                  "modality_source": conversion.modality_source,
                  "dicom_series": source.series_instance_uid if source else None,
                  "resampled": asdict(source.resampled) if source and source.resampled else None,
                  "like": describe_like(options.like, conversion.like) if conversion.like is not None else None,
                  **describe_geometry(volume.image)},
        "model": {"name": model.card.name, "folder": str(model.folder), "version": model.card.version,
                  "regions": model.card.regions, "weights_sha256": model.weights_sha256,
                  "onnx_sha256": backend.sha256 if isinstance(backend, OnnxBackend) else None},
        "region": conversion.region,
        "mask": conversion.mask_source,
        "inference": {"backend": backend.name, "device": backend.device, "step": options.step,
                      "blend": options.blend, "batch_size": options.batch_size,
                      "patch_size": list(model.card.patch_size), "spacing_zyx": list(model.card.spacing),
                      "tta": options.tta, "ensemble": [m.card.name for m in members],
                      "input_anchor": anchors.records or None},
        "timings_s": {**timings, "total": round(sum(timings.values()), 3)},
        "hu_in_body": hu_statistics(conversion.sct, conversion.mask),
        "uncertainty": uncertainty,
        "outputs": outputs + [REPORT_NAME],
        "notes": notes,
        "warnings": warnings,
        "versions": versions(),
    }


@dataclass(frozen=True)
class Anchors:
    """How the members' anchors read the input (:func:`sctconv.preprocessing.normalize.anchor_map`)."""

    records: list[dict]
    notes: list[str]
    warnings: list[str]


def input_anchors(members: list[Member], maps: tuple[tuple[float, float], ...]) -> Anchors:
    """Per anchored member, the scale and offset its input was read with; a note where no air was in view
    to set the scale, a warning where the scale reached a limit (the input may not be a CBCT in HU)."""
    records, notes, warnings = [], [], []
    for member, (scale, offset) in zip(members, maps, strict=True):
        norm = member.card.input_normalization
        if norm.anchor_hu is None:
            continue
        records.append({"model": member.card.name, "scale": round(scale, 4), "offset_hu": round(offset, 1)})
        if norm.air_anchor_hu is None:
            continue
        if scale == 1.0:
            notes.append(f"{member.card.name}: no air around the body in view; the input's HU scale was left as read")
        elif scale in SCALE_LIMITS:
            warnings.append(f"{member.card.name}: the input's HU scale was corrected by the most allowed "
                            f"(x{scale:.2f}); is it a CBCT in HU with air around the body? Check the sCT's air, "
                            "lungs and bone")
    return Anchors(records, sorted(set(notes)), sorted(set(warnings)))


def write_report(report: dict, folder: Path) -> None:
    """Write ``report`` as ``report.json`` into ``folder``."""
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")


def uncertainty_summary(conversion: Conversion, threshold_hu: float) -> dict | None:
    """The uncertainty map in numbers: mean and 95th percentile in the body, mean in bone (sCT above 250
    HU) and at the body's outline (its outermost 2 voxels), and whether the body's mean is above
    ``threshold_hu`` (flagged for a closer look); None without --uncertainty."""
    if conversion.uncertainty is None:
        return None
    spread = sitk.GetArrayViewFromImage(conversion.uncertainty)
    body = sitk.GetArrayViewFromImage(conversion.mask) > 0
    bone = body & (sitk.GetArrayViewFromImage(conversion.sct) > BONE_HU)
    outline = body & ~ndimage.binary_erosion(body, iterations=2)

    def mean(where: np.ndarray) -> float | None:
        return round(float(spread[where].mean()), 2) if where.any() else None

    body_mean = mean(body)
    return {"unit": "HU (standard deviation over members and overlapping windows)",
            "mean_in_body": body_mean, "p95_in_body": round(float(np.percentile(spread[body], 95)), 2)
            if body.any() else None, "mean_in_bone": mean(bone), "mean_at_outline": mean(outline),
            "threshold_hu": threshold_hu, "flagged": bool(body_mean is not None and body_mean > threshold_hu)}


def describe_like(path: Path | None, header: Dataset) -> dict:
    """The report's record of the `--like` series."""
    return {"path": str(path), "series": str(header.get("SeriesInstanceUID", "")),
            "study": str(header.get("StudyInstanceUID", "")), "frame_of_reference": str(header.FrameOfReferenceUID)}


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
    """Size, spacing, origin and direction of ``image``."""
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def versions() -> dict[str, str]:
    """The versions of sctconv, Python and the libraries that shape an sCT."""
    import onnxruntime
    import pydicom
    import torch

    return {"sctconv": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "SimpleITK": sitk.Version.VersionString(),
            "pydicom": pydicom.__version__, "numpy": np.__version__}


def console_lines(report: dict, output: Path) -> list[str]:
    """What the console says after a conversion (rich markup): where, with what, the body's HU, the
    region and how it was chosen, notes and warnings."""
    hu, region = report["hu_in_body"], report["region"]
    lines = [f"[green]sCT written to {escape(str(output))}[/] ({report['model']['name']}, "
             f"{report['inference']['backend']} on {report['inference']['device']}, "
             f"{report['timings_s']['total']:.1f} s; body HU median {hu['median']:.0f}, "
             f"{100 * hu['fraction_above_300_hu']:.1f}% above 300 HU)"]
    if region["value"]:
        how = region["source"] if region["source"] != "option" else "--region"
        evidence = region.get("evidence")
        if region["source"] == "detected" and evidence:
            how += f", {evidence['confidence']} confidence: {evidence['rule']}"
        lines.append(f"region: {region['value']} ({escape(how)})")
    lines += [f"note: {escape(note)}" for note in report["notes"]]
    lines += [f"[yellow]warning:[/] {escape(warning)}" for warning in report["warnings"]]
    return lines
