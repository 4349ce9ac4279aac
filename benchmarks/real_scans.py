"""How the shipped models do on real scans kept aside (prints figures; writes previews).

Usage: python benchmarks/real_scans.py [OUT_DIR] [--mr-model NAME_OR_FOLDER] [--cbct-model NAME_OR_FOLDER]

1. Real T1 head MRs (pyradiomics brain1/brain2, 6.5 mm slices; no CT exists): the share of the head
   above 250 HU in the sCT and the share of that within 20 mm of the head surface (a skull).
2. The held-out real chest CT (LIDC-IDRI-0001) made CBCT-like twice: by sctconv's simulator with a
   field of view that cuts the chest wall, and by an independent degradation written here (a
   different scale and offset, a radial polynomial cupping, Gaussian blur and noise, no streaks),
   so the CBCT model is not only judged on its own simulator. MAE inside the body (and the field of
   view) of the input and of the sCT, and the mean HU error over the lungs.
Previews of every conversion are written under OUT_DIR (default /tmp/sctconv-real-scans).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sctconv.convert.pipeline import ConvertOptions, convert  # noqa: E402
from sctconv.evaluation.image_metrics import mae  # noqa: E402
from sctconv.hu import CT_BODY_THRESHOLD_HU  # noqa: E402
from sctconv.preprocessing.body_mask import body_mask_from_array  # noqa: E402
from sctconv.simulation.simulate import cbct_field_of_view, simulate_cbct  # noqa: E402
from tests.helpers import skull_figures  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def independent_cbct(ct: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """A CBCT-like degradation unlike sctconv.simulation.simulate's: affine HU error, radial cupping, blur, noise."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    ny, nx = hu.shape[1:]
    sy, sx = ct.GetSpacing()[1], ct.GetSpacing()[0]
    y, x = np.mgrid[:ny, :nx]
    r = np.hypot((y - ny / 2) * sy, (x - nx / 2) * sx) / (0.5 * max(ny * sy, nx * sx))
    volume = 0.9 * hu + 60.0
    volume -= (120.0 * (1.0 - r ** 2)).clip(0)[None] * np.clip((hu + 1000.0) / 1000.0, 0.0, 1.5)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(volume), 1.0)
    volume = sitk.GetArrayFromImage(image) + rng.normal(0.0, 45.0, hu.shape).astype(np.float32)
    out = sitk.GetImageFromArray(np.clip(volume, -1024.0, 3071.0).astype(np.float32))
    out.CopyInformation(ct)
    return out


def convert_to(source: Path, out: Path, model: str | None, mask: Path | None = None) -> Path:
    convert(source, out, ConvertOptions(model=model, mask=mask, dicom=False, preview=True, overwrite=True))
    return out


def head_mrs(out: Path, model: str | None) -> None:
    print("real T1 head MR | head above 250 HU | of which within 20 mm of the surface")
    for name in ("brain1_image.nrrd", "brain2_image.nrrd"):
        folder = convert_to(DATA / "pyradiomics_mr_brain_breast" / name, out / name.split("_")[0], model)
        sct_image = sitk.ReadImage(str(folder / "sct.nii.gz"))
        head = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz"))) > 0
        share, near = skull_figures(sitk.GetArrayFromImage(sct_image), head, sct_image.GetSpacing()[::-1])
        print(f"{name} | {100 * share:.1f}% | {100 * near:.1f}%  (preview: {folder / 'preview.png'})")


def chest_cbcts(out: Path, model: str | None) -> None:
    ct = sitk.Clamp(sitk.ReadImage(str(DATA / "lidc_idri_0001_chest_ct" / "ct_2mm.nii.gz")), sitk.sitkFloat32,
                    -1024.0, 3071.0)
    hu = sitk.GetArrayFromImage(ct)
    body = body_mask_from_array(hu, CT_BODY_THRESHOLD_HU) > 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "lidc_idri_0001_chest_ct" / "totalseg_mask_2mm.nii.gz")))
    print("chest CBCT (LIDC, held out) | input MAE | sCT MAE | ratio | lung mean error input -> sCT (HU)")
    for kind in ("sctconv simulator, FOV r=150 mm", "independent degradation"):
        rng = np.random.default_rng(77)
        cbct = simulate_cbct(ct, rng, fov_radius_mm=150.0) if kind.startswith("sctconv") else independent_cbct(ct, rng)
        inside = body & (cbct_field_of_view(cbct) if kind.startswith("sctconv") else True)
        folder = out / ("cbct_sim" if kind.startswith("sctconv") else "cbct_independent")
        out.mkdir(parents=True, exist_ok=True)  # convert makes the case folder itself (it refuses a foreign one)
        sitk.WriteImage(cbct, str(folder.parent / f"{folder.name}_input.nii.gz"))
        mask_image = sitk.GetImageFromArray(inside.astype(np.uint8))
        mask_image.CopyInformation(ct)
        sitk.WriteImage(mask_image, str(folder.parent / f"{folder.name}_mask.nii.gz"))
        convert_to(folder.parent / f"{folder.name}_input.nii.gz", folder, model,
                   folder.parent / f"{folder.name}_mask.nii.gz")
        sct = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "sct.nii.gz"))).astype(np.float32)
        source = sitk.GetArrayFromImage(cbct)
        lungs = np.isin(labels, list(range(10, 15))) & inside  # TotalSegmentator lung lobes 10-14
        before, after = mae(hu, source, inside), mae(hu, sct, inside)
        print(f"{kind} | {before:.1f} | {after:.1f} | {after / before:.2f} | "
              f"{float(np.mean(source[lungs] - hu[lungs])):+.0f} -> {float(np.mean(sct[lungs] - hu[lungs])):+.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("/tmp/sctconv-real-scans"))
    parser.add_argument("--mr-model")
    parser.add_argument("--cbct-model")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent")
    head_mrs(args.out, args.mr_model)
    chest_cbcts(args.out, args.cbct_model)


if __name__ == "__main__":
    main()
