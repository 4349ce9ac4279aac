"""The SynthRAD2025 grand-challenge container's job: `sctconv challenge --input /input --output /output`.

Input layout: ``images/mri/*.mha`` (Task 1) or ``images/cbct/*.mha`` (Task 2), the body masks in
``images/body/*.mha`` (paired with the images in sorted order, one each) and ``region.json`` (a JSON
string: "Head and Neck", "Thorax" or "Abdomen"). Output: ``images/synthetic-ct/<input name>.mha``, the
sCT in HU on the input's grid, -1024 outside the given body mask. Each case goes through
:func:`sctconv.convert.pipeline.convert` (the mask and region given, no DICOM, no preview) in a staging
folder inside ``--output``; only the sCT is kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sctconv.convert.options import ConvertOptions
from sctconv.convert.pipeline import convert
from sctconv.errors import SctconvError
from sctconv.nn.model import Model, canonical_region

TASK_FOLDERS = {"mri": "mr", "cbct": "cbct"}
"""The challenge's input image folder and sctconv's modality."""


def challenge_cases(input_dir: Path) -> tuple[str, str, list[tuple[Path, Path]]]:
    """Modality, region and the (image, body mask) pairs of a challenge input folder; an error naming
    what is missing or ambiguous."""
    present = [name for name in TASK_FOLDERS if (input_dir / "images" / name).is_dir()]
    if len(present) != 1:
        raise SctconvError(f"{input_dir} needs exactly one of images/mri and images/cbct (found "
                           f"{', '.join(present) or 'neither'})")
    images = sorted((input_dir / "images" / present[0]).glob("*.mha"))
    masks = sorted((input_dir / "images" / "body").glob("*.mha"))
    if not images or len(images) != len(masks):
        raise SctconvError(f"{input_dir}: {len(images)} image(s) in images/{present[0]} and {len(masks)} body "
                           "mask(s) in images/body; one mask per image is needed")
    region_file = input_dir / "region.json"
    try:
        region = json.loads(region_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SctconvError(f"cannot read {region_file}: {exc}") from None
    if not isinstance(region, str):
        raise SctconvError(f"{region_file} must hold a JSON string such as \"Thorax\", not {region!r}")
    return TASK_FOLDERS[present[0]], canonical_region(region), list(zip(images, masks))


def run_challenge(input_dir: Path, output_dir: Path, model: str | None = None) -> list[Path]:
    """Convert every case of ``input_dir`` into ``output_dir/images/synthetic-ct/``; returns the sCT files."""
    modality, region, cases = challenge_cases(input_dir)
    target = output_dir / "images" / "synthetic-ct"
    target.mkdir(parents=True, exist_ok=True)
    staging = output_dir / ".sctconv-challenge"
    models: dict[Path, Model] = {}
    written = []
    try:
        for image, mask in cases:
            options = ConvertOptions(modality=modality, region=region, model=model, mask=mask, image_format="mha",
                                     dicom=False, preview=False)
            case_dir = staging / image.stem
            convert(image, case_dir, options, models=models)
            shutil.move(str(case_dir / "sct.mha"), target / image.name)
            written.append(target / image.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
