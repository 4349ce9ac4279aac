"""Training step time on this CPU: fp32 against bf16 autocast, with and without channels-last 3D.

Usage: python benchmarks/bf16_cpu.py [PRESET ...]   (default: small cpu)

Runs 4 SGD steps of the preset's network on random patches (batch 2, the preset's patch) per mode
and prints the median step time of the last 3, the speed-up over fp32 and the CPU. bf16 pays off on
CPUs with AMX or AVX512-BF16 (oneDNN); elsewhere it may be slower than fp32.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sctconv.nn.network import build_network, count_parameters  # noqa: E402
from sctconv.training.setup import PRESETS  # noqa: E402
from sctconv.training.train import device_name  # noqa: E402


def step_seconds(preset: str, bf16: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    setup = PRESETS[preset]
    network = build_network(setup.architecture)
    x = torch.randn(2, 1, *setup.patch_size)
    y = torch.randn(2, 1, *setup.patch_size)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.l1_loss(network(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    print(device_name("cpu"), f"torch {torch.__version__}")
    for preset in sys.argv[1:] or ["small", "cpu"]:
        parameters = count_parameters(build_network(PRESETS[preset].architecture)) / 1e6
        fp32 = step_seconds(preset, False, False)
        print(f"{preset} ({parameters:.2f} M, patch {PRESETS[preset].patch_size}): fp32 {fp32:.2f} s/step")
        for bf16, channels_last, label in ((True, False, "bf16"), (True, True, "bf16 + channels-last 3D")):
            seconds = step_seconds(preset, bf16, channels_last)
            print(f"  {label}: {seconds:.2f} s/step, speed-up {fp32 / seconds:.2f}x")


if __name__ == "__main__":
    main()
