"""The slice grid of a stack: checks of the headers, cosines, sorting along the normal, gaps and uneven
spacing, gantry tilt, and linear resampling onto a regular grid (``--allow-uneven``)."""

from __future__ import annotations

import logging

import numpy as np

from sctconv.errors import SctconvError
from sctconv.io.dicom.entries import SliceEntry, int_or_none
from sctconv.io.dicom.series import Resampling

log = logging.getLogger(__name__)

_SPACING_REL_TOL = 0.01  # uneven slice spacing / gap detection (1 %)
_DUPLICATE_TOL_MM = 1e-3


def check_slices(entries: list[SliceEntry], label: str) -> None:
    """Refuse slices without a position in the patient, colour or inverted-grey images and mixed pixel spacings."""
    for e in entries:
        missing = [
            kw for kw, v in (("ImagePositionPatient", e.ipp), ("ImageOrientationPatient", e.iop),
                             ("PixelSpacing", e.pixel_spacing))
            if v is None
        ]
        if missing:
            where = f"{e.src.name}" + (f" frame {e.frame}" if e.frame else "")
            raise SctconvError(
                f"series {label}: {where} has no valid {', '.join(missing)}, so its position "
                "in the patient is unknown"
            )
        if np.any(e.spacing <= 0):
            raise SctconvError(f"series {label}: {e.src.name} has a non-positive PixelSpacing")
        spp = int_or_none(e.header.get("SamplesPerPixel", 1)) or 1
        if spp != 1:
            raise SctconvError(
                f"series {label} is a colour image ({spp} samples per pixel); "
                "a greyscale MR or CT series is needed"
            )
        photometric = str(e.header.get("PhotometricInterpretation", "MONOCHROME2") or "")
        if photometric == "MONOCHROME1":
            raise SctconvError(
                f"series {label} uses PhotometricInterpretation MONOCHROME1 (inverted grey "
                "scale), which is not a cross-sectional MR/CT encoding sctconv supports"
            )
    ref = entries[0].spacing
    for e in entries[1:]:
        if np.max(np.abs(e.spacing - ref)) > 1e-4 * max(1.0, float(np.max(ref))):
            raise SctconvError(
                f"series {label} mixes pixel spacings ({format_mm(ref[0])}x{format_mm(ref[1])} mm "
                f"and {format_mm(e.spacing[0])}x{format_mm(e.spacing[1])} mm)"
            )


