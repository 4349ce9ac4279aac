"""The CT segmentation "teacher": frozen feature extractor of the AFP loss, and segmenter for Dice/HD95.

The paper's AFP loss compares multi-layer features of a frozen CT segmentation network on the sCT
and on the CT. Its teacher segments seven groups of TotalSegmentator structures (organs, cardiac,
muscles, bones, ribs, vertebrae); :func:`group_totalsegmentator` maps TotalSegmentator label maps
onto them. Without label maps, :func:`tissue_labels` derives HU tissue classes from the CT itself,
which is what the shipped teacher is trained on. A teacher is an ordinary sctconv model folder
whose card has ``task: "segmentation"`` and one class name per output channel, or an nnU-Net v2
trained model (:mod:`sctconv.nn.nnunet`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sctconv.nn.model import load_model
from sctconv.nn.nnunet import load_nnunet_segmenter, nnunet_folder
from sctconv.nn.segmenter import Segmenter, segmenter_from_model
from sctconv.preprocessing.normalize import Normalization

TISSUE_CLASSES = ("background", "air_lung", "fat", "soft_tissue", "bone")
TISSUE_EDGES_HU = (-400.0, -30.0, 180.0)
"""Inside the body: air/lung below -400 HU, fat to -30, soft tissue to 180, bone above."""

GROUPS = ("background", "organs", "cardiac", "muscles", "bones", "ribs", "vertebrae")
_GROUP_PATTERNS = (
    ("ribs", r"^rib_"),
    ("vertebrae", r"^vertebrae_|^sacrum$"),
    ("cardiac", r"^heart|atrial_appendage|^aorta$|pulmonary_(artery|vein)|vena_cava|brachiocephalic|"
                r"common_carotid|subclavian_artery|iliac_(artery|vena)|portal_vein"),
    ("bones", r"^(humerus|scapula|clavicula|femur|hip|skull|sternum|costal_cartilages)"),
    ("muscles", r"gluteus|iliopsoas|autochthon"),
)


def tissue_labels(ct_hu: np.ndarray, body: np.ndarray) -> np.ndarray:
    """HU tissue classes (indices into :data:`TISSUE_CLASSES`) inside ``body``; 0 outside."""
    labels = np.digitize(ct_hu, TISSUE_EDGES_HU).astype(np.uint8) + 1
    labels[body == 0] = 0
    return labels


def group_totalsegmentator(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """Map a TotalSegmentator label map (``names``: label value → class name) onto :data:`GROUPS`.

    Structures no pattern claims are organs (including brain and spinal cord), as in the paper's
    seven-class grouping.
    """
    lookup = np.zeros(max(max(names, default=0), int(labels.max())) + 1, dtype=np.uint8)
    for value, name in names.items():
        if value == 0:
            continue
        group = next((g for g, pattern in _GROUP_PATTERNS if re.search(pattern, name)), "organs")
        lookup[value] = GROUPS.index(group)
    return lookup[labels]


def load_teacher(folder: Path) -> Segmenter:
    """Load a frozen teacher: a segmentation model folder, or an nnU-Net v2 model (its folder, a
    ``fold_K`` folder in it or a checkpoint file; recognised by its ``plans.json``)."""
    if nnunet_folder(folder) is not None:
        return load_nnunet_segmenter(folder)
    return segmenter_from_model(load_model(folder))


class AFPLoss(nn.Module):
    """Anatomical Feature-Prioritized loss: sum over teacher layers of L1(features(sCT), features(CT)),
    plus ``l1_weight`` x L1(sCT, CT).

    ``pred`` and ``target`` are in the synthesis model's CT z-score (``ct_norm``); they are mapped
    exactly into the teacher's own CT z-score before entering it (the reference code feeds them
    unchanged, which only matches when both statistics agree). Inputs are zero-padded (in the
    teacher's space, air-free zero is the dataset mean) to a multiple of the teacher's divisor.
    ``layers`` indexes the teacher's encoder skips followed by its decoder stages; None = all.
    """

    def __init__(self, teacher: Segmenter, ct_norm: Normalization, l1_weight: float = 0.5,
                 layers: list[int] | None = None) -> None:
        super().__init__()
        self.network = teacher.network
        self.divisor = teacher.divisor
        ct_mean, ct_std = ct_norm.dataset_stats
        t_mean, t_std = teacher.normalization.dataset_stats
        self.scale = ct_std / t_std
        self.shift = (ct_mean - t_mean) / t_std
        self.l1_weight = l1_weight
        self.layers = layers

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for size, div in zip(reversed(x.shape[2:]), reversed(self.divisor)):
            extra = (-size) % div
            pad += [extra // 2, extra - extra // 2]
        return F.pad(x, pad) if any(pad) else x

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = self._pad(pred.float() * self.scale + self.shift)
        y = self._pad(target.float() * self.scale + self.shift)
        fx = self.network.features(x)[:-1]
        with torch.no_grad():
            fy = self.network.features(y)[:-1]
        layers = range(len(fx)) if self.layers is None else self.layers
        afp = sum(F.l1_loss(fx[i], fy[i]) for i in layers)
        return afp + self.l1_weight * F.l1_loss(pred.float(), target.float())
