"""Which body region a volume shows (head-neck, thorax or abdomen), measured from its body mask.

The volume is put in LPS orientation, so that the array's first axis runs inferior -> superior,
and each axial cross-section of the body is measured:

- its left-right **width** (the columns where the body is at least a quarter of its largest
  anterior-posterior thickness, so that a thin couch or headrest under the body does not count);
  a head is 140-190 mm wide and a neck 100-150 mm, a trunk with its shoulders 250 mm and more;
- its **lung fraction**: the part of the cross-section that is large dark regions inside the body
  (below -400 HU in CT/CBCT; in MR, darker than a fifth of the way from the background to the
  body's median), opened with a 5 mm disc so that thin dark structures (cortical bone, the
  skull in MR, airway walls) and small gas pockets do not count;
- whether the body is **cut by the field of view** on its left or right (then its width is only a
  lower bound).

The decision, in this order:

1. **head-neck** when at least 60 mm of the body's length has cross-sections narrower than 200 mm
   (not cut by the field of view, without lungs): a head or a neck is in the field of view.
   Head-and-neck planning scans reach into the upper thorax, and whole-body scans are called
   head-neck too; the evidence then shows the thorax and abdomen lengths as well.
2. **thorax** or **abdomen**, whichever is longer along the body: the slices with lungs (lung
   fraction at least 12%) against the wide slices without lungs below the lungs (abdomen and pelvis;
   wide slices above the lungs are shoulders and count for neither).
3. When nothing can be measured (a small crop inside the body, cut by the field of view on every
   slice, without lungs, as the breast MR crop of the test data), **thorax** is assumed with
   ``confidence: low``; the caller should say so and ask for ``--region``.

Known limits: a child's trunk can be narrower than 200 mm and would be called head-neck; a
volume that is not axial-ish, or far from a standard patient orientation, is measured along the
closest patient axis.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sctconv.errors import SctconvError

NARROW_MM = 200.0
"""Cross-sections narrower than this (left-right) are a head or a neck."""
HEAD_NECK_MIN_MM = 60.0
"""Length of head/neck cross-sections along the body from which the volume is head-neck."""
LUNG_SLICE_FRACTION = 0.12
"""A cross-section with at least this fraction of lung is a thorax slice."""
LUNG_HU = -400.0
"""CT/CBCT voxels inside the body below this are lung (or gas)."""
MR_DARK_FRACTION = 0.2
"""MR voxels inside the body darker than this fraction of the way from the background to the body's
median are lung (or gas, bone)."""
OPENING_MM = 5.0
"""Radius of the in-plane opening of the dark regions: thinner structures are not lung."""
CLOSING_MM = 10.0
"""Radius of the in-plane closing of the body mask before its cross-sections' holes are filled."""
MIN_LUNG_ML = 20.0
"""Dark 3D components smaller than this are not lung."""
MIN_SLICE_AREA_MM2 = 1000.0
"""Cross-sections smaller than this (10 cm², a skull vertex or a stray bit of mask) are not measured."""
WORKING_SPACING_MM = 2.5
"""In-plane spacing the measurements are made at (finer inputs are averaged down to about it)."""
MIN_MEASURED_MM = 20.0
"""At least this length of thorax or abdomen slices to decide between them."""


def _working_grid(image: sitk.Image, mask: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intensities, body, spacing zyx in mm) in LPS orientation, in-plane about WORKING_SPACING_MM."""
    image = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS")
    mask = sitk.DICOMOrient(sitk.Cast(mask > 0, sitk.sitkFloat32), "LPS")
    factors = [max(1, int(round(WORKING_SPACING_MM / s))) if i < 2 else 1
               for i, s in enumerate(image.GetSpacing())]
    if any(f > 1 for f in factors):
        image, mask = sitk.BinShrink(image, factors), sitk.BinShrink(mask, factors)
    spacing = np.array(image.GetSpacing()[::-1], dtype=np.float64)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask) > 0.5, spacing


def _disc(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """An in-plane disc (1, y, x) of ``radius_mm``."""
    ry, rx = (max(1, int(round(radius_mm / s))) for s in spacing[1:])
    yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return ((yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0)[None]


def _closed(body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The body with the gaps of its outline closed (CLOSING_MM) and each cross-section's holes filled, so
    that lungs that a body mask left out through a thin or dark chest wall are inside it again."""
    closed = ndimage.binary_closing(body, structure=_disc(CLOSING_MM, spacing)) | body
    for k in np.nonzero(closed.any(axis=(1, 2)))[0]:
        closed[k] = ndimage.binary_fill_holes(closed[k])
    return closed


def _dark(array: np.ndarray, body: np.ndarray, modality: str) -> tuple[np.ndarray, float]:
    """Dark voxels inside the body (lung, gas) and the threshold used."""
    if modality == "mr":
        background = float(np.median(array[~body])) if (~body).any() else float(array[body].min())
        threshold = background + MR_DARK_FRACTION * (float(np.median(array[body])) - background)
    else:
        threshold = LUNG_HU
    return (array < threshold) & body, threshold


