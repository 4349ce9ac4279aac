"""Paired training data: finding cases on disk, preprocessing them once into a cache, sampling patches.

Two layouts are understood, both searched recursively under the data folder:

- SynthRAD2025: ``<case>/mr.mha`` (or ``cbct.mha``), ``<case>/ct.mha``, ``<case>/mask.mha``;
- plain: ``<case>/input.*``, ``<case>/ct.*``, ``<case>/mask.*`` in any format SimpleITK reads.

Preprocessing is the inference path's own (:func:`sctconv.preprocess.to_model_grid` and
:func:`sctconv.preprocess.normalize`), so training and conversion see identical inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.io import read_label_map, read_mask, read_volume
from sctconv.mask import body_mask
from sctconv.model import Normalization
from sctconv.teacher import tissue_labels
from sctconv.preprocess import HU_MAX, HU_MIN, check_finite, normalize, to_model_grid

IMAGE_PATTERNS = ("{}.mha", "{}.nii.gz", "{}.nii", "{}.nrrd", "{}.mhd")


@dataclass(frozen=True)
class Case:
    """One paired case: input (MR or CBCT), CT and an optional body mask."""

    name: str
    input: Path
    ct: Path
    mask: Path | None
    labels: Path | None = None


@dataclass
class CaseArrays:
    """A preprocessed case at the model's spacing: normalized input and CT, body mask, HU CT."""

    name: str
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    body_voxels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.body_voxels = np.flatnonzero(self.mask)


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for pattern in IMAGE_PATTERNS:
            path = folder / pattern.format(stem)
            if path.is_file():
                return path
    return None


def discover_cases(root: Path, modality: str) -> list[Case]:
    """All case folders under ``root`` that hold an input of ``modality`` and a CT."""
    if not root.is_dir():
        raise SctconvError(f"data folder {root} does not exist")
    stems = {"mr": ("mr", "input"), "cbct": ("cbct", "input"), "ct": ("ct",)}[modality]
    cases = []
    for folder in sorted({p.parent for p in root.rglob("ct.*")}):
        source, ct = _find(folder, stems), _find(folder, ("ct",))
        if source and ct:
            cases.append(Case(folder.relative_to(root).as_posix() or folder.name, source, ct,
                              _find(folder, ("mask",)), _find(folder, ("labels",))))
    if not cases:
        raise SctconvError(f"no paired {modality} cases under {root} (expected <case>/{stems[0]}.mha and "
                           "<case>/ct.mha, or <case>/input.* and <case>/ct.*)")
    return cases


def load_case_hu(case: Case, modality: str) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Input, CT (clipped HU) and mask on the input's grid."""
    image = read_volume(case.input).image
    check_finite(image, f"case {case.name} input")
    ct = sitk.Resample(read_volume(case.ct).image, image, sitk.Transform(), sitk.sitkLinear, HU_MIN,
                       sitk.sitkFloat32)
    ct = sitk.Clamp(ct, sitk.sitkFloat32, HU_MIN, HU_MAX)
    mask = read_mask(case.mask, image) if case.mask else body_mask(image, modality)
    return image, ct, mask


def dataset_statistics(values: list[np.ndarray]) -> tuple[float, float]:
    """Mean and std of the foreground values of several cases together."""
    joined = np.concatenate([v.ravel() for v in values]).astype(np.float64)
    return float(joined.mean()), float(joined.std())


def fingerprint(cases: list[Case], modality: str) -> dict:
    """Dataset statistics for the normalizations: foreground mean/std of CT (and of CBCT)."""
    ct_values, input_values = [], []
    for case in cases:
        image, ct, mask = load_case_hu(case, modality)
        inside = sitk.GetArrayViewFromImage(mask) > 0
        ct_values.append(sitk.GetArrayViewFromImage(ct)[inside])
        input_values.append(np.clip(sitk.GetArrayViewFromImage(image)[inside], HU_MIN, HU_MAX))
    ct_mean, ct_std = dataset_statistics(ct_values)
    result = {"cases": len(cases), "ct_mean": ct_mean, "ct_std": ct_std}
    if modality == "cbct":
        result["cbct_mean"], result["cbct_std"] = dataset_statistics(input_values)
    return result


def preprocess_case(case: Case, modality: str, spacing: tuple[float, float, float],
                    input_norm: Normalization, target_norm: Normalization, cache: Path,
                    segmentation: bool = False) -> CaseArrays:
    """Resample and normalize one case as inference does, cached as .npz keyed by all settings.

    For synthesis the target ``y`` is the normalized CT; for ``segmentation`` (a teacher) it is the
    case's label map, or HU tissue classes of the CT when the case has none.
    """
    key = json.dumps([str(case.input.resolve()), str(case.ct.resolve()), str(case.mask), str(case.labels),
                      modality, spacing, input_norm.__dict__, target_norm.__dict__, segmentation],
                     sort_keys=True, default=str)
    path = cache / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as data:
            return CaseArrays(case.name, data["x"], data["y"], data["mask"])
    image, ct, mask = load_case_hu(case, modality)
    grid = to_model_grid(image, spacing, default=float(sitk.GetArrayViewFromImage(image).min()))
    m = sitk.GetArrayFromImage(to_model_grid(mask, spacing, sitk.sitkNearestNeighbor)).astype(np.uint8)
    x = normalize(sitk.GetArrayViewFromImage(grid), m, input_norm)
    ct_grid = sitk.GetArrayFromImage(to_model_grid(ct, spacing, default=HU_MIN))
    if not segmentation:
        y = normalize(ct_grid, m, target_norm).astype(np.float32)
    elif case.labels:
        labels = to_model_grid(read_label_map(case.labels, ct), spacing, sitk.sitkNearestNeighbor)
        y = sitk.GetArrayFromImage(labels).astype(np.uint8)
    else:
        y = tissue_labels(ct_grid, m)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SctconvError(f"case {case.name}: non-finite values after preprocessing")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.float32), y=y, mask=m)
    return CaseArrays(case.name, x.astype(np.float32), y, m)


def sample_patch(case: CaseArrays, patch: tuple[int, int, int], rng: np.random.Generator,
                 foreground: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random (x, y, mask) patch; centred on a body voxel when ``foreground``.

    Volumes smaller than the patch are padded like inference does (input with its minimum, CT with
    the normalized value of air).
    """
    shape = np.array(case.x.shape)
    size = np.array(patch)
    if foreground and case.body_voxels.size:
        index = case.body_voxels[rng.integers(case.body_voxels.size)]
        centre = np.array(np.unravel_index(index, case.mask.shape))
        start = centre - size // 2
    else:
        start = np.array([rng.integers(0, max(1, s - p + 1)) for s, p in zip(shape, size)])
    start = np.clip(start, 0, np.maximum(shape - size, 0))
    crop = tuple(slice(s, s + p) for s, p in zip(start, size))
    x, y, m = case.x[crop], case.y[crop], case.mask[crop]
    pad = [(0, p - s) for p, s in zip(size, x.shape)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, constant_values=float(case.x.min()))
        y = np.pad(y, pad, constant_values=float(case.y.min()))
        m = np.pad(m, pad)
    return x, y, m
