"""Body masks: the region where the synthetic CT carries tissue; outside it is air (-1024 HU)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sctconv.errors import SctconvError
from sctconv.preprocess import image_like


def body_mask_from_array(array: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask of a (z, y, x) array: voxels above ``threshold``, largest component, holes filled.

    Holes are filled in 3D and then slice by slice (axis 0), so that lungs, bowel gas and
    airways that touch the outside in 3D but are enclosed in each slice still count as body.
    """
    foreground = array > threshold
    foreground = _edge_continued(ndimage.binary_opening, foreground, iterations=1)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = _edge_continued(ndimage.binary_closing, labels == int(np.argmax(sizes)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return mask.astype(np.uint8)


def _edge_continued(operation: Callable[..., np.ndarray], mask: np.ndarray, iterations: int) -> np.ndarray:
    """A scipy binary opening/closing with the volume's edges continued outward, so that a body cut
    by the field of view keeps its edge slices (scipy erodes them against a zero border)."""
    padded = np.pad(mask, iterations, mode="edge")
    result = operation(padded, iterations=iterations)
    return result[tuple(slice(iterations, -iterations) for _ in range(mask.ndim))]


def mr_threshold(array: np.ndarray) -> float:
    """Intensity threshold between background and body for an MR (or any non-HU) volume.

    Otsu on the intensities below the 99.5th percentile, capped at 20% of that percentile so that
    dark tissue inside a bright image is not cut away.
    """
    values = array[np.isfinite(array)].astype(np.float32)
    high = float(np.percentile(values, 99.5))
    low = float(values.min())
    if high <= low:
        raise SctconvError("the input volume is constant; it holds no anatomy")
    clipped = np.clip(values, low, high)
    otsu = _otsu(clipped)
    return min(otsu, low + 0.2 * (high - low))


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centers) / np.maximum(weight0, 1)
    total = (hist * centers).sum()
    mean1 = (total - np.cumsum(hist * centers)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


CT_BODY_THRESHOLD_HU = -500.0
"""Voxels above this value in a CT or CBCT (in HU) are body candidates."""


def body_mask(image: sitk.Image, modality: str) -> sitk.Image:
    """Body mask (uint8, same grid as ``image``) of an MR (``"mr"``) or CBCT/CT (``"cbct"``/``"ct"``)."""
    array = sitk.GetArrayViewFromImage(image)
    threshold = mr_threshold(array) if modality == "mr" else CT_BODY_THRESHOLD_HU
    return image_like(body_mask_from_array(array, threshold), image)
