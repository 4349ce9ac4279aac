"""Scoring synthetic CTs the way the SynthRAD2025 challenge does.

Image metrics (MAE, PSNR, MS-SSIM) are those of :mod:`sctconv.evaluation.image_metrics`. Segmentation metrics follow
the official ``segmentation_metrics.py`` (SynthRAD2025/evaluation, commit 921b42b), which feeds one
binary mask per structure to MONAI's ``DiceMetric`` and ``HausdorffDistanceMetric(percentile=95)``
with the CT's voxel spacing:

* A structure (label value > 0) is evaluated when it is present in the ground-truth label map;
  structures found only on the sCT are ignored.
* Dice = 2 |G ∩ P| / (|G| + |P|).
* HD95, as MONAI >= 1.3 computes it (``get_edge_surface_distance`` without sub-voxels): the surface
  of a mask is the mask minus its binary erosion (6-connected, voxels outside the volume count as
  background); d(P→G) are the Euclidean distances in mm from each surface voxel of P to the nearest
  surface voxel of G (``distance_transform_edt`` with ``sampling`` = spacing), d(G→P) the converse;
  HD95 = max(q95(d(P→G)), q95(d(G→P))), each q95 with linear interpolation between order statistics
  (``torch.quantile``, numpy's default ``percentile``). It is not the 95th percentile of the two
  distance sets pooled.
* A structure the sCT segmentation misses: Dice 0 and HD95 +inf for that structure. MONAI turns that
  +inf into NaN (``torch.quantile`` of all-infinite distances; checked with MONAI 1.6.1) and its mean
  skips NaNs, so the official patient HD95 is the mean over the structures found on both. sctconv
  reports the same mean, so its numbers compare with the challenge's, and lists the missed
  structures in ``missing_classes``; their Dice of 0 does count in the Dice mean.
* Deviation: when there is nothing to average (no evaluated structure, or for HD95 none found on
  the sCT) the official code reports 0, which reads as a perfect score; sctconv reports NaN.

The sCT is put on the CT's grid as the official evaluation does: the shapes must match, and the CT's
spacing, origin and direction are imposed on the sCT, the mask and label maps.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from rich.progress import Progress
from scipy import ndimage

from sctconv.errors import SctconvError
from sctconv.evaluation.image_metrics import image_metrics
from sctconv.hu import HU_MIN
from sctconv.inference.predict import TorchBackend, resolve_device, sliding_window
from sctconv.io.files import find_image, folders_with
from sctconv.io.images import read_volume
from sctconv.nn.segmenter import Segmenter
from sctconv.nn.teacher import load_teacher
from sctconv.preprocessing.body_mask import body_mask
from sctconv.preprocessing.grid import image_like, to_model_grid
from sctconv.preprocessing.normalize import normalize

log = logging.getLogger(__name__)

Labeller = Callable[[sitk.Image], sitk.Image]
"""A CT segmentation model: a CT in HU in, an integer label map on the same grid out (0 = background)."""

GEOMETRY_TOLERANCE = 1e-3
"""Largest spacing, origin or direction difference from the CT that is imposed without a warning."""

SUMMARY_METRICS = ("mae", "psnr", "ms_ssim", "dice", "hd95")
SUMMARY_STATS = ("mean", "std", "min", "25pc", "50pc", "75pc", "max", "count")


def _class_boxes(labels: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label 1..max_label (None where absent)."""
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int32)
    return ndimage.find_objects(labels, max_label=max_label)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...] | None, shape: Sequence[int]) -> tuple[slice, ...]:
    """The box holding ``a`` and ``b``, grown by one voxel where the volume allows."""
    box = []
    for axis, size in enumerate(shape):
        start, stop = a[axis].start, a[axis].stop
        if b is not None:
            start, stop = min(start, b[axis].start), max(stop, b[axis].stop)
        box.append(slice(max(start - 1, 0), min(stop + 1, size)))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its 6-connected binary erosion (outside counts as background)."""
    return mask ^ ndimage.binary_erosion(mask)


def dice_hd95(gt_labels: np.ndarray, pred_labels: np.ndarray, spacing_zyx: Sequence[float],
              classes: list[int] | None = None) -> dict[int, tuple[float, float]]:
    """Dice and HD95 (mm) of every structure present in ``gt_labels``: ``{label: (dice, hd95)}``.

    ``classes`` restricts the evaluation to those labels (the ones absent from the ground truth are
    skipped); None means every label > 0 of the ground truth. A structure missing from
    ``pred_labels`` gets Dice 0 and HD95 +inf. See the module docstring for the exact definitions.
    Raises ValueError when the shapes differ or ``spacing_zyx`` does not have one value per axis.
    """
    gt, pred = np.asarray(gt_labels), np.asarray(pred_labels)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt labels {gt.shape}, pred labels {pred.shape}")
    if len(spacing_zyx) != gt.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match {gt.ndim}D label maps")
    sampling = tuple(float(s) for s in spacing_zyx)
    max_label = int(max(gt.max(initial=0), pred.max(initial=0)))
    gt_boxes, pred_boxes = _class_boxes(gt, max_label), _class_boxes(pred, max_label)
    present = {label: box for label, box in enumerate(gt_boxes, start=1) if box is not None}
    wanted = list(present) if classes is None else [label for label in present if label in set(classes)]

    results: dict[int, tuple[float, float]] = {}
    for label in wanted:
        box = _union_box(present[label], pred_boxes[label - 1], gt.shape)
        g, p = gt[box] == label, pred[box] == label
        dice = 2.0 * np.count_nonzero(g & p) / (np.count_nonzero(g) + np.count_nonzero(p))
        if not p.any():
            results[label] = (dice, math.inf)
            continue
        g_surface, p_surface = _surface(g), _surface(p)
        pred_to_gt = ndimage.distance_transform_edt(~g_surface, sampling=sampling)[p_surface]
        gt_to_pred = ndimage.distance_transform_edt(~p_surface, sampling=sampling)[g_surface]
        hd95 = max(float(np.percentile(pred_to_gt, 95)), float(np.percentile(gt_to_pred, 95)))
        results[label] = (dice, hd95)
    return results


def segmentation_metrics(gt_labels: np.ndarray, pred_labels: np.ndarray,
                         spacing_zyx: Sequence[float]) -> dict[str, Any]:
    """Patient-level Dice and HD95 means plus per-structure values and the structures the sCT missed.

    ``dice`` averages every structure of the ground truth; ``hd95`` the structures found on both,
    as the official evaluation does (NaN when there is nothing to average).
    """
    per_class = dice_hd95(gt_labels, pred_labels, spacing_zyx)
    dices = [dice for dice, _ in per_class.values()]
    found = [hd95 for _, hd95 in per_class.values() if math.isfinite(hd95)]
    return {
        "dice": float(np.mean(dices)) if dices else math.nan,
        "hd95": float(np.mean(found)) if found else math.nan,
        "dice_per_class": {label: dice for label, (dice, _) in per_class.items()},
        "hd95_per_class": {label: hd95 for label, (_, hd95) in per_class.items()},
        "missing_classes": [label for label, (_, hd95) in per_class.items() if not math.isfinite(hd95)],
    }


def impose_geometry(image: sitk.Image, ct: sitk.Image, what: str) -> sitk.Image:
    """``image`` with the CT's spacing, origin and direction, as the official evaluation does.

    Refuses (SctconvError) a size that differs from the CT's; warns when the geometry differed by
    more than ``GEOMETRY_TOLERANCE``.
    """
    if image.GetSize() != ct.GetSize():
        raise SctconvError(f"{what} has size {image.GetSize()} but the CT has {ct.GetSize()} (x, y, z); the "
                           f"evaluation compares them voxel by voxel, so {what} must be on the CT's grid")
    differences = [abs(a - b) for getter in ("GetSpacing", "GetOrigin", "GetDirection")
                   for a, b in zip(getattr(image, getter)(), getattr(ct, getter)())]
    if max(differences) > GEOMETRY_TOLERANCE:
        log.warning("%s: spacing/origin/direction differ from the CT's by up to %.4g; the CT's are imposed, "
                    "as in the official evaluation", what, max(differences))
    imposed = sitk.Image(image)
    imposed.CopyInformation(ct)
    return imposed


def evaluate_case(sct: sitk.Image, ct: sitk.Image, mask: sitk.Image, segmenter: Labeller | None = None,
                  gt_labels: sitk.Image | None = None) -> dict[str, Any]:
    """All metrics of one sCT against its CT: ``mae``, ``psnr``, ``ms_ssim`` over ``mask > 0``.

    With a ``segmenter``, also ``dice``, ``hd95``, ``dice_per_class``, ``hd95_per_class`` and
    ``missing_classes`` (see :func:`segmentation_metrics`): the segmenter labels the sCT, and the CT
    too unless ``gt_labels`` (a ground-truth label map of the CT) is given.
    """
    if gt_labels is not None and segmenter is None:
        raise SctconvError("a ground-truth label map needs a segmenter to label the sCT")
    sct = impose_geometry(sct, ct, "the sCT")
    mask = impose_geometry(mask, ct, "the mask")
    try:
        result: dict[str, Any] = image_metrics(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(sct),
                                               sitk.GetArrayViewFromImage(mask))
    except ValueError as exc:
        raise SctconvError(f"cannot compute the image metrics: {exc}") from None
    if segmenter is None:
        return result
    gt_labels = impose_geometry(segmenter(ct) if gt_labels is None else gt_labels, ct, "the CT's label map")
    pred_labels = impose_geometry(segmenter(sct), ct, "the sCT's label map")
    spacing_zyx = ct.GetSpacing()[::-1]
    result.update(segmentation_metrics(sitk.GetArrayViewFromImage(gt_labels),
                                       sitk.GetArrayViewFromImage(pred_labels), spacing_zyx))
    return result


def convert_output_image(path: Path) -> Path | None:
    """The ``sct.*`` image of a `sctconv convert` output folder, or None when ``path`` is not one."""
    return find_image(path, "sct") if path.is_dir() else None


def evaluate_files(sct: Path, ct: Path, mask: Path | None, segmenter: Labeller | None = None) -> dict[str, Any]:
    """:func:`evaluate_case` on image files (or DICOM); ``sct`` may be a `sctconv convert` output
    folder. Without ``mask``, the CT's body (HU > -500)."""
    sct = convert_output_image(sct) or sct
    for path, what in ((sct, "sCT"), (ct, "CT"), (mask, "mask")):
        if path is not None and not path.exists():
            raise SctconvError(f"{what} {path} does not exist")
    ct_image = read_volume(ct).image
    mask_image = read_volume(mask).image if mask else body_mask(ct_image, "ct")
    return evaluate_case(read_volume(sct).image, ct_image, mask_image, segmenter)


