"""Size guards: work that no real scan needs (a wrong voxel size, a typo in --step) is refused before
it starts, with what was found; ``convert --allow-large`` runs it anyway."""

from __future__ import annotations

import math

import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.inference.predict import window_count
from sctconv.nn.model import ModelCard
from sctconv.preprocessing.grid import model_grid_size

MAX_EXTENT_MM = 2000.0
"""No body is longer: a whole-body CT spans up to about 1.9 m."""

MAX_VOXELS = 2 ** 29
"""537 M voxels, on the input's grid or the model's (about 12 GB of working arrays)."""

MAX_WINDOWS = 20_000
"""A 2 m whole-body field at step 0.3 is about 8,000 windows of the shipped models."""

MIN_STEP = 0.1
"""Below it every voxel is predicted over a thousand times."""

INSIST = "pass --allow-large to run it anyway"


def check_step(step: float) -> None:
    """Refuse a window step below :data:`MIN_STEP`."""
    if step < MIN_STEP:
        raise SctconvError(f"--step {step:g} would predict every voxel about {step ** -3:.3g} times; use "
                           f"{MIN_STEP:g} to 1 (the paper's is 0.3), or {INSIST}")


def check_input_size(image: sitk.Image, what: str) -> None:
    """Refuse an input longer than :data:`MAX_EXTENT_MM` along an axis, or with over :data:`MAX_VOXELS`."""
    size, spacing = image.GetSize(), image.GetSpacing()
    extent = [n * s for n, s in zip(size, spacing)]
    if max(extent) > MAX_EXTENT_MM:
        raise SctconvError(f"{what} spans {' x '.join(f'{e:.0f}' for e in extent)} mm ({'x'.join(map(str, size))} "
                           f"voxels of {' x '.join(f'{s:g}' for s in spacing)} mm), more than any body "
                           f"({MAX_EXTENT_MM:.0f} mm): is its voxel size right? If it is, {INSIST}")
    if math.prod(size) > MAX_VOXELS:
        raise SctconvError(f"{what} has {math.prod(size) / 1e6:.3g} M voxels ({'x'.join(map(str, size))}), more "
                           f"than {MAX_VOXELS / 1e6:.3g} M; {INSIST}")


def check_workload(image: sitk.Image, card: ModelCard, step: float) -> None:
    """Refuse a model grid of over :data:`MAX_VOXELS` or over :data:`MAX_WINDOWS` windows (whole grid)."""
    size = model_grid_size(image, card.spacing)[::-1]  # z, y, x as the card's patch
    shape = "x".join(map(str, size))
    if math.prod(size) > MAX_VOXELS:
        raise SctconvError(f"on model {card.name}'s grid ({' x '.join(f'{s:g}' for s in card.spacing)} mm) the "
                           f"input becomes {shape} = {math.prod(size) / 1e6:.3g} M voxels, more than "
                           f"{MAX_VOXELS / 1e6:.3g} M; {INSIST}")
    windows = math.prod(window_count(n, p, step) for n, p in zip(size, card.patch_size))
    if windows > MAX_WINDOWS:
        raise SctconvError(f"--step {step:g} on model {card.name}'s {shape} grid places {windows} windows of "
                           f"{'x'.join(map(str, card.patch_size))}, more than {MAX_WINDOWS}; use a larger --step, "
                           f"or {INSIST}")
