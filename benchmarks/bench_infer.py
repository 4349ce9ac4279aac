"""Sliding-window inference: sctconv's engine against a reference loop written the nnU-Net way.

    python benchmarks/bench_infer.py                    # the default MR model, a 2 mm thorax
    python benchmarks/bench_infer.py --model NAME_OR_FOLDER --shape 140 250 250 --step 0.3
    python benchmarks/bench_infer.py --paper            # the paper's network (random weights), 100 x 400 x 500
    python benchmarks/bench_infer.py --paper --volume chest.npy   # a real CT on the paper's grid (HU, z y x)

In one process, on one network and one volume (the project's own torso phantom at the model's
spacing, made MR-like by the domain-randomised simulator, or ``--volume``, a float32 ``.npy`` HU
array on the model grid):

(a) the reference: every window in turn, one window per forward, accumulated window by window on
    the network's device (fp16 autocast on a GPU, fp32 on the CPU), all windows including air;
(b) sctconv's engine (:func:`sctconv.inference.predict.predict_body`, what `sctconv convert` runs).

Prints windows, seconds and windows per second of each, on a GPU the floor (windows x FLOP per
window / the dense fp16 matmul rate measured in the same run), and as its last line
``speedup=<x> mean_hu_diff=<a> max_hu_diff=<b> device=<name>``: the differences of (b) against an fp32
run of (a), inside the body (the voxels an sCT keeps), in HU (the model's target scale).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sctconv.hu import HU_MIN  # noqa: E402
from sctconv.inference.predict import TorchBackend, predict_body, window_starts  # noqa: E402
from sctconv.nn.model import ModelCard, load_model, resolve_model  # noqa: E402
from sctconv.nn.network import UNet, build_network, count_parameters  # noqa: E402
from sctconv.preprocessing.normalize import normalize  # noqa: E402
from sctconv.training.setup import PRESETS  # noqa: E402
from sctconv.training.train import device_name  # noqa: E402


def phantom_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A simulated MR of the project's torso phantom (HU-like array, body mask) on the model grid; without
    SimpleITK (the GPU machines), a smooth random texture in an elliptic body."""
    rng = np.random.default_rng(0)
    try:
        import SimpleITK as sitk

        from sctconv.simulation.simulate import make_phantom
        from sctconv.simulation.synth_mr import simulate_mr_array
    except ImportError:
        z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
        body = ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.48 * shape[2])) ** 2 < 1
        body = np.broadcast_to(body, shape).copy()
        texture = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape), 9, 1, 4)[0, 0].numpy()
        return np.where(body, 40 + 4000 * texture, HU_MIN).astype(np.float32), body
    ct, labels = make_phantom(rng, shape=shape, spacing=tuple(reversed(spacing)))  # type: ignore[arg-type]
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    body = hu > -500
    return simulate_mr_array(hu, body, np.asarray(spacing), rng, sitk.GetArrayFromImage(labels)), body


