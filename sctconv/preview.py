"""The preview of a conversion: source, sCT and body mask in three planes, as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def _planes(image: sitk.Image) -> list[np.ndarray]:
    """Middle axial, coronal and sagittal slices (LPS orientation), displayed with the right aspect."""
    oriented = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(oriented)
    z, y, x = (s // 2 for s in array.shape)
    return [array[z], np.flipud(array[:, y, :]), np.flipud(array[:, :, x])]


def _aspects(image: sitk.Image) -> list[float]:
    sx, sy, sz = sitk.DICOMOrient(image, "LPS").GetSpacing()
    return [sy / sx, sz / sx, sz / sy]


def save_preview(source: sitk.Image, sct: sitk.Image, mask: sitk.Image, path: Path, title: str) -> None:
    """PNG with the input (top) and the sCT (bottom, -1024..1500 HU), body outline in red."""
    rows = [("input", _planes(source), None), ("sCT (HU)", _planes(sct), (-1024, 1500))]
    masks = _planes(mask)
    aspects = _aspects(source)
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    for r, (label, planes, window) in enumerate(rows):
        for c, plane in enumerate(planes):
            ax = axes[r, c]
            if window is None:
                window = tuple(np.percentile(planes[0], [0.5, 99.5]))
            ax.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[c],
                      interpolation="nearest")
            ax.contour(masks[c], levels=[0.5], colors="red", linewidths=0.6)
            ax.set_axis_off()
            ax.set_title(f"{label} - {('axial', 'coronal', 'sagittal')[c]}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
