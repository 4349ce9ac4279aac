"""Body-region detection (sctconv.preprocessing.region) on every real volume of ../shared/data, on MRs simulated
from the real CTs, on the procedural phantom, and its place in `sctconv convert`'s report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.nn.model import CARD_NAME, REGIONS, read_card
from sctconv.preprocessing.body_mask import body_mask
from sctconv.preprocessing.region import HEAD_NECK_MIN_MM, detect_region
from sctconv.simulation.simulate import PHANTOM_LABELS, make_phantom, simulate_mr
from tests.helpers import SHARED_DATA, make_tiny_model, shared_data

# (folder/file under ../shared/data, modality, value offset to HU, expected region)
OPENKBP = [f"openkbp_hn_ct/pt_{n}/ct.nii.gz" for n in (1, 2, 4, 6, 7, 13, 17, 24, 27, 34, 43, 55, 67, 106, 115)]
TCGA = [f"tcga_hnsc_ct_lowres/{n:04d}.nii.gz" for n in range(1, 11)]  # stored as HU + 1024
REAL = ([(p, "cbct", 0.0, "head-neck") for p in OPENKBP] + [(p, "cbct", -1024.0, "head-neck") for p in TCGA] + [
    ("lidc_idri_0001_chest_ct/ct_2mm.nii.gz", "cbct", 0.0, "thorax"),
    ("pyradiomics_chest_ct/lung2_image.nrrd", "cbct", 0.0, "thorax"),
    ("totalsegmentator_ct_mr/example_ct.nii.gz", "cbct", 0.0, "abdomen"),
    ("totalsegmentator_ct_mr/example_mr_sm.nii.gz", "mr", 0.0, "abdomen"),
    ("pyradiomics_mr_brain_breast/brain1_image.nrrd", "mr", 0.0, "head-neck"),
    ("pyradiomics_mr_brain_breast/brain2_image.nrrd", "mr", 0.0, "head-neck"),
    # A 30 x 79 x 44 mm crop inside a breast: the body fills the field of view, no lungs. Nothing can
    # be measured, so thorax (where breasts are treated) is assumed with low confidence.
    ("pyradiomics_mr_brain_breast/breast1_image.nrrd", "mr", 0.0, "thorax"),
])
WHOLE_BODY = {f"tcga_hnsc_ct_lowres/{n:04d}.nii.gz" for n in (5, 8, 10)}  # head to pelvis: still head-neck
# Real CTs whose simulated MR is checked too: two head-neck (one a whole body), thorax, abdomen.
SIMULATED_MR = ["openkbp_hn_ct/pt_2/ct.nii.gz", "tcga_hnsc_ct_lowres/0005.nii.gz",
                "lidc_idri_0001_chest_ct/ct_2mm.nii.gz", "totalsegmentator_ct_mr/example_ct.nii.gz"]


def _read(relative: str, offset: float) -> sitk.Image:
    image = sitk.ReadImage(str(shared_data(*relative.split("/"))), sitk.sitkFloat32)
    return image + offset if offset else image


def _check(region: str, evidence: dict, expected: str) -> None:
    assert region == expected, evidence
    lengths = evidence["lengths_mm"]
    if expected == "head-neck":
        assert lengths["head_neck"] >= HEAD_NECK_MIN_MM
        assert evidence["width_mm"]["min"] < 200  # a head or neck: 100-190 mm wide
    elif evidence["confidence"] == "high":
        assert lengths["head_neck"] < HEAD_NECK_MIN_MM
        assert lengths[expected] > lengths["abdomen" if expected == "thorax" else "thorax"]


@pytest.mark.parametrize("relative, modality, offset, expected", REAL, ids=[r[0] for r in REAL])
def test_region_of_real_volumes(relative, modality, offset, expected):
    image = _read(relative, offset)
    region, evidence = detect_region(image, body_mask(image, modality), modality)
    _check(region, evidence, expected)
    if relative in WHOLE_BODY:
        assert evidence["lengths_mm"]["thorax"] > 100 and evidence["lengths_mm"]["abdomen"] > 100
    elif expected == "head-neck":
        assert evidence["width_mm"]["median"] < 200
    if relative.startswith("pyradiomics_mr_brain_breast/breast"):
        assert evidence["confidence"] == "low" and evidence["cut_by_field_of_view"] == 1.0
    else:
        assert evidence["confidence"] == "high"


@pytest.mark.parametrize("relative", SIMULATED_MR, ids=SIMULATED_MR)
def test_region_of_mr_simulated_from_real_ct(relative):
    expected = next(r[3] for r in REAL if r[0] == relative)
    offset = next(r[2] for r in REAL if r[0] == relative)
    mr = simulate_mr(_read(relative, offset), np.random.default_rng(0))
    region, evidence = detect_region(mr, body_mask(mr, "mr"), "mr")
    _check(region, evidence, expected)


def test_every_real_volume_folder_is_covered():
    """A new CT/MR volume in the folders above is added to REAL."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (../shared/data is not next to this checkout)")
    listed = {r[0] for r in REAL}
    patterns = ("openkbp_hn_ct/*/ct.nii.gz", "tcga_hnsc_ct_lowres/0*.nii.gz",
                "pyradiomics_mr_brain_breast/*_image.nrrd")
    found = {str(p.relative_to(SHARED_DATA)) for pattern in patterns for p in SHARED_DATA.glob(pattern)
             if "mask" not in p.name}
    assert found <= listed


