"""The CPU targets of `sctconv convert`: a 2 mm thorax in time, a 512 x 512 x 300 volume in memory.

    python benchmarks/bench_targets.py                 # both, the shipped MR defaults
    python benchmarks/bench_targets.py --only time     # or --only memory

Each conversion is a fresh `python -m sctconv convert` process, as a user runs it (DICOM series,
preview and report included), so its wall time and peak resident memory are the job's own:

- time: the project's torso phantom at 2 mm (140 x 250 x 250 voxels) made MR-like by the
  domain-randomised simulator, converted with the default model (target <= 90 s) and with
  ``--fast`` (target <= 30 s);
- memory: the LIDC chest CT of ``../shared/data`` (else the phantom) resampled to 512 x 512 x 300
  voxels and made MR-like, converted with the default model (target <= 4 GB peak resident memory).

Prints per conversion the seconds (wall and the report's stage timings) and the peak memory,
and as its last line ``thorax_s=<a> fast_s=<b> peak_gb=<c> device=<name>`` (targets 90, 30, 4).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sctconv.simulation.simulate import make_phantom, simulate_mr  # noqa: E402
from sctconv.training.train import device_name  # noqa: E402

CHEST = ROOT.parent / "shared" / "data" / "lidc_idri_0001_chest_ct" / "ct_2mm.nii.gz"
TARGETS = {"thorax_s": 90.0, "fast_s": 30.0, "peak_gb": 4.0}
# Runs the command line in this process and reports its own peak resident memory (kB on Linux).
CHILD = """import resource, sys
from sctconv.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def phantom_ct() -> sitk.Image:
    """The project's torso phantom at 2 mm, 140 x 250 x 250 voxels (HU, float32)."""
    ct, _ = make_phantom(np.random.default_rng(0), shape=(140, 250, 250), spacing=(2.0, 2.0, 2.0))
    return sitk.Cast(ct, sitk.sitkFloat32)


def thorax_mr() -> sitk.Image:
    """A 2 mm thorax-sized MR: the torso phantom, 140 x 250 x 250 voxels, simulated MR contrast."""
    return simulate_mr(phantom_ct(), np.random.default_rng(1))


def large_mr() -> sitk.Image:
    """A 512 x 512 x 300 MR: the real chest CT (or the phantom) resampled to that size, simulated MR contrast."""
    ct = sitk.ReadImage(str(CHEST), sitk.sitkFloat32) if CHEST.exists() else phantom_ct()
    size = (512, 512, 300)
    spacing = [(n * s) / m for n, s, m in zip(ct.GetSize(), ct.GetSpacing(), size)]
    ct = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), spacing, ct.GetDirection(), -1024.0)
    return simulate_mr(ct, np.random.default_rng(1))


def run_convert(source: Path, out: Path, extra: list[str]) -> dict:
    """`sctconv convert` in a fresh process: wall seconds, peak GB, the report's timings."""
    command = [sys.executable, "-c", CHILD, "convert", str(source), str(out), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"convert failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KB"))
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "peak_gb": peak_kb / 1024**2, "timings_s": report["timings_s"],
            "model": report["model"]["name"]}


def show(label: str, result: dict) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result["timings_s"].items())
    print(f"{label}: model {result['model']}, wall {result['wall_s']:.1f} s ({stages}), "
          f"peak resident memory {result['peak_gb']:.2f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("time", "memory"), default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    figures = {name: float("nan") for name in TARGETS}
    device = ["--device", args.device]
    print(f"device: {device_name('cpu')}; python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "time"):
            sitk.WriteImage(thorax_mr(), str(work / "thorax.nii.gz"))
            default = run_convert(work / "thorax.nii.gz", work / "thorax", device)
            fast = run_convert(work / "thorax.nii.gz", work / "thorax-fast", [*device, "--fast"])
            show("2 mm thorax 140x250x250, default", default)
            show("2 mm thorax 140x250x250, --fast", fast)
            figures["thorax_s"], figures["fast_s"] = default["wall_s"], fast["wall_s"]
        if args.only in (None, "memory"):
            sitk.WriteImage(large_mr(), str(work / "large.nii.gz"))
            large = run_convert(work / "large.nii.gz", work / "large", device)
            show("512x512x300, default", large)
            figures["peak_gb"] = large["peak_gb"]
    ratios = " ".join(f"{name}/target={figures[name] / TARGETS[name]:.2f}" for name in TARGETS)
    print(ratios)
    device_label = device_name("cpu").replace(" ", "_")
    print(" ".join(f"{name}={figures[name]:.2f}" for name in TARGETS) + f" device={device_label}")


if __name__ == "__main__":
    main()
