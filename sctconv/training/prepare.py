"""Reading raw paired cases once into a prepared dataset (`sctconv prepare`, and the training cache).

Each case is read once: its fingerprint is measured on its own grid, then the input, the CT (HU,
clipped to [-1024, 3071]), the body mask and the label map are put on the model grid by the
inference path's own :func:`sctconv.preprocessing.grid.to_model_grid` and cropped to the body's bounding
box widened by :data:`CROP_MARGIN_MM` (:mod:`sctconv.training.data` describes the result). A case file is
named by a hash of the raw files' paths, sizes and modification times and of the spacing, so a
later run (a resume, another stage, a second process) reuses it instead of reading the images
again; a damaged one is prepared again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from sctconv.errors import SctconvError
from sctconv.hu import HU_MAX, HU_MIN
from sctconv.io.images import read_label_map, read_mask, read_volume
from sctconv.preprocessing.body_mask import body_mask
from sctconv.preprocessing.grid import CROP_MARGIN_MM, body_box, check_voxels, to_model_grid
from sctconv.training.data import (
    DATASET_FILE,
    PREPARED_VERSION,
    Case,
    Intensities,
    Measurement,
    PreparedArrays,
    PreparedCase,
    fingerprint,
    read_index,
    save_prepared_case,
    write_dataset_index,
)

log = logging.getLogger(__name__)

def load_case_hu(case: Case, modality: str) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Input, CT (clipped HU) and mask on the input's grid."""
    image = read_volume(case.input).image
    check_voxels(image, f"case {case.name} input")
    ct = sitk.Resample(read_volume(case.ct).image, image, sitk.Transform(), sitk.sitkLinear, HU_MIN,
                       sitk.sitkFloat32)
    ct = sitk.Clamp(ct, sitk.sitkFloat32, HU_MIN, HU_MAX)
    mask = read_mask(case.mask, image) if case.mask else body_mask(image, modality)
    return image, ct, mask


def oriented_geometry(image: sitk.Image) -> tuple[list[float], list[int]]:
    """Spacing (mm) and shape of ``image`` along (z, y, x) once reoriented to LPS, as the network sees it."""
    axes = np.abs(np.array(image.GetDirection()).reshape(3, 3)).argmax(0)  # physical axis of each image axis
    spacing, shape = [0.0] * 3, [0] * 3
    for axis, physical in enumerate(axes):
        spacing[2 - physical] = float(image.GetSpacing()[axis])
        shape[2 - physical] = int(image.GetSize()[axis])
    return spacing, shape


def measure(case: Case, modality: str, image: sitk.Image, ct: sitk.Image, mask: sitk.Image) -> Measurement:
    """The fingerprint of one case read by :func:`load_case_hu`."""
    rng = np.random.default_rng(int(hashlib.sha1(case.name.encode()).hexdigest()[:8], 16))  # reproducible, per case
    spacing, shape = oriented_geometry(image)
    inside = sitk.GetArrayFromImage(mask) > 0
    cbct = (Intensities.of(np.clip(sitk.GetArrayFromImage(image)[inside], HU_MIN, HU_MAX), rng)
            if modality == "cbct" else None)
    return Measurement(case.name, case.region, spacing, shape,
                       Intensities.of(sitk.GetArrayFromImage(ct)[inside], rng), cbct)


def fingerprint_cases(cases: list[Case], modality: str) -> dict:
    """The fingerprint (:func:`sctconv.training.data.fingerprint`) of raw cases, without preparing them."""
    return fingerprint([measure(case, modality, *load_case_hu(case, modality)) for case in cases])