def _phantom_truth(labels: sitk.Image, slice_mm: float) -> tuple[float, float]:
    """(mm of slices with at least 12% lung, mm of the others) from the phantom's own labels."""
    array = sitk.GetArrayViewFromImage(labels)
    body = (array > 0).sum(axis=(1, 2))
    lung = (array == PHANTOM_LABELS["lung"]).sum(axis=(1, 2)) >= 0.12 * np.maximum(body, 1)
    return float(lung.sum()) * slice_mm, float((~lung).sum()) * slice_mm


@pytest.mark.parametrize("expected", ["thorax", "abdomen"])
def test_region_of_adult_size_phantoms_agrees_with_their_labels(expected):
    """The first phantom (seeds 0-9, 36 x 28 x 19 cm) whose labels clearly say ``expected`` (1.3 times
    the length of the other) is detected as such, as CT and as simulated MR."""
    for seed in range(10):
        ct, labels = make_phantom(np.random.default_rng(seed), shape=(64, 112, 144), spacing=(2.5, 2.5, 3.0))
        lung_mm, other_mm = _phantom_truth(labels, 3.0)
        if (lung_mm if expected == "thorax" else other_mm) >= 1.3 * (other_mm if expected == "thorax" else lung_mm):
            break
    else:
        pytest.fail(f"no phantom of seeds 0-9 is clearly {expected}")
    for modality, image in (("cbct", ct), ("mr", simulate_mr(ct, np.random.default_rng(seed)))):
        region, evidence = detect_region(image, body_mask(image, modality), modality)
        assert region == expected, (seed, modality, evidence)
        assert abs(evidence["lengths_mm"]["thorax"] - lung_mm) <= 15.0, (seed, modality, evidence)


def test_small_phantom_is_as_narrow_as_a_neck(phantom):
    """The tests' miniature phantom (18 x 15 cm) is narrower than 200 mm: detected as head-neck, the
    documented limit of a width-based rule (a child's trunk would be too)."""
    ct, mr, cbct = phantom
    for modality, image in (("cbct", ct), ("mr", mr), ("cbct", cbct)):
        region, evidence = detect_region(image, body_mask(image, modality), modality)
        assert region == "head-neck" and evidence["width_mm"]["max"] < 200


def test_detection_does_not_depend_on_the_orientation():
    ct, _ = make_phantom(np.random.default_rng(0), shape=(64, 112, 144), spacing=(2.5, 2.5, 3.0))
    mask = body_mask(ct, "cbct")
    flipped = sitk.DICOMOrient(ct, "RAI")  # same patient, array stored the other way round
    region, evidence = detect_region(ct, mask, "cbct")
    region2, evidence2 = detect_region(flipped, sitk.DICOMOrient(mask, "RAI"), "cbct")
    assert region == region2 and evidence["lengths_mm"] == evidence2["lengths_mm"]


# --- in `sctconv convert` ---------------------------------------------------------------------------

def _tiny_model(folder: Path, regions: list[str]) -> Path:
    """The tests' tiny MR model, its card saying it was trained on ``regions``."""
    make_tiny_model(folder, "mr")
    card = replace(read_card(folder), regions=regions)
    (folder / CARD_NAME).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return folder


def test_convert_reports_the_detected_region_and_warns_about_what_the_model_does_not_cover(phantom, phantom_files,
                                                                                         tmp_path):
    """An MR model whose card leaves out the detected region converts a CBCT that nothing said the
    modality of: the report holds the detected region with its evidence and two warnings."""
    _, mr, cbct = phantom
    detected, _ = detect_region(cbct, body_mask(cbct, "mr"), "mr")
    model = _tiny_model(tmp_path / "tiny-other", [r for r in REGIONS if r != detected])
    report = convert(phantom_files["cbct"], tmp_path / "out", ConvertOptions(model=str(model), dicom=False,
                                                                            preview=False, step=1.0))
    assert report["input"]["modality"] == "mr"  # taken from the model, as before
    assert report["region"]["value"] == detected and report["region"]["source"] == "detected"
    assert report["region"]["evidence"]["lengths_mm"] and report["region"]["evidence"]["rule"]
    warnings = report["warnings"]
    assert len(warnings) == 2, warnings
    assert "model tiny-other was trained on" in warnings[0] and f"not on {detected} (detected)" in warnings[0]
    assert "look like cbct" in warnings[1] and "--modality" in warnings[1]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["region"] == report["region"] and on_disk["warnings"] == warnings


def test_convert_records_the_region_option_and_warns_when_the_model_does_not_cover_it(phantom_files,
                                                                                      tiny_cbct_model, tmp_path):
    report = convert(phantom_files["cbct"], tmp_path / "a", ConvertOptions(model=str(tiny_cbct_model), region="AB",
                                                                          dicom=False, preview=False, step=1.0))
    assert report["region"]["value"] == "abdomen" and report["region"]["source"] == "option"
    assert report["region"]["detected"] in REGIONS  # detected all the same, to cross-check
    assert report["warnings"] == ["model tiny-cbct was trained on thorax, not on abdomen (--region); its sCT "
                                  "there is untested"]
