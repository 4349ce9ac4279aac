"""The preview of a conversion: source and sCT in three planes, with the body outline, as a PNG.

One row for the input and three for the sCT in the CT windows a physicist judges it in: soft tissue
(W400/L40), lung (W1500/L-600) and bone (W1800/L400), and with ``--uncertainty`` one for the
per-voxel standard deviation, each row with its colour bar. Drawn with
matplotlib's object API (no pyplot, no backend switch), so importing this module changes nothing global.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure

from sctconv.preprocessing.grid import body_box

WINDOWS: tuple[tuple[str, float, float], ...] = (("soft tissue", 400.0, 40.0), ("lung", 1500.0, -600.0),
                                                   ("bone", 1800.0, 400.0))
"""The sCT rows: (name, window width, window level) in HU."""
PLANES = ("axial", "coronal", "sagittal")


def _volumes(*images: sitk.Image) -> list[np.ndarray]:
    """The images as (z, y, x) arrays in LPS orientation (z inferior -> superior)."""
    return [sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")) for image in images]


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The slices through the body: the middle of its extent along z, its centroid in y and x
    (the volume's middle where the mask is empty)."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    z = np.nonzero(mask.any(axis=(1, 2)))[0]
    _, y, x = np.nonzero(mask)
    return int((z[0] + z[-1]) // 2), int(round(y.mean())), int(round(x.mean()))


def _planes(array: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial (patient right on the left, anterior up), coronal and sagittal (superior up) slices."""
    z, y, x = centre
    return [array[z], np.flipud(array[:, y, :]), np.flipud(array[:, :, x])]


def _aspects(image: sitk.Image) -> list[float]:
    sx, sy, sz = sitk.DICOMOrient(image, "LPS").GetSpacing()
    return [sy / sx, sz / sx, sz / sy]


def save_preview(source: sitk.Image, sct: sitk.Image, mask: sitk.Image, path: Path, title: str,
                 uncertainty: sitk.Image | None = None) -> None:
    """PNG with the input (top row) and the sCT in the soft-tissue, lung and bone windows (rows below),
    each in the axial, coronal and sagittal planes through the body, the body outline in red; with
    ``uncertainty``, a last row with it (0 to its 99th percentile in the body, colour map)."""
    source_array, sct_array, mask_array = _volumes(source, sct, mask)
    box = body_box(mask_array > 0, np.array(sitk.DICOMOrient(source, "LPS").GetSpacing()[::-1]), 15.0)
    source_array, sct_array, mask_array = source_array[box], sct_array[box], mask_array[box]
    centre = _centre(mask_array > 0)
    masks = _planes(mask_array > 0, centre)
    aspects = _aspects(source)
    inputs = _planes(source_array, centre)
    low, high = np.percentile(np.concatenate([p.ravel() for p in inputs]), [0.5, 99.5])
    rows = [("input", inputs, (float(low), float(high) if high > low else float(low) + 1.0), "value")]
    sct_planes = _planes(sct_array, centre)
    rows += [(f"sCT {name}\nW{width:.0f} L{level:.0f}", sct_planes, (level - width / 2, level + width / 2), "HU")
             for name, width, level in WINDOWS]
    if uncertainty is not None:
        spread = _volumes(uncertainty)[0][box]
        top = float(np.percentile(spread[mask_array > 0], 99)) if (mask_array > 0).any() else 0.0
        rows.append(("uncertainty\n(std)", _planes(spread, centre), (0.0, max(top, 1.0)), "HU (std)"))

    # Column widths follow the planes' physical aspect, so that each image fills its cell.
    shapes = [p.shape for p in inputs]
    ratios = [float(np.clip(s[1] / (s[0] * a), 0.4, 2.5)) for s, a in zip(shapes, aspects)]
    row_inches = min(2.9, 13.0 / (1.07 * sum(ratios)))  # at most about 15 inches wide
    fig = Figure(figsize=(1.07 * row_inches * sum(ratios) + 1.6, row_inches * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 3, gridspec_kw={"width_ratios": ratios})
    for r, (label, planes, window, unit) in enumerate(rows):
        for c, plane in enumerate(planes):
            ax = axes[r, c]
            shown = ax.imshow(plane, cmap="magma" if unit == "HU (std)" else "gray", vmin=window[0],
                              vmax=window[1], aspect=aspects[c], interpolation="nearest")
            if masks[c].any() and not masks[c].all():
                ax.contour(masks[c], levels=[0.5], colors="red", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(PLANES[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
        bar = fig.colorbar(shown, ax=axes[r, :], fraction=0.025, aspect=12, pad=0.01)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(unit, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
