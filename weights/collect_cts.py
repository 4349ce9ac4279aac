"""Gather the real CTs of ../shared/data into training and held-out case folders, in HU.

Usage: python weights/collect_cts.py SHARED_DATA WORK_DIR

Writes WORK_DIR/{train,heldout}/{HN,TH,AB}/<case>/ct.nii.gz (and labels.nii.gz where a label map on
the CT's grid exists). The region folders give each case its region. TCGA-HNSC files are stored as
HU + 1024 and are shifted back here. The only whole abdominal CT (TotalSegmentator's example) is cut
across the slice axis: the cranial half (abdomen) is held out, the caudal half (pelvis) is trained
on. The split is fixed here and recorded in each model card (its train and validation case names).
"""

from __future__ import annotations

import sys
from pathlib import Path

import SimpleITK as sitk

HELD_OUT = {"openkbp_pt_67", "openkbp_pt_7", "tcga_hnsc_0010", "lidc_chest", "totalseg_abdomen_cranial"}


def cases(data: Path) -> list[tuple[str, str, sitk.Image, sitk.Image | None]]:
    """(name, region folder, CT in HU, labels or None) of every real CT."""
    found = []
    for folder in sorted((data / "openkbp_hn_ct").glob("pt_*")):
        found.append((f"openkbp_{folder.name}", "HN", sitk.ReadImage(str(folder / "ct.nii.gz")), None))
    for path in sorted((data / "tcga_hnsc_ct_lowres").glob("[0-9][0-9][0-9][0-9].nii.gz")):
        ct = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkInt16) - 1024  # stored as HU + 1024
        found.append((f"tcga_hnsc_{path.name[:4]}", "HN", ct, None))
    lidc = data / "lidc_idri_0001_chest_ct"
    found.append(("lidc_chest", "TH", sitk.ReadImage(str(lidc / "ct_2mm.nii.gz")),
                  sitk.ReadImage(str(lidc / "totalseg_mask_2mm.nii.gz"))))
    found.append(("pyradiomics_chest", "TH", sitk.ReadImage(str(data / "pyradiomics_chest_ct" / "lung2_image.nrrd")),
                  None))
    totalseg = data / "totalsegmentator_ct_mr"
    for crop in ("aorta", "pulmonary"):
        found.append((f"totalseg_{crop}_crop", "TH",
                      sitk.ReadImage(str(totalseg / f"ct_cropped_1.5mm_{crop}_report.nii.gz")), None))
    abdomen = sitk.ReadImage(str(totalseg / "example_ct.nii.gz"))
    half = abdomen.GetSize()[2] // 2
    lower, upper = abdomen[:, :, :half], abdomen[:, :, half:]
    # Direction z is +1 (superior toward higher index): the upper index half is cranial.
    found.append(("totalseg_abdomen_cranial", "AB", upper, None))
    found.append(("totalseg_pelvis_caudal", "AB", lower, None))
    return found


def main(data: Path, work: Path) -> None:
    for name, region, ct, labels in cases(data):
        out = work / ("heldout" if name in HELD_OUT else "train") / region / name
        out.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(out / "ct.nii.gz"))
        if labels is not None:
            sitk.WriteImage(labels, str(out / "labels.nii.gz"))
        print(f"{out}: {ct.GetSize()} at {[round(s, 2) for s in ct.GetSpacing()]} mm")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
