"""Paired training data: finding cases on disk, prepared datasets, training arrays and patches.

Two layouts of raw cases are understood, both searched recursively under the data folder:

- SynthRAD2025: ``<case>/mr.mha`` (or ``cbct.mha``), ``<case>/ct.mha``, ``<case>/mask.mha``, with the
  cases of the release grouped in region folders ``Task1/{HN,TH,AB}/<case>`` (``Task2`` for CBCT);
- plain: ``<case>/input.*``, ``<case>/ct.*``, ``<case>/mask.*`` in any format SimpleITK reads.

A case's region is known when the data folder or a folder between it and the case is named HN, TH
or AB; :func:`select_regions` keeps the cases of the wanted regions and those of unknown region.

Raw cases are read once (:mod:`sctconv.training.prepare`) into a *prepared dataset*: a folder with
``dataset.json`` and one ``.npz`` per case holding the input and the CT (HU) on the model's grid,
cropped to the body with a margin of air, with the body mask, the label map when there is one, and the case's
fingerprint (spacing, shape and foreground intensity sums and samples on its own grid). A
prepared dataset holds no patient identifiers and no file paths; training reads it with numpy
alone, so it can be copied to a GPU machine without the raw images (or SimpleITK).
Normalization happens when the arrays are loaded (:func:`case_arrays`), so one prepared dataset
serves any statistics.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sctconv.errors import SctconvError
from sctconv.hu import HU_MIN
from sctconv.io.files import find_image, folders_with
from sctconv.nn.model import REGION_ALIASES, ModelCard
from sctconv.nn.teacher import GROUPS, tissue_labels
from sctconv.preprocessing.normalize import normalize
from sctconv.simulation.synth_mr import simulate_mr_array

PREPARED_FORMAT = "sctconv-prepared"
PREPARED_VERSION = 2
DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class Case:
    """One paired case on disk: input (MR or CBCT), CT and an optional body mask and label map."""

    name: str
    input: Path
    ct: Path
    mask: Path | None
    labels: Path | None = None
    region: str | None = None  # "head-neck", "thorax" or "abdomen" when a parent folder says so


def discover_cases(root: Path, modality: str) -> list[Case]:
    """All case folders under ``root`` that hold an input of ``modality`` and a CT."""
    if not root.is_dir():
        raise SctconvError(f"data folder {root} does not exist")
    stems = {"mr": ("mr", "input"), "cbct": ("cbct", "input"), "ct": ("ct",)}[modality]
    cases = []
    for folder in folders_with(root, "ct"):
        source, ct = find_image(folder, *stems), find_image(folder, "ct")
        if source and ct:
            relative = folder.relative_to(root)
            parents = [root.resolve().name, *relative.parts[:-1]]
            regions = [REGION_ALIASES[p.lower()] for p in parents if p.lower() in REGION_ALIASES]
            cases.append(Case(relative.as_posix() if relative.parts else folder.name, source, ct,
                              find_image(folder, "mask"), find_image(folder, "labels"),
                              regions[-1] if regions else None))
    if not cases:
        raise SctconvError(f"no paired {modality} cases under {root} (expected <case>/{stems[0]}.mha and "
                           "<case>/ct.mha, or <case>/input.* and <case>/ct.*)")
    return cases


def select_regions(cases: list, regions: list[str]) -> list:
    """The cases (raw or prepared) of ``regions`` and those whose region is unknown (an error when none is left)."""
    kept = [c for c in cases if c.region is None or c.region in regions]
    if not kept:
        found = sorted({c.region for c in cases if c.region})
        raise SctconvError(f"no cases of region {', '.join(regions)} (the data holds {', '.join(found)}); "
                           "pass --region for one of those")
    return kept


@dataclass
class Intensities:
    """Foreground intensities of one case or several: exact sums for mean and std, a sample for percentiles."""

    total: float
    squares: float
    count: int
    sample: np.ndarray

    SAMPLE_SIZE = 10_000
    """Voxels drawn per case for the percentiles (nnU-Net's fingerprint does the same)."""

    @classmethod
    def of(cls, values: np.ndarray, rng: np.random.Generator) -> Intensities:
        values = values.astype(np.float64, copy=False).ravel()
        return cls(float(values.sum()), float(np.square(values).sum()), values.size,
                   rng.choice(values, min(values.size, cls.SAMPLE_SIZE), replace=False).astype(np.float32))

    @classmethod
    def merge(cls, parts: list[Intensities]) -> Intensities:
        return cls(sum(p.total for p in parts), sum(p.squares for p in parts), sum(p.count for p in parts),
                   np.concatenate([p.sample for p in parts]) if parts else np.zeros(0, np.float32))

    def summary(self) -> dict[str, float]:
        """mean, std, percentile_00_5, percentile_99_5 (nnU-Net's names)."""
        if not self.count:
            raise SctconvError("the body masks of the cases are empty; no foreground to measure")
        mean = self.total / self.count
        return {"mean": mean, "std": float(np.sqrt(max(self.squares / self.count - mean ** 2, 0.0))),
                "percentile_00_5": float(np.percentile(self.sample, 0.5)),
                "percentile_99_5": float(np.percentile(self.sample, 99.5))}


@dataclass
class Measurement:
    """One case's fingerprint on its own grid: spacing and shape (z, y, x, once in LPS) and the
    foreground intensities of the CT and, for CBCT, of the CBCT clipped to the CT range."""

    name: str
    region: str | None
    spacing: list[float]
    shape: list[int]
    ct: Intensities
    cbct: Intensities | None = None


def fingerprint(measurements: list[Measurement]) -> dict:
    """Dataset fingerprint: each case's spacing and shape and their medians, and the foreground
    statistics of the CT (and of the CBCT when measured), every voxel for mean and std, the samples
    for the 0.5 and 99.5 percentiles."""
    per_case = [{"name": m.name, "region": m.region, "spacing": m.spacing, "shape": m.shape} for m in measurements]
    result = {"cases": len(measurements), "median_spacing": np.median([m.spacing for m in measurements], 0).tolist(),
              "median_shape": np.median([m.shape for m in measurements], 0).tolist(),
              "ct": Intensities.merge([m.ct for m in measurements]).summary()}
    cbct = [m.cbct for m in measurements if m.cbct is not None]
    if cbct:
        result["cbct"] = Intensities.merge(cbct).summary()
    return {**result, "per_case": per_case}


@dataclass
class PreparedArrays:
    """A prepared case's arrays on the model grid: input as read (None for CT-only data), CT in HU,
    body mask, label map (None without one)."""

    input: np.ndarray | None
    ct: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class PreparedCase:
    """One case of a prepared dataset: its ``.npz`` and, when prepared on this machine, the raw files."""

    name: str
    region: str | None
    path: Path
    labels: bool
    source: Case | None = None

    def measurement(self) -> Measurement:
        """The case's fingerprint, stored beside its arrays."""
        try:
            with np.load(self.path) as data:
                meta = json.loads(str(data["meta"]))
                samples = {key: data[f"{key}_sample"] for key in ("ct", "cbct") if f"{key}_sample" in data}
            intensities = {key: Intensities(**meta[key], sample=sample) for key, sample in samples.items()}
            return Measurement(self.name, self.region, meta["spacing"], meta["shape"], intensities["ct"],
                               intensities.get("cbct"))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise self._damaged(exc) from None

    def load(self) -> PreparedArrays:
        try:
            with np.load(self.path) as data:
                return PreparedArrays(data["input"] if "input" in data else None, data["ct"].astype(np.float32),
                                      data["mask"], data["labels"] if "labels" in data else None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> SctconvError:
        return SctconvError(f"cannot read prepared case {self.name}: {self.path} is damaged or not a prepared case "
                            f"({type(exc).__name__}); prepare the dataset again")


def save_prepared_case(path: Path, arrays: PreparedArrays, measurement: Measurement) -> None:
    """Write one prepared case atomically (an interrupted run or a second process never reads half a file).

    The CT is stored as whole HU (int16), the input as float32, compressed.
    """
    meta = {"spacing": measurement.spacing, "shape": measurement.shape}
    stored: dict[str, np.ndarray] = {"ct": np.round(arrays.ct).astype(np.int16), "mask": arrays.mask.astype(np.uint8)}
    if arrays.input is not None:
        stored["input"] = arrays.input.astype(np.float32)
    if arrays.labels is not None:
        stored["labels"] = arrays.labels
    for key in ("ct", "cbct"):
        part = getattr(measurement, key)
        if part is not None:
            meta[key] = {"total": part.total, "squares": part.squares, "count": part.count}
            stored[f"{key}_sample"] = part.sample
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        # numpy's stub lets **kwargs reach savez_compressed's allow_pickle: bool; the keys here are array names.
        np.savez_compressed(file, meta=np.array(json.dumps(meta)), **stored)  # type: ignore[arg-type]
    partial.replace(path)


def write_dataset_index(folder: Path, modality: str, spacing: tuple[float, float, float],
                        cases: list[PreparedCase]) -> None:
    """Write ``dataset.json``, which makes ``folder`` a prepared dataset that training reads directly."""
    index = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION, "task": modality, "spacing": list(spacing),
             "cases": [{"name": c.name, "region": c.region, "file": c.path.name, "labels": c.labels} for c in cases]}
    partial = folder / f"{DATASET_FILE}.partial"
    partial.write_text(json.dumps(index, indent=2))
    partial.replace(folder / DATASET_FILE)


def read_index(folder: Path) -> dict | None:
    """The ``dataset.json`` of the prepared dataset in ``folder``, of any version; None when there is
    none (an nnU-Net raw dataset also has a ``dataset.json``, which is not one)."""
    try:
        index = json.loads((folder / DATASET_FILE).read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == PREPARED_FORMAT else None


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` is a prepared dataset."""
    return read_index(folder) is not None


def open_prepared(folder: Path) -> tuple[str, tuple[float, float, float], list[PreparedCase]]:
    """The modality (its index's ``task`` key, as --task), spacing (z, y, x) and cases of the prepared
    dataset in ``folder``."""
    index = read_index(folder)
    if index is None or index.get("version") != PREPARED_VERSION:
        raise SctconvError(f"{folder} is not a prepared dataset of this sctconv version; prepare it again")
    try:
        cases = [PreparedCase(c["name"], c["region"], folder / c["file"], bool(c["labels"])) for c in index["cases"]]
        spacing = tuple(float(s) for s in index["spacing"])
        modality = str(index["task"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SctconvError(f"cannot read prepared dataset {folder}: {exc}") from None
    missing = [c.path.name for c in cases if not c.path.is_file()]
    if missing:
        raise SctconvError(f"prepared dataset {folder} lacks {len(missing)} case file(s), e.g. {missing[0]}")
    if not cases:
        raise SctconvError(f"prepared dataset {folder} holds no cases")
    return modality, (spacing[0], spacing[1], spacing[2]), cases


@dataclass
class CaseArrays:
    """A case ready for training: normalized input, target (normalized CT or class labels), body mask."""

    name: str
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    body_voxels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.body_voxels = np.flatnonzero(self.mask)


def case_arrays(case: PreparedCase, card: ModelCard) -> CaseArrays:
    """Normalize a prepared case as inference does, for the model of ``card``.

    Synthesis: the input and the CT in the card's normalizations. Segmentation (a teacher): the CT
    as input; the target is the case's label map when the card's classes are the seven groups
    (values checked), else the HU tissue classes of the CT.
    """
    arrays = case.load()
    if card.task == "segmentation":
        x = normalize(arrays.ct, arrays.mask, card.input_normalization)
        if card.classes == list(GROUPS):
            if arrays.labels is None:
                raise SctconvError(f"case {case.name} has no labels.* file; every case needs one, or none should")
            if arrays.labels.max() >= len(GROUPS):
                raise SctconvError(f"case {case.name}: label {int(arrays.labels.max())}; labels must be the "
                                   f"{len(GROUPS)} groups 0..{len(GROUPS) - 1} "
                                   "(sctconv.nn.teacher.group_totalsegmentator)")
            y = arrays.labels.astype(np.uint8)
        else:
            y = tissue_labels(arrays.ct, arrays.mask)
    else:
        if arrays.input is None:
            raise SctconvError(f"case {case.name} was prepared without an input image (CT only)")
        x = normalize(arrays.input, arrays.mask, card.input_normalization)
        y = normalize(arrays.ct, arrays.mask, card.target_normalization)
    return CaseArrays(case.name, x.astype(np.float32), y, arrays.mask)


def simulated_case_arrays(name: str, arrays: PreparedArrays, card: ModelCard,
                          rng: np.random.Generator) -> CaseArrays:
    """A CT-only case with a new domain-randomised MR as its input (:mod:`sctconv.simulation.synth_mr`), both
    normalized as inference does; the CT outside the body becomes air, as an MR shows nothing there
    (no couch or headrest to invent)."""
    body = arrays.mask > 0
    mr = simulate_mr_array(arrays.ct, body, np.asarray(card.spacing), rng, arrays.labels)
    ct = np.where(body, arrays.ct, np.float32(HU_MIN))
    x = normalize(mr, arrays.mask, card.input_normalization)
    y = normalize(ct, arrays.mask, card.target_normalization)
    return CaseArrays(name, x.astype(np.float32), y, arrays.mask)


def sample_patch(case: CaseArrays, patch: tuple[int, int, int], rng: np.random.Generator,
                 centres: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random (x, y, mask) patch; centred on one of ``centres`` (flat voxel indices, e.g. the case's
    ``body_voxels``) when they are given and not empty, anywhere otherwise.

    Volumes smaller than the patch are padded like inference does (input with its minimum, CT with
    the normalized value of air).
    """
    shape = np.array(case.x.shape)
    size = np.array(patch)
    if centres is not None and centres.size:
        index = centres[rng.integers(centres.size)]
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


def region_weights(cases: list[PreparedCase], power: float = 0.0) -> np.ndarray:
    """How often each case is drawn: a region (head-neck, thorax, abdomen; unknown counts as one more) in
    proportion to its case count ** ``power``, its cases uniformly. 0 draws every region equally often, so
    a region with few CTs is not drowned by one with many; 1 draws every case equally often; 0.5 gives a
    region with 4 times the cases twice the share."""
    count = Counter(c.region for c in cases)
    weights = np.array([float(count[c.region]) ** (power - 1.0) for c in cases])
    return weights / weights.sum()