def prepare_case(case: Case, modality: str, spacing: tuple[float, float, float], folder: Path) -> PreparedCase:
    """Read ``case`` once into ``folder`` (or find it there already)."""
    files = [p for p in (case.input, case.ct, case.mask, case.labels) if p is not None]
    stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([PREPARED_VERSION, stamps, modality, list(spacing)], sort_keys=True)
    path = folder / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(path) as data:
            return PreparedCase(case.name, case.region, path, "labels" in data.files, case)
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # not prepared yet, or a damaged file: (re)prepare it
    image, ct, mask = load_case_hu(case, modality)
    measurement = measure(case, modality, image, ct, mask)
    m = sitk.GetArrayFromImage(to_model_grid(mask, spacing, sitk.sitkNearestNeighbor)).astype(np.uint8)
    if not m.any():
        raise SctconvError(f"case {case.name}: the body mask is empty on the model grid")
    box = body_box(m, spacing, CROP_MARGIN_MM)
    ct_grid = sitk.GetArrayFromImage(to_model_grid(ct, spacing, default=HU_MIN))[box]
    x = None
    if modality != "ct":
        air = float(sitk.GetArrayViewFromImage(image).min())
        x = sitk.GetArrayFromImage(to_model_grid(image, spacing, default=air))[box]
    labels = None
    if case.labels is not None:
        try:
            labels = grouped_labels(case.name, case.labels, ct, spacing, box)
        except SctconvError as exc:
            if modality == "ct":  # a teacher's case: its labels are the training target
                raise
            log.warning("%s; the case is prepared without them (only a teacher needs labels)", exc)
    if not (np.isfinite(ct_grid).all() and (x is None or np.isfinite(x).all())):
        raise SctconvError(f"case {case.name}: non-finite values after resampling")
    save_prepared_case(path, PreparedArrays(x, ct_grid, m[box], labels), measurement)
    return PreparedCase(case.name, case.region, path, labels is not None, case)


def grouped_labels(name: str, path: Path, ct: sitk.Image, spacing: tuple[float, float, float],
                   box: tuple[slice, slice, slice]) -> np.ndarray:
    """The label map ``path`` of case ``name`` on the model grid, cropped to ``box`` (uint8: grouped values only)."""
    labels = sitk.GetArrayFromImage(to_model_grid(read_label_map(path, ct), spacing,
                                                  sitk.sitkNearestNeighbor))[box]
    if labels.max() > 255:
        raise SctconvError(f"case {name}: label {int(labels.max())} in {path}; labels must be "
                           "the grouped values (sctconv.nn.teacher.group_totalsegmentator)")
    return labels.astype(np.uint8)


def _prepared_for(index: dict, modality: str, spacing: tuple[float, float, float]) -> bool:
    """Whether the prepared dataset of ``index`` is of ``modality`` at ``spacing``."""
    prepared = index.get("spacing")
    return index.get("task") == modality and prepared is not None and bool(np.allclose(prepared, spacing))


def prepare_dataset(cases: list[Case], modality: str, spacing: tuple[float, float, float], folder: Path,
                    console: Console, index: bool = True) -> list[PreparedCase]:
    """Prepare ``cases`` into ``folder`` and, with ``index``, list them there in their order
    (``dataset.json``, which makes the folder a prepared dataset of exactly these cases).

    ``folder`` is new, or holds a prepared dataset of the same modality and spacing (its case files are
    reused), or the case files of an interrupted preparation; any other folder is refused, so that
    nothing is written among the user's own files and no other prepared dataset is overwritten.
    """
    foreign = [p.name for p in folder.iterdir() if p.suffix not in (".npz", ".partial") and p.name != DATASET_FILE] \
        if folder.is_dir() else []
    if foreign:
        raise SctconvError(f"{folder} holds other files than a prepared dataset (e.g. {sorted(foreign)[0]}); "
                           "choose a new folder")
    existing = read_index(folder) or {}
    if existing.get("version") == PREPARED_VERSION and not _prepared_for(existing, modality, spacing):
        raise SctconvError(f"{folder} holds a dataset prepared for --task {existing.get('task')} at "
                           f"{existing.get('spacing')} mm, not {modality} at {list(spacing)} mm; choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    with Progress(TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        prepared = [prepare_case(case, modality, spacing, folder) for case in progress.track(cases)]
    if index:
        write_dataset_index(folder, modality, spacing, prepared)
    return prepared
