"""Body masks: the region where the synthetic CT carries tissue; outside it is air (-1024 HU).

The body is what lies above an intensity threshold, freed from thin attached objects (couch, headrest,
immobilisation shell) and from separate ones, with every dark region that the body encloses filled:
lungs, airways, sinuses, bowel gas, and in an MR cortical bone. Enclosure is decided per cross-section
(slices along the body's long axis), where a field of view or the image border that cuts the body
counts as closed: a lung that a CBCT's cylindrical field of view cuts open is still filled, while the
air between the body and the edge of the field of view, or under the back above the couch, is not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sctconv.errors import SctconvError
from sctconv.hu import CT_BODY_THRESHOLD_HU
from sctconv.preprocessing.grid import image_like

DEVICE_OPENING_MM = 5.0
"""Radius of the opening that detaches thinner structures (couch shells, headrests, immobilisation
masks and boards) from the body in a CT/CBCT; body parts this thin are kept next to the body's bulk or,
inside it, with the regions it encloses."""
CLOSING_MM = 4.0
"""In-plane radius of the closing that bridges small gaps in the body's outline."""
MIN_PART_FRACTION = 0.1
"""Separate parts at least this fraction of the largest one's volume are body too (arms, legs)."""
HULL_FRACTION = 0.5
"""A dark region cut open by the field of view or the image border is inside the body when at least
this fraction of it lies within the convex hull of the body's cross-section ..."""
BODY_CONTACT_RATIO = 1.2
"""... and its border with the body is at least this many times its border with the field of view's
edge and the image border (in 3D, summed over its cross-sections). The air between the body and the edge
of the field of view touches both about equally."""
SLICE_HULL_FRACTION = 0.8
SLICE_BODY_CONTACT_RATIO = 3.0
"""The same, stricter, for a single cross-section of a dark region whose 3D whole was not filled (a
region that opens to the outside in another slice)."""
DEFAULT_SPACING_MM = 2.0
"""Voxel size assumed by :func:`body_mask_from_array` when it is not given."""
FIELD_OF_VIEW_MIN_FRAME = 0.25
"""The most frequent value on the image border marks the outside of a field of view (a CBCT's cylinder,
a CT's reconstruction circle) when it makes up at least this fraction of the border ..."""
FIELD_OF_VIEW_MIN_SLICES = 0.75
"""... and then where it holds, in reach of the border, in at least this fraction of the slices."""

_CROSS = np.zeros((3, 3, 3), dtype=bool)
_CROSS[1] = ndimage.generate_binary_structure(2, 1)
_SQUARE = np.zeros((3, 3, 3), dtype=bool)
_SQUARE[1] = True
_ALONG = np.zeros((3, 3, 3), dtype=bool)
_ALONG[:, 1, 1] = True


def body_mask_from_array(array: np.ndarray, threshold: float, spacing: tuple[float, float, float] | None = None,
                         axis: int = 0, detach_devices: bool = True) -> np.ndarray:
    """Body mask (uint8) of an array: voxels above ``threshold``, with every region the body encloses.

    ``spacing`` is the voxel size in mm in the array's axis order (``DEFAULT_SPACING_MM`` in every
    direction when None); ``axis`` is the slice axis, along the body (axis 0 for an axial (z, y, x)
    array).
    ``detach_devices`` (for CT/CBCT, where couch and headrest show) cuts thin structures off the body;
    for an MR, where they do not show but a scalp or chest wall between dark bone or lung can be thin,
    leave it False.
    """
    volume = np.moveaxis(np.asarray(array), axis, 0)
    if spacing is None:
        pixel_mm = slice_mm = DEFAULT_SPACING_MM
    else:
        in_plane = [float(s) for i, s in enumerate(spacing) if i != axis % volume.ndim]
        pixel_mm = float(np.sqrt(in_plane[0] * in_plane[1]))
        slice_mm = float(spacing[axis % volume.ndim])
    outside = _outside_field_of_view(volume)
    foreground = np.greater(volume, threshold) & ~outside  # NaN is not foreground
    edge = _frame(volume.shape)
    if outside.any():
        edge |= ndimage.binary_dilation(outside, _CROSS)
    radii = (int(round(DEVICE_OPENING_MM / slice_mm)), max(1, int(round(DEVICE_OPENING_MM / pixel_mm))))
    body = _select_body(foreground, outside, radii if detach_devices else None)
    if detach_devices and not body.any():  # a body thinner than the opening everywhere: keep it whole
        body = _select_body(foreground, outside, None)
    if not body.any():
        return np.zeros(array.shape, dtype=np.uint8)
    body = _fill_enclosed(body, outside, edge, max(1, int(round(CLOSING_MM / pixel_mm))))
    return np.moveaxis(body, 0, axis).astype(np.uint8)


