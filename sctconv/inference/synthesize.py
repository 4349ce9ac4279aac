"""The inference core: an image in, its sCT on the same grid out (model grid, normalize, sliding window,
back to HU on the input grid, air outside the body). `sctconv convert` and training's validation share it.

Test-time augmentation (flipped copies of the input, predicted and flipped back) and ensembles (several
models) are members whose sCTs are averaged on the input grid. With ``uncertainty``, each member also
blends the squares of its windows' predictions, so the per-voxel standard deviation over every member and
every overlapping window comes out of the same pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from rich.progress import Progress

from sctconv.hu import HU_MAX, HU_MIN
from sctconv.inference.predict import Backend, predict_body
from sctconv.nn.model import ModelCard
from sctconv.preprocessing.grid import CROP_MARGIN_MM, body_box, image_like, to_input_grid, to_model_grid
from sctconv.preprocessing.normalize import anchor_map, denormalize_ct, normalize, require_finite

FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,), (1, 2), (0, 2), (0, 1), (0, 1, 2))
"""Test-time augmentation: the axes (z, y, x) each member flips; the first N are used for ``tta`` N."""


@dataclass(frozen=True)
class Member:
    """One network of an ensemble: its card and the backend that runs it."""

    card: ModelCard
    backend: Backend


@dataclass(frozen=True)
class Synthesis:
    """The sCT (HU, input grid) and, when asked, the per-voxel standard deviation (HU) of its members'
    and windows' predictions, 0 outside the body."""

    sct: sitk.Image
    uncertainty: sitk.Image | None
    anchor_maps: tuple[tuple[float, float], ...]  # per member, the input's (scale, offset) before its z-score


@dataclass(frozen=True)
class GridInput:
    """A member's input on its model grid: the image, the body mask, the normalized array and the
    (scale, offset) its anchors applied before the z-score (:func:`anchor_map`)."""

    image: sitk.Image
    mask: np.ndarray
    x: np.ndarray
    anchor: tuple[float, float]


def grid_input(card: ModelCard, image: sitk.Image, mask: sitk.Image) -> GridInput:
    """``image`` and ``mask`` brought to ``card``'s model grid, the image normalized as the card says (its
    anchors measured within the body's box widened by :data:`CROP_MARGIN_MM`, as training's crops)."""
    grid = to_model_grid(image, card.spacing, default=float(sitk.GetArrayViewFromImage(image).min()))
    grid_mask = sitk.GetArrayFromImage(to_model_grid(mask, card.spacing, sitk.sitkNearestNeighbor))
    grid_array = sitk.GetArrayViewFromImage(grid)
    box = body_box(grid_mask > 0, card.spacing, CROP_MARGIN_MM)
    anchor = anchor_map(grid_array[box], grid_mask[box], card.input_normalization)
    return GridInput(grid, grid_mask, normalize(grid_array, grid_mask, card.input_normalization, anchor), anchor)


def synthesize(members: list[Member], image: sitk.Image, mask: sitk.Image, step: float = 0.3, blend: str = "mean",
               batch_size: int | None = None, progress: Progress | None = None, tta: int = 1,
               uncertainty: bool = False) -> Synthesis:
    """sCT in HU on exactly ``image``'s grid: -1024 outside ``mask``, clipped to [-1024, 3071]; the mean of
    every member under the first ``tta`` flips of :data:`FLIPS`."""
    if not 1 <= tta <= len(FLIPS):
        raise ValueError(f"tta must be 1 to {len(FLIPS)}")
    source = sitk.GetArrayFromImage(image).astype(np.float32)
    first = np.zeros(source.shape, np.float64)
    second = np.zeros(source.shape, np.float64) if uncertainty else None
    count, anchors = 0, []
    for member in members:
        model_input = grid_input(member.card, image, mask)
        anchors.append(model_input.anchor)
        for mean, mean_square in member_moments(member, image, model_input, source, FLIPS[:tta], step, blend,
                                                batch_size, progress, uncertainty):
            first += mean
            if second is not None and mean_square is not None:
                second += mean_square
            count += 1
    body = sitk.GetArrayViewFromImage(mask) > 0
    sct = np.where(body, np.clip(first / count, HU_MIN, HU_MAX), HU_MIN).astype(np.float32)
    spread = None
    if second is not None:
        std = np.sqrt(np.maximum(second / count - (first / count) ** 2, 0.0))
        spread = image_like(np.where(body, std, 0.0).astype(np.float32), image)
    return Synthesis(image_like(sct, image), spread, tuple(anchors))


def member_moments(member: Member, image: sitk.Image, model_input: GridInput, source: np.ndarray,
                   flips: tuple[tuple[int, ...], ...], step: float, blend: str, batch_size: int | None,
                   progress: Progress | None, squares: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """For each of ``flips``, one member's sCT (HU, input grid, unclipped) and, with ``squares``, the mean
    square of its windows' predictions there: the input on the model grid (:func:`grid_input`) flipped
    along the flip's axes, and the prediction flipped back."""
    card, grid, x = member.card, model_input.image, model_input.x
    scale, offset = model_input.anchor
    mean, std = card.target_normalization.dataset_stats

    def on_input_grid(array: np.ndarray, outside: float) -> np.ndarray:
        return sitk.GetArrayFromImage(to_input_grid(image_like(array.astype(np.float32), grid), image, outside))

    for flip in flips:
        flipped = predict_body(np.ascontiguousarray(np.flip(x, flip)),
                               np.ascontiguousarray(np.flip(model_input.mask, flip)),
                               member.backend, card, step, blend, batch_size, progress, squares)
        y = np.flip(flipped.mean[0], flip)
        require_finite(y, f"the output of model {card.name}")
        y_square = None if flipped.mean_square is None else np.flip(flipped.mean_square[0], flip)
        if card.architecture.residual_output:
            # The network's output is its (anchored) input plus a correction: the correction (HU) is
            # brought to the input's own grid and added there to the input under the same anchor map, so
            # detail finer than the model grid is kept.
            low, high = card.input_normalization.clip or (HU_MIN, HU_MAX)
            base = np.clip(source * np.float32(scale) + np.float32(offset), low, high)  # what the network saw
            correction = on_input_grid((y - x) * std, 0.0)
            square = None if y_square is None else on_input_grid((y_square - 2 * x * y + x * x) * std * std, 0.0)
            yield base + correction, None if square is None else base * base + 2 * base * correction + square
        else:
            yield (on_input_grid(denormalize_ct(y, card.target_normalization), HU_MIN),
                   None if y_square is None else on_input_grid(y_square * std * std + 2 * y * std * mean + mean * mean,
                                                               HU_MIN * HU_MIN))
