"""Training throughput: iterations per second and the share of step time spent waiting for data.

    python benchmarks/bench_train.py                        # the cpu preset, MR simulated from phantom CTs
    python benchmarks/bench_train.py --preset small --iterations 20 --cases 4
    python benchmarks/bench_train.py --data PREPARED_OR_CASES --task mr --preset paper   # e.g. on a GPU

Runs `sctconv train` itself (stage l1) for ``--epochs`` epochs of ``--iterations`` steps in a temporary
folder and reads its history: every epoch records its seconds and the seconds the loop waited for
patches and for new simulated inputs (``data_seconds``). The first epoch includes warm-up; the figures
are of the later epochs. Without ``--data`` the cases are the project's torso phantoms (CT only) and
the MR inputs are made during training by the domain-randomised simulator (``--simulate-input``),
the way the shipped MR model trains. Last line:
``iterations_per_s=<x> data_wait_share=<y> device=<name>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sctconv.training.config import TrainConfig  # noqa: E402
from sctconv.training.train import device_name, train  # noqa: E402


def phantom_cts(root: Path, cases: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """``cases`` phantom CTs under ``root/cts`` and two simulated MR/CT pairs for validation."""
    import SimpleITK as sitk

    from sctconv.simulation.simulate import make_phantom, write_simulated_case

    for i in range(cases):
        ct, _ = make_phantom(np.random.default_rng(i), shape=shape, spacing=(2.0, 2.0, 2.0))
        (root / "cts" / "TH" / f"ct{i}").mkdir(parents=True)
        sitk.WriteImage(ct, str(root / "cts" / "TH" / f"ct{i}" / "ct.nii.gz"))
    for i in range(2):
        ct, _ = make_phantom(np.random.default_rng(100 + i), shape=shape, spacing=(2.0, 2.0, 2.0))
        sitk.WriteImage(ct, str(root / f"val{i}.nii.gz"))
        write_simulated_case(root / f"val{i}.nii.gz", root / "val" / "TH" / f"case{i}", "mr", seed=i)
    return root / "cts", root / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data", type=Path, default=None, help="cases or a prepared dataset (default: phantoms)")
    parser.add_argument("--task", default="mr")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 160, 160), help="phantom size z y x (2 mm)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulate = args.data is None
        data, val = phantom_cts(root, args.cases, tuple(args.shape)) if simulate else (args.data, None)
        config = TrainConfig(data=data, out=root / "model", modality=args.task, name="bench",
                             regions=["head-neck", "thorax", "abdomen"],
                             preset=args.preset, epochs=args.epochs, iterations=args.iterations,
                             val_every=10 ** 6, device=args.device, simulate_input=simulate, val_data=val,
                             bf16=not args.device.startswith("cuda"), onnx=False)
        train(config)
        history = json.loads((root / "model" / "history.json").read_text())
    later = history[1:] or history
    seconds = sum(r["seconds"] for r in later)
    waited = sum(r["data_seconds"] for r in later)
    for r in history:
        print(f"epoch {r['epoch']}: {r['seconds']:.1f} s, waited for data {r['data_seconds']:.1f} s")
    print(f"iterations_per_s={args.iterations * len(later) / seconds:.3f} data_wait_share={waited / seconds:.3f} "
          f"device={device_name(args.device)}")


if __name__ == "__main__":
    main()
