"""The shipped models on the shipped examples and on a real CT none of them was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.mask import CT_BODY_THRESHOLD_HU, body_mask_from_array
from sctconv.metrics import mae
from sctconv.model import WEIGHTS_DIR, available_models
from sctconv.pipeline import ConvertOptions, convert
from sctconv.simulate import simulate_cbct, simulate_mr
from tests.conftest import shared_data
from tests.test_convert import check_sct_folder, run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHIPPED = {card.modality: card for _, card in available_models(WEIGHTS_DIR) if card.task == "synthesis"}
needs_models = pytest.mark.skipif(set(SHIPPED) != {"mr", "cbct"}, reason="shipped models are not in weights/")


@needs_models
@pytest.mark.parametrize("example", ["phantom_mr.nii.gz", "phantom_cbct.nii.gz"])
def test_readme_command_on_the_examples(example, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", str(EXAMPLES / example), str(out))
    assert result.returncode == 0, result.stderr
    assert {"sct.nii.gz", "mask.nii.gz", "report.json", "preview.png", "dicom"} <= {p.name for p in out.iterdir()}
    values, mask = check_sct_folder(out, EXAMPLES / example)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == SHIPPED[report["input"]["modality"]].name
    # The phantom's own CT is the reference: the sCT must beat a constant soft-tissue CT clearly.
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(EXAMPLES / "phantom_ct.nii.gz")))
    assert mae(ct, values, mask) < 0.8 * mae(ct, np.where(mask > 0, 40.0, -1024.0), mask)


@needs_models
def test_dicom_example_converts(tmp_path):
    result = run_cli("convert", str(EXAMPLES / "phantom_mr_dicom"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
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
