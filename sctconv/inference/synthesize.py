"""The inference core: an image in, its sCT on the same grid out (model grid, normalize, sliding window,
back to HU on the input grid, air outside the body). `sctconv convert` and training's validation share it."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from rich.progress import Progress

from sctconv.hu import HU_MAX, HU_MIN
from sctconv.inference.predict import Backend, predict_body
from sctconv.nn.model import ModelCard
from sctconv.preprocessing.grid import image_like, to_input_grid, to_model_grid
from sctconv.preprocessing.normalize import denormalize_ct, normalize, require_finite


def synthesize(card: ModelCard, backend: Backend, image: sitk.Image, mask: sitk.Image, step: float = 0.3,
               blend: str = "mean", batch_size: int | None = None, progress: Progress | None = None) -> sitk.Image:
    """sCT in HU on exactly ``image``'s grid: -1024 outside ``mask``, clipped to [-1024, 3071]."""
    grid = to_model_grid(image, card.spacing, default=float(sitk.GetArrayViewFromImage(image).min()))
    grid_mask = to_model_grid(mask, card.spacing, sitk.sitkNearestNeighbor)
    x = normalize(sitk.GetArrayViewFromImage(grid), sitk.GetArrayViewFromImage(grid_mask),
                  card.input_normalization)
    y = predict_body(x, sitk.GetArrayViewFromImage(grid_mask), backend, card, step, blend, batch_size, progress)[0]
    require_finite(y, f"the output of model {card.name}")
    if card.architecture.residual_output:
        # The network's output is its input plus a correction: the correction (HU) is brought to the
        # input's own grid and added there, so detail finer than the model grid is kept.
        correction = image_like((y - x) * np.float32(card.target_normalization.std or 1.0), grid)
        source = np.clip(sitk.GetArrayFromImage(image).astype(np.float32), HU_MIN, HU_MAX)
        sct = source + sitk.GetArrayFromImage(to_input_grid(correction, image, 0.0))
    else:
        hu = image_like(denormalize_ct(y, card.target_normalization), grid)
        sct = sitk.GetArrayFromImage(to_input_grid(hu, image, HU_MIN))
    sct[sitk.GetArrayViewFromImage(mask) == 0] = HU_MIN
    return image_like(np.clip(sct, HU_MIN, HU_MAX).astype(np.float32), image)