def slice_cosines(entry: SliceEntry, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column cosines (made orthonormal) and the slice normal of ``entry``."""
    r = entry.orientation[:3].copy()
    c = entry.orientation[3:].copy()
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(float(np.dot(r, c))) / (nr * nc) > 1e-3:
        raise SctconvError(
            f"series {label} has an invalid ImageOrientationPatient "
            f"{[round(float(v), 6) for v in entry.orientation]} (row and column cosines must be "
            "perpendicular unit vectors)"
        )
    r /= nr
    c = c / nc
    c = c - np.dot(c, r) * r
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    return r, c, n


def single_slice_step(e: SliceEntry, label: str) -> float:
    """The slice thickness of a one-slice series (SpacingBetweenSlices, SliceThickness, or 1 mm)."""
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        value = e.slice_thickness if kw == "SliceThickness" else e.header.get(kw, None)
        try:
            step = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            step = 0.0
        if step > 0:
            return step
    log.warning("series %s has a single slice without SliceThickness; using 1 mm", label)
    return 1.0


def check_stacking(entries: list[SliceEntry], positions: np.ndarray, normal: np.ndarray,
                    label: str) -> None:
    """Refuse duplicate slice positions and stacks sheared off the slice normal (gantry tilt)."""
    diffs = np.diff(positions)
    dup = np.nonzero(diffs < _DUPLICATE_TOL_MM)[0]
    if dup.size:
        k = int(dup[0])
        hint = ""
        a, b = entries[k].header, entries[k + 1].header
        for kw in ("EchoNumbers", "AcquisitionNumber", "TemporalPositionIdentifier",
                   "ImageType", "EchoTime"):
            if str(a.get(kw, "")) != str(b.get(kw, "")):
                hint = f" (they differ in {kw}: several echoes/acquisitions in one series?)"
                break
        raise SctconvError(
            f"series {label} has {dup.size + 1} images at duplicate positions, e.g. slices "
            f"{k + 1} and {k + 2} both at {format_mm(positions[k])} mm along the slice "
            f"normal{hint}"
        )

    p0 = entries[0].position
    offsets = np.array([e.position - p0 for e in entries])
    along = offsets @ normal
    perp = offsets - np.outer(along, normal)
    shift = np.linalg.norm(perp, axis=1)
    tol = max(0.05, 0.1 * float(np.min(entries[0].spacing)))
    if float(np.max(shift)) > tol:
        k = int(np.argmax(shift))
        angle = float(np.degrees(np.arctan2(shift[k], abs(along[k]))))
        raise SctconvError(
            f"series {label} is sheared: its slices are not stacked along the slice normal "
            f"(gantry tilt of about {angle:.1f} degrees, {format_mm(shift[k])} mm in-plane shift "
            f"at slice {k + 1}); resample it to an orthogonal grid first"
        )


def irregularity(positions: np.ndarray, label: str) -> str | None:
    """A message naming the first gap or uneven step between sorted slice positions, or None."""
    diffs = np.diff(positions)
    dmin = float(np.min(diffs))
    ratios = diffs / dmin
    if np.all(np.abs(ratios - np.round(ratios)) <= _SPACING_REL_TOL * np.round(ratios)):
        expected = dmin
    else:
        expected = float(np.median(diffs))
    bad = np.nonzero(np.abs(diffs - expected) > _SPACING_REL_TOL * expected)[0]
    if not bad.size:
        return None
    k = int(bad[0])
    multiple = round(float(diffs[k]) / expected)
    missing = multiple >= 2 and abs(diffs[k] - multiple * expected) <= (
        _SPACING_REL_TOL * multiple * expected
    )
    kind = "a gap" if missing else "uneven slice spacing"
    more = f" ({bad.size} irregular steps in {len(diffs)})" if bad.size > 1 else ""
    return (
        f"series {label} has {kind}: {format_mm(diffs[k])} mm between slices {k + 1} and "
        f"{k + 2} where {format_mm(expected)} mm is expected{more}"
    )


def most_common_step(diffs: np.ndarray) -> float:
    """The most frequent step (to 0.01 mm; the smallest on a tie), averaged over its members."""
    values, counts = np.unique(np.round(diffs, 2), return_counts=True)
    mode = float(values[int(np.argmax(counts))])
    return float(np.mean(diffs[np.abs(diffs - mode) <= _SPACING_REL_TOL * mode]))


def resample_stack(array: np.ndarray, positions: np.ndarray, step: float, reason: str
                    ) -> tuple[np.ndarray, list[tuple[int, ...]], Resampling]:
    """Slices at ``positions`` (sorted, mm along the normal) interpolated linearly onto the
    regular positions ``positions[0] + k * step`` that lie within the stack; also the indices
    of the original slices that each new slice is made of."""
    count = int(np.floor((positions[-1] - positions[0]) / step + _SPACING_REL_TOL)) + 1
    targets = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = (targets - positions[lower]) / (positions[upper] - positions[lower])
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    out = ((1.0 - weight) * array[lower] + weight * array[upper]).astype(np.float32)
    sources = [tuple(int(i) for i, w in ((lo, 1.0 - wk), (up, wk)) if w > 0)
               for lo, up, wk in zip(lower, upper, weight.ravel())]
    return out, sources, Resampling(reason=reason, original_slice_positions=len(positions),
                                    slices=count, step_mm=step)


def format_mm(x: float) -> str:
    """Millimetres with up to three decimals and at least one."""
    s = f"{x:.3f}".rstrip("0")
    if s.endswith("."):
        s += "0"
    return s
