"""Inference speed and memory of `sctconv convert` on a real-sized volume.

    python benchmarks/inference.py [--model NAME] [--device auto] [--steps 0.3 0.5] [--paper]

Makes a simulated MR (or CBCT, by the model's modality) of the LIDC chest CT from ../shared/data
(or of the example phantom when that folder is absent), converts it with the torch and ONNX
backends, and prints seconds per stage, windows per second, the torch/ONNX ratio, the mean absolute
difference between backends and the peak resident memory. ``--paper`` also times one forward pass
of the paper-size network (~122 M parameters) on a 40x160x224 patch.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.inference.predict import window_starts
from sctconv.nn.model import load_model, resolve_model
from sctconv.nn.network import Architecture, UNet, count_parameters
from sctconv.simulation.simulate import simulate_cbct, simulate_mr

ROOT = Path(__file__).resolve().parents[1]
CHEST = ROOT.parent / "shared" / "data" / "lidc_idri_0001_chest_ct" / "ct_2mm.nii.gz"


def device_name(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--modality", default="mr")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.3])
    parser.add_argument("--paper", action="store_true")
    args = parser.parse_args()

    model = load_model(resolve_model(args.model, args.modality, None))
    ct_path = CHEST if CHEST.exists() else ROOT / "examples" / "phantom_ct.nii.gz"
    ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    rng = np.random.default_rng(0)
    source = simulate_mr(ct, rng) if model.card.modality == "mr" else simulate_cbct(ct, rng)
    print(f"device: {device_name(args.device)}")
    print(f"model: {model.card.name} ({count_parameters(model.network) / 1e6:.2f} M parameters), "
          f"patch {model.card.patch_size}, spacing {model.card.spacing} mm")
    print(f"input: {ct_path.name} simulated {model.card.modality}, size {source.GetSize()}, "
          f"spacing {tuple(round(s, 2) for s in source.GetSpacing())}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.nii.gz"
        sitk.WriteImage(source, str(path))
        for step in args.steps:
            results = {}
            for backend in ("torch", "onnx"):
                options = ConvertOptions(model=str(model.folder), step=step, device=args.device, backend=backend,
                                         dicom=False, preview=False)
                report = convert(path, Path(tmp) / f"out-{backend}-{step}", options)
                results[backend] = report
            grid = [int(round((s - 1) * sp / t)) + 1 for s, sp, t in
                    zip(source.GetSize()[::-1], source.GetSpacing()[::-1], model.card.spacing)]
            windows = int(np.prod([len(window_starts(g, p, step)) for g, p in zip(grid, model.card.patch_size)]))
            t_torch = results["torch"]["timings_s"]["predict"]
            t_onnx = results["onnx"]["timings_s"]["predict"]
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / f"out-torch-{step}" / "sct.nii.gz")))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / f"out-onnx-{step}" / "sct.nii.gz")))
            print(f"step {step}: {windows} windows | torch predict {t_torch:.2f} s "
                  f"({windows / t_torch:.1f} windows/s), "
                  f"total {results['torch']['timings_s']['total']:.2f} s | onnx predict {t_onnx:.2f} s "
                  f"({windows / t_onnx:.1f} windows/s) | onnx/torch time ratio {t_onnx / t_torch:.2f} | "
                  f"mean |torch - onnx| {np.abs(a.astype(float) - b).mean():.3f} HU")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.paper:
        net = UNet(Architecture()).eval()
        x = torch.zeros(1, 1, 40, 160, 224)
        with torch.inference_mode():
            started = time.perf_counter()
            net(x)
            print(f"paper-size network ({count_parameters(net) / 1e6:.1f} M): one 40x160x224 forward "
                  f"{time.perf_counter() - started:.1f} s on this device")


if __name__ == "__main__":
    main()