def segment(teacher: Segmenter, ct: sitk.Image, device: str = "cpu") -> sitk.Image:
    """Label map of a CT in HU on the CT's own grid, by a teacher (an sctconv segmentation model or an
    nnU-Net one): LPS at the teacher's spacing, its normalization, Gaussian-blended windows at step
    0.5, each class's logits resampled linearly onto the CT's grid, then the argmax (nnU-Net's order)."""
    grid = to_model_grid(ct, teacher.spacing, default=HU_MIN)
    array = sitk.GetArrayFromImage(grid)
    x = normalize(array, np.ones(array.shape, dtype=bool), teacher.normalization)  # CT z-scores use no mask
    logits = sliding_window(x, TorchBackend(teacher.network, device), teacher.patch_size, step=0.5, blend="gaussian")
    labels = np.zeros(ct.GetSize()[::-1], dtype=np.uint8 if len(logits) <= 256 else np.uint16)
    best = np.full(labels.shape, -np.inf, dtype=np.float32)
    for label, channel in enumerate(logits):
        score = sitk.GetArrayFromImage(sitk.Resample(image_like(channel, grid), ct, sitk.Transform(), sitk.sitkLinear,
                                                     0.0, sitk.sitkFloat32, True))  # nearest value beyond the grid
        better = score > best
        best[better] = score[better]
        labels[better] = label
    return image_like(labels, ct)


