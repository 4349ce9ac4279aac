"""The shipped models on the shipped examples and on a real CT none of them was trained on (real-size
inference on CPU: every test here is marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.evaluation.image_metrics import mae
from sctconv.hu import CT_BODY_THRESHOLD_HU
from sctconv.nn.model import SHIPPED_MODELS, available_models
from sctconv.preprocessing.body_mask import body_mask_from_array
from sctconv.simulation.simulate import simulate_cbct, simulate_mr
from tests.helpers import check_sct_folder, sctconv, shared_data, skull_figures

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHIPPED = {card.modality: card for _, card in available_models(SHIPPED_MODELS)
           if card.task == "synthesis" and not card.fast}  # the defaults, one per modality
needs_models = pytest.mark.skipif(set(SHIPPED) != {"mr", "cbct"}, reason="shipped models are not in sctconv/models/")
pytestmark = pytest.mark.slow


@needs_models
@pytest.mark.parametrize("example", ["phantom_mr.nii.gz", "phantom_cbct.nii.gz"])
def test_readme_command_on_the_examples(example, tmp_path):
    out = tmp_path / "out"
    sctconv("convert", str(EXAMPLES / example), str(out))
    assert {"sct.nii.gz", "mask.nii.gz", "report.json", "preview.png", "dicom"} <= {p.name for p in out.iterdir()}
    values, mask = check_sct_folder(out, EXAMPLES / example)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == SHIPPED[report["input"]["modality"]].name
    # The phantom's own CT is the reference: the sCT must beat a constant soft-tissue CT clearly.
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(EXAMPLES / "phantom_ct.nii.gz")))
    assert mae(ct, values, mask) < 0.8 * mae(ct, np.where(mask > 0, 40.0, -1024.0), mask)


@needs_models
def test_fast_converts_with_the_fast_model_at_step_0_5(tmp_path):
    sctconv("convert", str(EXAMPLES / "phantom_mr.nii.gz"), str(tmp_path / "out"), "--fast", "--no-dicom")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    fast = [card for _, card in available_models(SHIPPED_MODELS) if card.fast and card.modality == "mr"]
    assert report["model"]["name"] == fast[0].name != SHIPPED["mr"].name and report["inference"]["step"] == 0.5


@needs_models
def test_dicom_example_converts(tmp_path):
    sctconv("convert", str(EXAMPLES / "phantom_mr_dicom"), str(tmp_path / "out"))
    assert len(list((tmp_path / "out" / "dicom").glob("*.dcm"))) == 40


@needs_models
@pytest.mark.parametrize("modality", ["mr", "cbct"])
def test_heldout_real_ct_beats_a_constant_soft_tissue_ct(modality, tmp_path):
    """LIDC-IDRI-0001 is held out of every shipped model's training (see weights/README.md)."""
    ct = sitk.ReadImage(str(shared_data("lidc_idri_0001_chest_ct", "ct_2mm.nii.gz")), sitk.sitkFloat32)
    rng = np.random.default_rng(4242)  # not a seed used to build the models
    source = simulate_mr(ct, rng) if modality == "mr" else simulate_cbct(ct, rng)
    sitk.WriteImage(source, str(tmp_path / "input.nii.gz"))
    gt = sitk.GetArrayFromImage(ct)
    mask = body_mask_from_array(gt, CT_BODY_THRESHOLD_HU)
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(ct)
    sitk.WriteImage(mask_image, str(tmp_path / "mask.nii.gz"))
    convert(tmp_path / "input.nii.gz", tmp_path / "out",
            ConvertOptions(modality=modality, mask=tmp_path / "mask.nii.gz", dicom=False, preview=False))
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "sct.nii.gz")))
    model_mae = mae(gt, sct, mask)
    constant_mae = mae(gt, np.where(mask > 0, 40.0, -1024.0), mask)
    assert model_mae < 0.8 * constant_mae, (model_mae, constant_mae)


REAL_HEAD_MRS = ["brain1_image.nrrd", "brain2_image.nrrd"]
"""The real T1 head MRs of ../shared/data (pyradiomics, 6.5 mm slices); no model saw them."""


@needs_models
@pytest.mark.parametrize("name", REAL_HEAD_MRS)
def test_real_head_mr_gets_a_skull(name, tmp_path):
    """The sCT of a real head MR shows a skull: 4-25% of the head above 250 HU, >= 70% of it near the surface."""
    source = shared_data("pyradiomics_mr_brain_breast", name)
    convert(source, tmp_path / "out", ConvertOptions(dicom=False, preview=False))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["region"]["value"] == "head-neck"
    sct_image = sitk.ReadImage(str(tmp_path / "out" / "sct.nii.gz"))
    sct = sitk.GetArrayFromImage(sct_image).astype(np.float32)
    head = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "mask.nii.gz"))) > 0
    bone_share, near_surface = skull_figures(sct, head, sct_image.GetSpacing()[::-1])
    assert 0.04 <= bone_share <= 0.25, bone_share
    assert near_surface >= 0.7, near_surface
