"""Paired training data: finding cases on disk, preprocessing them once into a cache, sampling patches.

Two layouts are understood, both searched recursively under the data folder:

- SynthRAD2025: ``<case>/mr.mha`` (or ``cbct.mha``), ``<case>/ct.mha``, ``<case>/mask.mha``, with the
  cases of the release grouped in region folders ``Task1/{HN,TH,AB}/<case>`` (``Task2`` for CBCT);
- plain: ``<case>/input.*``, ``<case>/ct.*``, ``<case>/mask.*`` in any format SimpleITK reads.

A case's region is known when the data folder or a folder between it and the case is named HN, TH
or AB; :func:`select_regions` keeps the cases of the wanted regions and those of unknown region.

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
from sctconv.model import REGION_ALIASES, Normalization
from sctconv.teacher import GROUPS, tissue_labels
from sctconv.preprocess import HU_MAX, HU_MIN, check_finite, normalize, to_model_grid

IMAGE_PATTERNS = ("{}.mha", "{}.nii.gz", "{}.nii", "{}.nrrd", "{}.mhd")
PERCENTILE_SAMPLES = 10_000
"""Foreground voxels drawn per case for the intensity percentiles (nnU-Net's fingerprint does the same)."""


@dataclass(frozen=True)
class Case:
    """One paired case: input (MR or CBCT), CT and an optional body mask."""

    name: str
    input: Path
    ct: Path
    mask: Path | None
    labels: Path | None = None
    region: str | None = None  # "head-neck", "thorax" or "abdomen" when a parent folder says so


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
            relative = folder.relative_to(root)
            parents = [root.resolve().name, *relative.parts[:-1]]
            regions = [REGION_ALIASES[p.lower()] for p in parents if p.lower() in REGION_ALIASES]
            cases.append(Case(relative.as_posix() if relative.parts else folder.name, source, ct,
                              _find(folder, ("mask",)), _find(folder, ("labels",)),
                              regions[-1] if regions else None))
    if not cases:
        raise SctconvError(f"no paired {modality} cases under {root} (expected <case>/{stems[0]}.mha and "
                           "<case>/ct.mha, or <case>/input.* and <case>/ct.*)")
    return cases


def select_regions(cases: list[Case], regions: list[str]) -> list[Case]:
    """The cases of ``regions`` and those whose region is unknown (an error when none is left)."""
    kept = [c for c in cases if c.region is None or c.region in regions]
    if not kept:
        found = sorted({c.region for c in cases if c.region})
        raise SctconvError(f"no cases of region {', '.join(regions)} (the data holds {', '.join(found)}); "
                           "pass --region for one of those")
    return kept


def load_case_hu(case: Case, modality: str) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Input, CT (clipped HU) and mask on the input's grid."""
    image = read_volume(case.input).image
    check_finite(image, f"case {case.name} input")
    ct = sitk.Resample(read_volume(case.ct).image, image, sitk.Transform(), sitk.sitkLinear, HU_MIN,
                       sitk.sitkFloat32)
    ct = sitk.Clamp(ct, sitk.sitkFloat32, HU_MIN, HU_MAX)
    mask = read_mask(case.mask, image) if case.mask else body_mask(image, modality)
    return image, ct, mask


@dataclass
class IntensityStatistics:
    """Foreground intensities of several cases: exact mean and std, percentiles from a sample."""

    total: float = 0.0
    squares: float = 0.0
    count: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, values: np.ndarray, rng: np.random.Generator) -> None:
        values = values.astype(np.float64, copy=False).ravel()
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.count += values.size
        self.samples.append(rng.choice(values, min(values.size, PERCENTILE_SAMPLES), replace=False))

    def summary(self) -> dict[str, float]:
        """mean, std, percentile_00_5, percentile_99_5 (nnU-Net's names)."""
        if not self.count:
            raise SctconvError("the body masks of the cases are empty; no foreground to measure")
        mean = self.total / self.count
        sample = np.concatenate(self.samples)
        return {"mean": mean, "std": float(np.sqrt(max(self.squares / self.count - mean ** 2, 0.0))),
                "percentile_00_5": float(np.percentile(sample, 0.5)),
                "percentile_99_5": float(np.percentile(sample, 99.5))}


