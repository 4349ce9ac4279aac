"""How good a model under training is: validation during training (held-out volumes through the
sliding window), and the final metrics written into the model card."""

from __future__ import annotations

import numpy as np

from sctconv.errors import SctconvError
from sctconv.evaluation.image_metrics import bone_dice, image_metrics, mae
from sctconv.hu import HU_MAX, HU_MIN
from sctconv.inference.predict import TorchBackend, predict_body, sliding_window
from sctconv.nn.model import ModelCard
from sctconv.nn.network import UNet
from sctconv.preprocessing.normalize import denormalize_ct, normalize
from sctconv.training.data import Case, CaseArrays, PreparedCase


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict[int, float]:
    """Dice of each foreground class present in ``truth``."""
    return {c: float(2 * np.sum((pred == c) & (truth == c)) / (np.sum(pred == c) + np.sum(truth == c)))
            for c in range(1, classes) if np.any(truth == c)}


def validate_synthesis(network: UNet, cases: list[CaseArrays], card: ModelCard,
                       device: str) -> dict[str, float]:
    """Mean L1 (normalized) and MAE in HU inside the body of whole validation volumes (sliding window
    at step 0.5, to keep it quick)."""
    network.eval()
    backend = TorchBackend(network, device)
    target = card.target_normalization
    mean, std = target.dataset_stats
    losses, scores = [], []
    for case in cases:
        pred = predict_body(case.x, case.mask, backend, card, step=0.5).mean
        losses.append(float(np.abs(pred[0] - case.y).mean()))
        hu_pred = denormalize_ct(pred[0], target)
        hu_true = case.y * std + mean
        scores.append(float(np.abs(hu_pred - hu_true)[case.mask > 0].mean()))
    network.train()
    return {"val_loss": float(np.mean(losses)), "val_mae": float(np.mean(scores))}


def validate_segmentation(network: UNet, cases: list[CaseArrays], card: ModelCard,
                          device: str) -> dict[str, float]:
    """Mean Dice of whole validation volumes (sliding window at step 0.5, to keep it quick)."""
    network.eval()
    backend = TorchBackend(network, device)
    scores = []
    for case in cases:
        pred = predict_body(case.x, case.mask, backend, card, step=0.5).mean
        scores.append(np.mean(list(dice_per_class(pred.argmax(0), case.y, len(card.classes)).values())))
    network.train()
    return {"val_dice": float(np.mean(scores))}


def teacher_metrics(network: UNet, card: ModelCard, cases: list[CaseArrays], device: str) -> dict:
    """Per-class Dice of the teacher on the validation cases (model grid)."""
    backend = TorchBackend(network, device)
    per_class: dict[str, list[float]] = {}
    for case in cases:
        pred = sliding_window(case.x, backend, card.patch_size, step=0.5, blend="gaussian").argmax(0)
        for c, dice in dice_per_class(pred, case.y, len(card.classes)).items():
            per_class.setdefault(card.classes[c], []).append(dice)
    means = {name: float(np.mean(values)) for name, values in per_class.items()}
    return {"cases": len(cases), "mean_dice": float(np.mean(list(means.values()))) if means else 0.0,
            "dice": means, "evaluated_on": "validation cases"}


WATER_HU = 0.0
"""The constant CT that a model has to beat: water everywhere inside the body."""


def final_metrics(network: UNet, card: ModelCard, cases: list[PreparedCase], modality: str,
                  device: str) -> dict[str, float | int | str | dict]:
    """Mean MAE / PSNR / MS-SSIM (SynthRAD2025 definitions) and bone Dice of the sCT inside the body,
    with baselines: the MAE of a constant water CT, and for CBCT the MAE of the uncorrected CBCT;
    over all cases and per region.

    On each case's own grid, as `sctconv convert` makes the sCT, when the raw files are on this
    machine; else (a prepared dataset alone) on the model grid, from the prepared arrays.
    """
    backend = TorchBackend(network, device)
    own_grid = all(case.source is not None for case in cases)
    rows = []
    for case in cases:
        gt, sct, inside, image = (own_grid_arrays(case.source, card, backend, modality)
                                  if own_grid and case.source is not None else model_grid_arrays(case, card, backend))
        scores = image_metrics(gt, sct, inside)
        row = {"mae_hu": scores["mae"], "psnr_db": scores["psnr"], "ms_ssim": scores["ms_ssim"],
               "bone_dice": bone_dice(gt, sct, inside),
               "constant_water_mae_hu": mae(gt, np.where(inside > 0, WATER_HU, HU_MIN), inside)}
        if modality == "cbct" and image is not None:
            row["input_cbct_mae_hu"] = mae(gt, np.clip(image, HU_MIN, HU_MAX), inside)
        rows.append((case.region or "unknown", row))

    def means(selected: list[dict]) -> dict[str, float]:
        return {key: float(np.mean([r[key] for r in selected])) for key in selected[0]}

    where = "validation cases, own grids" if own_grid else "validation cases, model grid (prepared dataset)"
    if not rows:
        return {"cases": 0, "evaluated_on": "none"}
    regions = sorted({region for region, _ in rows})
    per_region = {region: {"cases": sum(1 for r, _ in rows if r == region),
                           **means([row for r, row in rows if r == region])} for region in regions}
    return {"cases": len(rows), **means([row for _, row in rows]), "per_region": per_region, "evaluated_on": where}


def own_grid_arrays(case: Case, card: ModelCard, backend: TorchBackend,
                    modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CT, sCT, mask and input of a raw case on its own grid, the sCT made as `sctconv convert` does."""
    import SimpleITK as sitk  # reading raw images; a prepared dataset trains without SimpleITK

    from sctconv.inference.synthesize import Member, synthesize
    from sctconv.training.prepare import load_case_hu

    image, ct, mask = load_case_hu(case, modality)
    sct = synthesize([Member(card, backend)], image, mask).sct
    array = sitk.GetArrayFromImage
    return array(ct), array(sct), array(mask), array(image)


def model_grid_arrays(case: PreparedCase, card: ModelCard,
                      backend: TorchBackend) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """CT, sCT, mask and input of a prepared case on the model grid (sliding window at step 0.3, mean
    blending, -1024 HU outside the body, as `sctconv convert`)."""
    arrays = case.load()
    if arrays.input is None:
        raise SctconvError(f"prepared case {case.name} has no input image (a CT-only dataset, --task ct)")
    x = normalize(arrays.input, arrays.mask, card.input_normalization)
    sct = denormalize_ct(predict_body(x, arrays.mask, backend, card).mean[0], card.target_normalization)
    sct[arrays.mask == 0] = HU_MIN
    return arrays.ct, sct, arrays.mask, arrays.input
