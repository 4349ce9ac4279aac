"""The conversion preview (sctconv.convert.preview): the windows, the file, the speed, and no global side effects."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from sctconv.convert.preview import WINDOWS, save_preview


def test_windows_are_the_ct_windows_a_physicist_reads():
    assert [(name, width, level) for name, width, level in WINDOWS] == [
        ("soft tissue", 400, 40), ("lung", 1500, -600), ("bone", 1800, 400)]


def test_import_and_drawing_change_nothing_global(tmp_path):
    """No matplotlib.use(), no pyplot (whose figures would pile up in a long-running process)."""
    code = f"""
import sys, matplotlib
import numpy as np, SimpleITK as sitk
raw = lambda: dict.__getitem__(matplotlib.rcParams, "backend")
before = raw()
from sctconv.convert.preview import save_preview
image = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.float32))
save_preview(image, image, sitk.Cast(image > -1, sitk.sitkUInt8), {str(tmp_path / 'p.png')!r}, "t")
assert raw() == before, (raw(), before)
assert "matplotlib.pyplot" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def _ellipsoid_case(shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """(source, sCT, mask): a body ellipsoid with lungs and a spine, in HU."""
    z, y, x = np.ogrid[[slice(0, s) for s in shape]]
    nz, ny, nx = shape
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.3 * ny)) ** 2 < 1
    body = np.broadcast_to(body, shape)
    hu = np.where(body, 40.0, -1024.0).astype(np.float32)
    for side in (-1, 1):
        lung = ((x - nx / 2 - side * 0.2 * nx) / (0.15 * nx)) ** 2 + ((y - ny / 2) / (0.2 * ny)) ** 2 < 1
        hu[np.broadcast_to(lung, shape) & (z > nz // 3)] = -850.0
    hu[np.broadcast_to(((x - nx / 2) ** 2 + (y - 0.7 * ny) ** 2) < (0.04 * nx) ** 2, shape)] = 700.0
    sct = sitk.GetImageFromArray(hu)
    sct.SetSpacing(spacing)
    mask = sitk.Cast(sct > -500, sitk.sitkUInt8)
    return sct, sct, mask


def test_preview_of_a_phantom_has_four_rows_of_three_planes(phantom, tmp_path):
    ct, mr, _ = phantom  # oblique, anisotropic grid
    mask = sitk.Cast(ct > -500, sitk.sitkUInt8)
    path = tmp_path / "preview.png"
    save_preview(mr, ct, mask, path, "phantom -> sCT")
    size = path.stat().st_size
    assert 20_000 < size < 1_500_000
    height, width = imread(str(path)).shape[:2]
    assert 600 < height <= 960 and 500 < width <= 1170  # 4 rows (input, 3 windows) x 3 planes, colour bars


def test_preview_of_a_large_volume_is_fast_and_small(tmp_path):
    source, sct, mask = _ellipsoid_case((140, 250, 250), (1.4, 1.4, 2.0))
    path = tmp_path / "preview.png"
    save_preview(source, sct, mask, path, "warm-up")  # fonts and caches
    start = time.perf_counter()
    save_preview(source, sct, mask, path, "250 x 250 x 140")
    elapsed = time.perf_counter() - start
    assert elapsed < 6.0  # about 0.6 s on an idle CPU; the bound leaves room for a shared machine
    assert path.stat().st_size < 1_500_000


def test_preview_without_a_body(tmp_path):
    source, sct, _ = _ellipsoid_case((6, 20, 24), (2.0, 2.0, 3.0))
    empty = sitk.Cast(sct * 0, sitk.sitkUInt8)
    save_preview(source, sct, empty, tmp_path / "empty.png", "no body")
    save_preview(source, sct, empty + 1, tmp_path / "full.png", "all body")
    assert (tmp_path / "empty.png").stat().st_size > 0 and (tmp_path / "full.png").stat().st_size > 0