def load_segmenter(path: Path, device: str = "auto") -> Labeller:
    """A segmentation model folder (an sctconv teacher or an nnU-Net model) as a :data:`Labeller`."""
    return functools.partial(segment, load_teacher(path), device=resolve_device(device))


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case to evaluate; ``mask`` None means the CT's body mask is computed."""

    name: str
    sct: Path
    ct: Path
    mask: Path | None


def find_cases(pred_dir: Path, gt_dir: Path, mask_dir: Path | None = None) -> list[CaseFiles]:
    """Pair predictions with ground-truth cases.

    Ground truth: every folder under ``gt_dir`` (searched recursively, SynthRAD2025 layout) holding
    ``ct.*``; its ``mask.*`` is the body mask. Prediction of case ``<case>``:
    ``pred_dir/<case>/sct.*`` (``sctconv convert`` output) or ``pred_dir/<case>.*``. Masks from
    ``mask_dir``, when given: ``mask_dir/<case>.*`` or ``mask_dir/<case>/mask.*``. Every case
    needs a prediction (and a mask when ``mask_dir`` is given).
    """
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth"), (mask_dir, "mask")):
        if folder is not None and not folder.is_dir():
            raise SctconvError(f"{what} folder {folder} does not exist")
    cases: dict[str, CaseFiles] = {}
    problems = []
    for folder in folders_with(gt_dir, "ct"):
        ct = find_image(folder, "ct")
        if ct is None:
            continue
        name = folder.name
        if name in cases:
            raise SctconvError(f"two ground-truth cases are named {name} ({cases[name].ct.parent} and {folder})")
        sct = find_image(pred_dir / name, "sct") or find_image(pred_dir, name)
        if mask_dir is None:
            mask = find_image(folder, "mask")
        else:
            mask = find_image(mask_dir, name) or find_image(mask_dir / name, "mask")
            if mask is None:
                problems.append(f"no mask for {name} in {mask_dir}")
        if sct is None:
            problems.append(f"no prediction for {name} ({pred_dir}/{name}/sct.* or {pred_dir}/{name}.mha)")
        else:
            cases[name] = CaseFiles(name, sct, ct, mask)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SctconvError("; ".join(problems[:3]) + more)
    if not cases:
        raise SctconvError(f"no cases under {gt_dir}: expected <case>/ct.mha (and <case>/mask.mha), "
                           "the SynthRAD2025 layout")
    return list(cases.values())