def _select_body(foreground: np.ndarray, outside: np.ndarray, radii: tuple[int, int] | None) -> np.ndarray:
    """The large parts of ``foreground`` after an opening.

    ``radii`` None: a one-voxel 3D opening, then the large components (MR). Otherwise an opening by
    ``radii`` (slices, pixels), with the field of view's outside and the volume's border counted as
    foreground so that a body cut by them keeps its edge: thinner structures come off, in-plane or
    along the body (a board that touches the shoulders in a few slices). The large parts of what
    remains grow back into the foreground within ``radii`` + 1 of themselves (their surface, but not
    along a couch or into a headrest). What the opening cut off inside the body (vessels in the lungs)
    comes back with the regions the body encloses.
    """
    if radii is not None:
        slices, pixels = radii
        core = _in_plane(ndimage.binary_erosion, foreground | outside, pixels, border_value=1)
        if slices:
            core = ndimage.binary_erosion(core, _ALONG, iterations=slices, border_value=1)
        core &= ~outside
    else:
        core = _edge_continued(ndimage.binary_opening, foreground, iterations=1)
    labels, count = ndimage.label(core)
    if count == 0:
        return core
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= MIN_PART_FRACTION * sizes.max()
    keep[0] = False
    core = keep[labels]
    if radii is None:
        return core
    reach = _in_plane(ndimage.binary_dilation, core, pixels + 1)
    reach = ndimage.binary_dilation(reach, _ALONG, iterations=slices + 1)
    return ndimage.binary_dilation(core, iterations=-1, mask=foreground & reach)


def _fill_enclosed(body: np.ndarray, outside: np.ndarray, edge: np.ndarray, radius: int) -> np.ndarray:
    """``body`` closed in-plane (``radius``) with the dark regions it encloses in each slice filled.

    A region that does not reach the field of view's outside or the image border in its slice is a
    hole. A region that does is decided by its geometry (see HULL_FRACTION): first as a whole in 3D,
    then slice by slice for what that left out. Detached objects (couch, headrest) count as
    background: a region that reaches past them to the outside is not enclosed.
    """
    closed = _in_plane(ndimage.binary_dilation, body, radius)
    closed = (_in_plane(ndimage.binary_erosion, closed, radius, border_value=1) | body) & ~outside
    background = ~closed & ~outside
    labels, count = ndimage.label(background, structure=_CROSS)
    reaches_edge = np.zeros(count + 1, dtype=bool)
    reaches_edge[np.unique(labels[edge & background])] = True
    reaches_edge[0] = True
    closed |= ~reaches_edge[labels]

    background = ~closed & ~outside
    walls = edge & background
    near_body = ndimage.binary_dilation(closed, _CROSS) & background
    in_hull = _rasterize(*_convex_hull_rows(closed), closed.shape[2]) & background
    for structure, fraction, ratio in ((None, HULL_FRACTION, BODY_CONTACT_RATIO),
                                       (_CROSS, SLICE_HULL_FRACTION, SLICE_BODY_CONTACT_RATIO)):
        labels, count = ndimage.label(background, structure=structure)
        if count == 0:
            break
        size = np.bincount(labels.ravel(), minlength=count + 1)
        inside = np.bincount(labels[in_hull], minlength=count + 1)
        contact_body = np.bincount(labels[near_body], minlength=count + 1)
        contact_edge = np.bincount(labels[walls], minlength=count + 1)
        fill = (inside >= fraction * size) & (contact_body >= ratio * contact_edge)
        fill[0] = False
        filled = fill[labels]
        closed |= filled
        background &= ~filled
    return closed


def _outside_field_of_view(volume: np.ndarray) -> np.ndarray:
    """Where ``volume`` (slices along axis 0) is outside its field of view: the fill value of a CBCT
    beyond its cylinder (or of a CT beyond its reconstruction circle), in reach of the image border."""
    border = _border_values(volume)
    values, counts = np.unique(border[np.isfinite(border)], return_counts=True)
    if values.size == 0 or counts.max() < FIELD_OF_VIEW_MIN_FRAME * border.size:
        return np.zeros(volume.shape, dtype=bool)
    fill = volume == values[int(np.argmax(counts))]
    # Where it holds in most slices (a cylinder; air voxels that happen to have the value do not line up
    # from slice to slice, nor does the background of an MR that is exactly zero around a body whose
    # outline changes), and reaches the image border.
    fill &= fill.mean(axis=0) >= FIELD_OF_VIEW_MIN_SLICES
    labels, count = ndimage.label(fill, structure=_CROSS)
    on_border = np.zeros(count + 1, dtype=bool)
    on_border[np.unique(labels[_frame(volume.shape)])] = True
    on_border[0] = False
    return on_border[labels]


def _frame(shape: tuple[int, ...]) -> np.ndarray:
    """The outermost rows and columns of every slice."""
    frame = np.zeros(shape, dtype=bool)
    frame[:, 0, :] = frame[:, -1, :] = frame[:, :, 0] = frame[:, :, -1] = True
    return frame


def _in_plane(operation: Callable[..., np.ndarray], mask: np.ndarray, radius: int, **kwargs) -> np.ndarray:
    """A scipy binary erosion or dilation in every slice by an octagon of ``radius`` pixels."""
    squares = radius // 2
    if squares:
        mask = operation(mask, _SQUARE, iterations=squares, **kwargs)
    return operation(mask, _CROSS, iterations=radius - squares, **kwargs)