def oriented_geometry(image: sitk.Image) -> tuple[list[float], list[int]]:
    """Spacing (mm) and shape of ``image`` along (z, y, x) once reoriented to LPS, as the network sees it."""
    axes = np.abs(np.array(image.GetDirection()).reshape(3, 3)).argmax(0)  # physical axis of each image axis
    spacing, shape = [0.0] * 3, [0] * 3
    for axis, physical in enumerate(axes):
        spacing[2 - physical] = float(image.GetSpacing()[axis])
        shape[2 - physical] = int(image.GetSize()[axis])
    return spacing, shape


def fingerprint(cases: list[Case], modality: str) -> dict:
    """Dataset fingerprint: each case's input spacing and shape (z, y, x) and their medians, and the
    foreground (inside the body mask) intensity statistics of the CT, and of the CBCT for ``cbct``.

    Means and stds use every foreground voxel; the 0.5 and 99.5 percentiles a fixed random sample of
    :data:`PERCENTILE_SAMPLES` voxels per case. CBCT values are clipped to the CT range first.
    """
    rng = np.random.default_rng(1234)
    ct_stats, input_stats, per_case = IntensityStatistics(), IntensityStatistics(), []
    for case in cases:
        image, ct, mask = load_case_hu(case, modality)
        spacing, shape = oriented_geometry(image)
        per_case.append({"name": case.name, "region": case.region, "spacing": spacing, "shape": shape})
        inside = sitk.GetArrayViewFromImage(mask) > 0
        ct_stats.add(sitk.GetArrayViewFromImage(ct)[inside], rng)
        if modality == "cbct":
            input_stats.add(np.clip(sitk.GetArrayViewFromImage(image)[inside], HU_MIN, HU_MAX), rng)
    result = {"cases": len(cases), "median_spacing": np.median([c["spacing"] for c in per_case], 0).tolist(),
              "median_shape": np.median([c["shape"] for c in per_case], 0).tolist(), "ct": ct_stats.summary()}
    if modality == "cbct":
        result["cbct"] = input_stats.summary()
    return {**result, "per_case": per_case}


def preprocess_case(case: Case, modality: str, spacing: tuple[float, float, float],
                    input_norm: Normalization, target_norm: Normalization, cache: Path,
                    classes: list[str] | None = None) -> CaseArrays:
    """Resample and normalize one case as inference does, cached as .npz keyed by all settings and
    by the files' sizes and modification times.

    For synthesis (``classes`` None) the target ``y`` is the normalized CT. For a segmentation
    teacher it is the case's label map when ``classes`` are the seven groups (values checked), or
    the HU tissue classes of the CT otherwise.
    """
    files = [p for p in (case.input, case.ct, case.mask, case.labels) if p is not None]
    stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([stamps, modality, spacing, input_norm.__dict__, target_norm.__dict__, classes],
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
    if classes is None:
        y = normalize(ct_grid, m, target_norm).astype(np.float32)
    elif classes == list(GROUPS):
        if case.labels is None:
            raise SctconvError(f"case {case.name} has no labels.* file; every case needs one, or none should")
        labels = sitk.GetArrayFromImage(to_model_grid(read_label_map(case.labels, ct), spacing,
                                                      sitk.sitkNearestNeighbor))
        if labels.max() >= len(GROUPS):
            raise SctconvError(f"case {case.name}: label {int(labels.max())} in {case.labels}; labels must be the "
                               f"{len(GROUPS)} groups 0..{len(GROUPS) - 1} (sctconv.teacher.group_totalsegmentator)")
        y = labels.astype(np.uint8)
    else:
        y = tissue_labels(ct_grid, m)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SctconvError(f"case {case.name}: non-finite values after preprocessing")
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        np.savez(file, x=x.astype(np.float32), y=y, mask=m)
    partial.replace(path)  # atomic: an interrupted run or a second process never reads half a file
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