def _lungs(dark: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The large, thick dark regions: dark voxels opened in-plane, then 3D components of MIN_LUNG_ML."""
    opened = ndimage.binary_opening(dark, structure=_disc(OPENING_MM, spacing))
    labels, count = ndimage.label(opened)
    if count == 0:
        return opened
    sizes = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0  # ml
    keep = sizes >= MIN_LUNG_ML
    keep[0] = False
    return keep[labels]


def _width(body: np.ndarray, spacing_x: float) -> float:
    """Left-right width (mm) of one cross-section over the columns at least a quarter as thick as its thickest."""
    thickness = body.sum(axis=0)
    return float(np.count_nonzero(thickness >= 0.25 * thickness.max())) * spacing_x


def _span(flags: np.ndarray) -> float:
    """Voxels from the first to the last set flag."""
    index = np.nonzero(flags)[0]
    return float(index[-1] - index[0] + 1)


def _length(flags: np.ndarray, slice_mm: float) -> float:
    return round(float(np.count_nonzero(flags)) * slice_mm, 1)


def detect_region(image: sitk.Image, mask: sitk.Image, modality: str) -> tuple[str, dict]:
    """The body region of ``image`` ("head-neck", "thorax" or "abdomen") and the evidence for it.

    ``mask`` is the body mask on ``image``'s grid; ``modality`` is "mr", or "cbct"/"ct" (HU).
    The evidence holds the measured lengths along the body (mm), the widths, the lung fraction,
    the rule that decided and a confidence ("high", or "low" when nothing could be measured).
    """
    if image.GetDimension() != 3:
        raise SctconvError("region detection needs a 3D volume")
    array, body, spacing = _working_grid(image, mask)
    if not body.any():
        raise SctconvError("region detection needs a body mask that is not empty")
    body = _closed(body, spacing)
    slice_mm, pixel_mm2 = float(spacing[0]), float(spacing[1] * spacing[2])
    dark, threshold = _dark(array, body, modality)
    lungs = _lungs(dark, spacing)

    area = body.sum(axis=(1, 2)) * pixel_mm2
    measured = area >= MIN_SLICE_AREA_MM2
    lung_fraction = np.where(area > 0, lungs.sum(axis=(1, 2)) * pixel_mm2 / np.maximum(area, 1e-9), 0.0)
    cut = np.asarray(body[:, :, 0].any(axis=1) | body[:, :, -1].any(axis=1))  # body reaches the left or right edge
    width = np.array([_width(body[k], spacing[2]) if measured[k] else 0.0 for k in range(body.shape[0])])

    lung = measured & (lung_fraction >= LUNG_SLICE_FRACTION)
    narrow = measured & ~cut & (width < NARROW_MM) & ~lung
    wide = measured & ~lung & (width >= NARROW_MM)  # cut by the field of view or not: at least that wide
    if lung.any():  # wide slices above the lungs are shoulders; below them, abdomen and pelvis
        below = np.arange(body.shape[0]) < np.nonzero(lung)[0].min()
        abdomen = wide & below
    else:
        abdomen = wide
    lengths = {"head_neck": _length(narrow, slice_mm), "thorax": _length(lung, slice_mm),
               "abdomen": _length(abdomen, slice_mm)}

    confidence = "high"
    if lengths["head_neck"] >= HEAD_NECK_MIN_MM:
        region = "head-neck"
        rule = (f"{lengths['head_neck']:.0f} mm of the body has cross-sections narrower than {NARROW_MM:.0f} mm "
                f"(a head or neck; head-neck from {HEAD_NECK_MIN_MM:.0f} mm)")
    elif max(lengths["thorax"], lengths["abdomen"]) >= MIN_MEASURED_MM:
        region = "thorax" if lengths["thorax"] >= lengths["abdomen"] else "abdomen"
        rule = (f"{lengths['thorax']:.0f} mm of cross-sections with lungs (at least {100 * LUNG_SLICE_FRACTION:.0f}%) "
                f"against {lengths['abdomen']:.0f} mm of wide ones (from {NARROW_MM:.0f} mm) without lungs below them")
    else:
        region, confidence = "thorax", "low"
        rule = ("too little to measure: the body is cut by the field of view or too short, and no lungs; "
                "thorax assumed")

    widths = width[measured & ~cut]
    extent = [_span(np.asarray(body.any(axis=tuple(a for a in range(3) if a != axis)))) * spacing[axis]
              for axis in range(3)]
    evidence = {
        "confidence": confidence,
        "rule": rule,
        "lengths_mm": lengths,
        "body_length_mm": _length(measured, slice_mm),
        "body_extent_mm": {"left_right": round(extent[2], 1), "anterior_posterior": round(extent[1], 1),
                           "inferior_superior": round(extent[0], 1)},
        "width_mm": ({"min": round(float(widths.min())), "median": round(float(np.median(widths))),
                      "max": round(float(widths.max()))} if widths.size else None),
        "width_profile_mm": _profile(width, measured, cut),
        "cut_by_field_of_view": round(float(np.mean(cut[measured])), 2) if measured.any() else 1.0,
        "lung_fraction_of_body": round(float(lungs.sum() / body.sum()), 3),
        "dark_threshold": round(threshold, 1),
    }
    return region, evidence


def _profile(width: np.ndarray, measured: np.ndarray, cut: np.ndarray, points: int = 12) -> list:
    """Widths (mm, rounded to 5) at up to ``points`` levels, superior first; null where not measured,
    '>=W' where the field of view cuts the body."""
    index = np.nonzero(measured)[0]
    if index.size == 0:
        return []
    levels = np.unique(np.linspace(index.max(), index.min(), min(points, index.size)).round().astype(int))[::-1]
    out: list = []
    for k in levels:
        if not measured[k]:
            out.append(None)
        else:
            w = int(5 * round(width[k] / 5))
            out.append(f">={w}" if cut[k] else w)
    return out