def evaluate_folders(pred_dir: Path, gt_dir: Path, mask_dir: Path | None = None,
                     segmenter: Labeller | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Evaluate every case of :func:`find_cases`; one row per case: ``{"case": name, **metrics}``."""
    cases = find_cases(pred_dir, gt_dir, mask_dir)
    task = progress.add_task("evaluating cases", total=len(cases)) if progress else None
    rows = []
    for case in cases:
        try:
            rows.append({"case": case.name, **evaluate_files(case.sct, case.ct, case.mask, segmenter)})
        except SctconvError as exc:
            raise SctconvError(f"case {case.name}: {exc}") from None
        if progress is not None and task is not None:
            progress.advance(task)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, std (n - 1), min, 25/50/75th percentiles, max and count over the cases.

    NaN values are left out (``count`` says how many remain), as in a pandas ``describe``.
    """
    summary = {}
    for metric in SUMMARY_METRICS:
        values = np.array([row[metric] for row in rows if metric in row], dtype=np.float64)
        if values.size == 0:
            continue
        values = values[~np.isnan(values)]
        if values.size == 0:
            summary[metric] = {**dict.fromkeys(SUMMARY_STATS[:-1], math.nan), "count": 0}
            continue
        with np.errstate(invalid="ignore"):  # +inf PSNR of identical volumes
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
            summary[metric] = {"mean": float(np.mean(values)), "std": std, "min": float(values.min()),
                               "25pc": float(q25), "50pc": float(q50), "75pc": float(q75),
                               "max": float(values.max()), "count": int(values.size)}
    return summary


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One line per case: the metrics, the missed structures (``;``-separated) and per-structure columns."""
    labels = sorted({label for row in rows for label in row.get("dice_per_class", {})})
    columns = ["case", *(m for m in SUMMARY_METRICS if any(m in row for row in rows))]
    if labels:
        columns += ["missing_classes", *(f"{name}_{label}" for name in ("dice", "hd95") for label in labels)]
    lines = []
    for row in rows:
        line = {key: row[key] for key in columns if key in row and key != "missing_classes"}
        if labels:
            line["missing_classes"] = ";".join(str(label) for label in row["missing_classes"])
            for name in ("dice", "hd95"):
                line.update({f"{name}_{label}": value for label, value in row[f"{name}_per_class"].items()})
        lines.append(line)
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, restval="")
            writer.writeheader()
            writer.writerows(lines)
    except OSError as exc:
        raise SctconvError(f"cannot write {path}: {exc.strerror}") from None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (infinite PSNR or HD95, NaN) replaced by None, for strict JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
