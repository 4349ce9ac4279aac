"""Stage 1 (L1) against stage 2 (AFP fine-tuned) on held-out cases: where does AFP change the sCT?

    python benchmarks/afp.py L1_MODEL AFP_MODEL HELDOUT_DIR TEACHER [--task mr]

For each held-out case (``<case>/{mr|cbct,ct,mask}.*``) both models convert the input; printed per
model: MAE / PSNR / MS-SSIM (SynthRAD2025 definitions), MAE inside bone (CT > 300 HU) and inside
soft tissue (-100..300 HU), and the teacher's mean Dice between its segmentation of the sCT and of
the CT, which is what the AFP loss targets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sctconv.evaluation.evaluate import segment, segmentation_metrics
from sctconv.evaluation.image_metrics import image_metrics, mae
from sctconv.inference.predict import TorchBackend
from sctconv.inference.synthesize import synthesize
from sctconv.nn.model import load_model
from sctconv.nn.teacher import load_teacher
from sctconv.training.data import discover_cases
from sctconv.training.prepare import load_case_hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs=2)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--task", default="mr")
    args = parser.parse_args()
    teacher = load_teacher(args.teacher)
    cases = discover_cases(args.heldout, args.task)
    for folder in args.models:
        model = load_model(folder)
        backend = TorchBackend(model.network, "cpu")
        rows = []
        for case in cases:
            image, ct, mask = load_case_hu(case, args.task)
            sct = synthesize(model.card, backend, image, mask)
            gt, pred, inside = (sitk.GetArrayFromImage(i) for i in (ct, sct, mask))
            scores = image_metrics(gt, pred, inside)
            bone = inside * (gt > 300)
            soft = inside * (gt > -100) * (gt <= 300)
            labels_ct = sitk.GetArrayFromImage(segment(teacher, ct))
            labels_sct = sitk.GetArrayFromImage(segment(teacher, sct))
            seg = segmentation_metrics(labels_ct, labels_sct, ct.GetSpacing()[::-1])
            rows.append([scores["mae"], scores["psnr"], scores["ms_ssim"], mae(gt, pred, bone), mae(gt, pred, soft),
                         seg["dice"]])
        mean = np.mean(rows, axis=0)
        print(f"{model.card.name}: MAE {mean[0]:.1f} HU, PSNR {mean[1]:.2f} dB, MS-SSIM {mean[2]:.4f}, "
              f"bone MAE {mean[3]:.1f} HU, soft-tissue MAE {mean[4]:.1f} HU, teacher Dice sCT vs CT {mean[5]:.3f} "
              f"({len(rows)} cases)")


if __name__ == "__main__":
    main()