def reference_loop(x: np.ndarray, network: UNet, patch: tuple[int, int, int], step: float, device: str,
                   fp16: bool) -> tuple[np.ndarray, int, float]:
    """nnU-Net's way: all windows, one per forward, accumulated one by one on the device; (output, windows, s)."""
    started = time.perf_counter()
    volume = torch.from_numpy(x).to(device)
    starts = list(itertools.product(*(window_starts(n, p, step) for n, p in zip(x.shape, patch))))
    total = torch.zeros((1, *x.shape), dtype=torch.float32, device=device)
    count = torch.zeros(x.shape, dtype=torch.float32, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        for start in starts:
            window = tuple(slice(s, s + p) for s, p in zip(start, patch))
            total[(slice(None),) + window] += network(volume[window][None, None])[0].float()
            count[window] += 1
    result = (total / count).cpu().numpy()
    return result, len(starts), time.perf_counter() - started


def engine(x: np.ndarray, body: np.ndarray, network: UNet, card: ModelCard, step: float,
           device: str) -> tuple[np.ndarray, int, float]:
    """sctconv's engine as `convert` runs it; (output, windows predicted, seconds)."""
    started = time.perf_counter()
    counted: list[int] = []
    backend = TorchBackend(network, device)

    class Counting:
        name, device = backend.name, backend.device

        def __call__(self, batch: torch.Tensor) -> torch.Tensor:
            counted.append(len(batch))
            return backend(batch)

    out = predict_body(x, body, Counting(), card, step).mean
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, sum(counted), time.perf_counter() - started


def window_flops(network: UNet, patch: tuple[int, int, int], device: str) -> float:
    """FLOP of one window's forward (PyTorch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.zeros((1, 1, *patch), device=device))
    return float(counter.get_total_flops())


def matmul_rate(device: str, n: int = 8192, repeats: int = 20) -> float:
    """Dense fp16 matmul FLOP/s on ``device``, measured."""
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a shipped model name or folder (default: the MR default)")
    parser.add_argument("--paper", action="store_true", help="the paper's network with random weights instead")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom size z y x on the model grid")
    parser.add_argument("--volume", type=Path, default=None, help="a float32 .npy HU array on the model grid")
    parser.add_argument("--step", type=float, default=0.3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if args.paper:
        setup = PRESETS["paper"]
        torch.manual_seed(0)
        network = build_network(setup.architecture)
        card = replace(load_model(resolve_model(None, "mr", None)).card, architecture=setup.architecture,
                       spacing=setup.spacing, patch_size=setup.patch_size)
        shape = tuple(args.shape or (100, 400, 500))
    else:
        model = load_model(resolve_model(args.model, "mr", None))
        network, card = model.network.float(), model.card
        shape = tuple(args.shape or (140, 250, 250))
    network = network.to(args.device).eval()
    if args.volume is not None:
        hu = np.load(args.volume).astype(np.float32)
        body = hu > -500
        image = hu
    else:
        image, body = phantom_volume(shape, card.spacing)  # type: ignore[arg-type]
    x = normalize(image, body.astype(np.uint8), card.input_normalization)
    cuda = args.device.startswith("cuda")
    scale = card.target_normalization.std or 1.0
    print(f"device: {device_name(args.device)}; torch {torch.__version__}")
    print(f"network: {'paper preset (random weights)' if args.paper else card.name}, "
          f"{count_parameters(network) / 1e6:.2f} M parameters, patch {card.patch_size}; volume {x.shape} "
          f"({'--volume ' + str(args.volume) if args.volume else 'phantom'}), body {body.mean():.0%}, step {args.step}")

    fp32, windows_ref, _ = reference_loop(x, network, card.patch_size, args.step, args.device, fp16=False) \
        if cuda else (None, 0, 0.0)
    ref, windows_ref, t_ref = reference_loop(x, network, card.patch_size, args.step, args.device, fp16=cuda)
    fp32 = ref if fp32 is None else fp32
    print(f"(a) reference loop: {windows_ref} windows, {t_ref:.2f} s, {windows_ref / t_ref:.2f} windows/s"
          f" ({'fp16 autocast' if cuda else 'fp32'})")
    out, windows_engine, t_engine = engine(x, body, network, card, args.step, args.device)
    print(f"(b) sctconv engine: {windows_engine} windows, {t_engine:.2f} s, {windows_engine / t_engine:.2f} windows/s")
    if cuda:
        flops = window_flops(network, card.patch_size, args.device)
        rate = matmul_rate(args.device)
        floor = windows_engine * flops / rate
        print(f"floor: {windows_engine} windows x {flops / 1e9:.1f} GFLOP / {rate / 1e12:.1f} TFLOP/s (fp16 matmul, "
              f"measured) = {floor:.2f} s; the engine is at {floor / t_engine:.0%} of it")
    inside = body > 0
    diff = np.abs(out[0] - fp32[0])[inside] * scale
    print(f"speedup={t_ref / t_engine:.2f} mean_hu_diff={diff.mean():.3f} max_hu_diff={diff.max():.3f} "
          f"device={device_name(args.device)}")


if __name__ == "__main__":
    main()