def _convex_hull_rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) column of the convex hull of ``mask`` in each slice and row, (z, y) arrays."""
    low = np.empty(mask.shape[:2])
    high = np.empty(mask.shape[:2])
    for k in range(mask.shape[0]):
        low[k], high[k] = _hull_rows(mask[k])
    return low, high


def _rasterize(low: np.ndarray, high: np.ndarray, width: int) -> np.ndarray:
    """The (z, y, x) mask, ``width`` columns, of the column intervals [low, high] of every slice and row."""
    columns = np.arange(width)
    return (columns >= low[:, :, None]) & (columns <= high[:, :, None])


def _hull_rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a 2D ``mask``, the first and last column of its convex hull (first > last: none)."""
    rows_count, columns_count = mask.shape
    low = np.full(rows_count, float(columns_count))
    high = np.full(rows_count, -1.0)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return low, high
    left = mask[rows].argmax(axis=1).astype(np.float64)
    right = (columns_count - 1 - mask[rows, ::-1].argmax(axis=1)).astype(np.float64)
    span = np.arange(rows[0], rows[-1] + 1)
    # The hull's left edge is the greatest convex function below the rows' first columns, its right
    # edge the least concave one above their last columns.
    low[span] = np.ceil(np.interp(span, *_lower_convex_envelope(rows, left)) - 1e-6)
    high[span] = np.floor(-np.interp(span, *_lower_convex_envelope(rows, -right)) + 1e-6)
    return low, high


def _lower_convex_envelope(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the greatest convex function below the points (x, y), x increasing (monotone chain)."""
    hx: list[float] = []
    hy: list[float] = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        while len(hx) >= 2 and (hx[-1] - hx[-2]) * (yi - hy[-2]) <= (hy[-1] - hy[-2]) * (xi - hx[-2]):
            hx.pop()
            hy.pop()
        hx.append(xi)
        hy.append(yi)
    return np.array(hx), np.array(hy)


def _edge_continued(operation: Callable[..., np.ndarray], mask: np.ndarray, iterations: int) -> np.ndarray:
    """A scipy binary opening/closing with the volume's edges continued outward, so that a body cut
    by the field of view keeps its edge slices (scipy erodes them against a zero border)."""
    padded = np.pad(mask, iterations, mode="edge")
    result = operation(padded, iterations=iterations)
    return result[tuple(slice(iterations, -iterations) for _ in range(mask.ndim))]


def mr_threshold(array: np.ndarray) -> float:
    """Intensity threshold between background and body for an MR (or any non-HU) volume.

    Otsu on the intensities below the 99.5th percentile, capped at 20% of that percentile so that dark
    tissue inside a bright image is not cut away, and lower still where the background is known to be
    darker: at 1.5 times the 99th percentile of the image border (where the body does not fill it) but
    not below 3% of the range. Dim tissue at the body's outline (a T2's muscle, a T1's skin) then stays
    above it, so the outline stays closed around what is as dark as air inside it: lungs, cortical bone.
    """
    values = array[np.isfinite(array)].astype(np.float32)
    high = float(np.percentile(values, 99.5))
    low = float(values.min())
    if high <= low:
        raise SctconvError("the input volume is constant; it holds no anatomy")
    clipped = np.clip(values, low, high)
    otsu = _otsu(clipped)
    threshold = min(otsu, low + 0.2 * (high - low))
    border = _border_values(np.asarray(array))
    border = border[np.isfinite(border)]
    if border.size:
        background = 1.5 * float(np.percentile(border, 99)) - 0.5 * low
        threshold = min(threshold, max(background, low + 0.03 * (high - low)))
    return threshold


def _border_values(volume: np.ndarray) -> np.ndarray:
    """The values on the outermost rows and columns of every slice (axis 0) of a 3D ``volume``."""
    if volume.ndim != 3:
        return volume.ravel()
    return np.concatenate([volume[:, 0, :].ravel(), volume[:, -1, :].ravel(),
                           volume[:, :, 0].ravel(), volume[:, :, -1].ravel()])


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


def _slice_axis(image: sitk.Image) -> int:
    """The array axis (z, y, x order) that runs closest to the patient's long (inferior-superior) axis."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))  # the index axis with the largest S component
    return 2 - index_axis


def body_mask(image: sitk.Image, modality: str) -> sitk.Image:
    """Body mask (uint8, same grid as ``image``) of an MR (``"mr"``) or CBCT/CT (``"cbct"``/``"ct"``)."""
    array = sitk.GetArrayViewFromImage(image)
    threshold = mr_threshold(array) if modality == "mr" else CT_BODY_THRESHOLD_HU
    mask = body_mask_from_array(array, threshold, spacing=image.GetSpacing()[::-1], axis=_slice_axis(image),
                                detach_devices=modality != "mr")
    return image_like(mask, image)
