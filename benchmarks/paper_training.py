"""The paper-size training run on a GPU: stage 1 (L1) then AFP, epoch time, GPU memory, metrics.

Two steps, because a GPU machine may lack SimpleITK and the raw images:

    # here: crop simulated cases in-plane, prepare them at the paper's 3 x 1 x 1 mm, pack for transport
    python benchmarks/paper_training.py pack SIMULATED_CASES PACK_DIR [--cases 5] [--max-mm 200]
    # on the GPU machine (numpy and PyTorch only): train both stages, print and save the figures
    python benchmarks/paper_training.py run PACK_DIR OUT_DIR [--epochs 2] [--afp-epochs 1] [--iterations 250]

``pack`` keeps the middle ``--max-mm`` of each case in-plane around the body's centre (the whole
body of a head-and-neck case at 1 mm is too large to carry), prepares the cases with the paper
preset (``sctconv prepare``) and stores the input as float16 for transport (the simulated MR is
below 2000, so the rounding is below 1 in 2000; the loader turns it back into float32).
``run`` trains with the paper preset (122 M parameters, patch 40 x 160 x 224, batch 2, fp16
autocast) through the ``sctconv train`` command, validating on one case (the 20% split), then fine-tunes with
AFP against the shipped teacher and exports the result to ONNX, times its inference on the
validation volume, and writes ``summary.json`` with each stage's epoch times, peak GPU memory and
final metrics (on the model grid: the raw images stay here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "sctconv" / "models" / "ct-teacher-small"


def pack(cases_dir: Path, out: Path, count: int, max_mm: float) -> None:
    import SimpleITK as sitk
    from rich.console import Console

    from sctconv.training.data import discover_cases
    from sctconv.training.prepare import prepare_dataset
    from sctconv.training.setup import PRESETS

    cases = discover_cases(cases_dir, "mr")
    cases = cases[::max(1, len(cases) // count)][:count]  # spread over the folder: other patients, not other seeds
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            mask = sitk.ReadImage(str(case.mask))
            inside = np.argwhere(sitk.GetArrayFromImage(mask) > 0)
            centre = (inside.min(0) + inside.max(0)) // 2  # (z, y, x)
            start, size = [0, 0, 0], list(mask.GetSize())
            for axis in (0, 1):  # x, y
                keep = min(size[axis], int(max_mm / mask.GetSpacing()[axis]))
                start[axis] = int(np.clip(centre[2 - axis] - keep // 2, 0, size[axis] - keep))
                size[axis] = keep
            folder = Path(tmp) / case.name
            folder.mkdir(parents=True)
            for name, path in (("mr", case.input), ("ct", case.ct), ("mask", case.mask)):
                image = sitk.RegionOfInterest(sitk.ReadImage(str(path)), size, start)
                sitk.WriteImage(image, str(folder / f"{name}.mha"))
        prepared = prepare_dataset(discover_cases(Path(tmp), "mr"), "mr", PRESETS["paper"].spacing, out,
                                   Console(stderr=True))
    for case in prepared:
        with np.load(case.path) as data:
            arrays = {key: data[key] for key in data.files}
        arrays["input"] = arrays["input"].astype(np.float16)
        with case.path.open("wb") as file:
            np.savez_compressed(file, **arrays)
    total = sum(c.path.stat().st_size for c in prepared) / 2 ** 20
    print(f"{len(prepared)} cases packed in {out} ({total:.1f} MiB)")


def sctconv(*args: str) -> None:
    print("$ sctconv " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "sctconv", *args], check=True)


def stage_summary(folder: Path) -> dict:
    """Epoch times, peak GPU memory and final metrics of one finished stage."""
    history = json.loads((folder / "history.json").read_text())
    card = json.loads((folder / "model.json").read_text())
    seconds = [h["seconds"] for h in history]
    return {"epochs": len(history), "iterations_per_epoch": card["training"]["config"]["iterations"],
            "epoch_seconds": seconds, "epoch_seconds_after_first": float(np.mean(seconds[1:] or seconds)),
            "gpu_allocated_gib": max(h.get("gpu_allocated_gib", 0.0) for h in history),
            "gpu_reserved_gib": max(h.get("gpu_reserved_gib", 0.0) for h in history),
            "parameters": card["training"]["parameters"], "patch_size": card["patch_size"],
            "metrics": card["metrics"], "history": history,
            "onnx_mib": round((folder / "model.onnx").stat().st_size / 2 ** 20, 1) if (folder / "model.onnx").is_file()
            else None}


def inference_timing(model_folder: Path, pack_dir: Path, device: str) -> dict:
    """Sliding-window inference (step 0.3, mean blending, batch 2) of the model on the validation case."""
    import time

    import torch

    from sctconv.inference.predict import TorchBackend, sliding_window, window_starts
    from sctconv.nn.model import load_model
    from sctconv.preprocessing.normalize import normalize
    from sctconv.training.data import open_prepared

    model = load_model(model_folder)
    name = model.card.training["validation_cases"][0]
    case = next(c for c in open_prepared(pack_dir)[2] if c.name == name)
    arrays = case.load()
    x = normalize(arrays.input, arrays.mask, model.card.input_normalization)
    backend = TorchBackend(model.network, device)
    sliding_window(x[:model.card.patch_size[0]], backend, model.card.patch_size)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    sliding_window(x, backend, model.card.patch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    windows = int(np.prod([len(window_starts(n, p, 0.3)) for n, p in zip(x.shape, model.card.patch_size)]))
    return {"case": name, "shape": list(x.shape), "windows": windows, "seconds": round(seconds, 2),
            "windows_per_second": round(windows / seconds, 2)}


def run(pack_dir: Path, out: Path, epochs: int, afp_epochs: int, iterations: int, preset: str, device: str) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="paper_training_"))  # the models (~0.5 GB each) stay on the machine
    common = ["--data", str(pack_dir), "--task", "mr", "--iterations", str(iterations), "--device", device]
    sctconv("train", *common, "--preset", preset, "--output", str(work / "l1"), "--epochs", str(epochs),
            "--val-every", str(epochs), "--no-onnx")
    sctconv("train", *common, "--stage", "afp", "--init", str(work / "l1"), "--teacher", str(TEACHER),
            "--output", str(work / "afp"), "--epochs", str(afp_epochs), "--val-every", str(afp_epochs))
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    summary = {"device": device_name, "torch": torch.__version__, "preset": preset,
               "l1": stage_summary(work / "l1"), "afp": stage_summary(work / "afp"),
               "inference": inference_timing(work / "afp", pack_dir, device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for stage in ("l1", "afp"):
        shutil.copy(work / stage / "curves.png", out / f"curves_{stage}.png")
    print(f"device {device_name}, torch {torch.__version__}, preset {preset}")
    for stage in ("l1", "afp"):
        s, m = summary[stage], summary[stage]["metrics"]
        print(f"{stage}: {s['parameters'] / 1e6:.1f} M parameters, patch {s['patch_size']}, "
              f"{s['epochs']} x {s['iterations_per_epoch']} iterations, epoch {s['epoch_seconds_after_first']:.1f} s "
              f"(all: {s['epoch_seconds']}), peak GPU memory {s['gpu_allocated_gib']} GiB allocated, "
              f"{s['gpu_reserved_gib']} GiB reserved; MAE {m['mae_hu']:.1f} HU, PSNR {m['psnr_db']:.2f} dB, "
              f"MS-SSIM {m['ms_ssim']:.4f} ({m['evaluated_on']})")
    i = summary["inference"]
    print(f"inference: {i['windows']} windows of the {i['shape']} validation volume at step 0.3 in {i['seconds']} s "
          f"({i['windows_per_second']} windows/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("pack")
    p.add_argument("cases", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--cases", dest="count", type=int, default=5)
    p.add_argument("--max-mm", type=float, default=200.0)
    r = steps.add_parser("run")
    r.add_argument("pack", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--afp-epochs", type=int, default=1)
    r.add_argument("--iterations", type=int, default=250)
    r.add_argument("--preset", default="paper")
    r.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.cases, args.out, args.count, args.max_mm)
    else:
        run(args.pack, args.out, args.epochs, args.afp_epochs, args.iterations, args.preset, args.device)


if __name__ == "__main__":
    main()
