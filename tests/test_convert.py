"""End to end: `sctconv convert` on phantom inputs, its outputs, and its refusals."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx as onnx_lib
import pydicom
import pytest
import SimpleITK as sitk
import torch

from sctconv.convert.pipeline import ConvertOptions, convert, guess_modality
from sctconv.errors import SctconvError
from sctconv.nn.network import UNet
from tests.helpers import check_sct_folder, cli, make_tiny_model


@pytest.mark.parametrize("modality", ["mr", "cbct"])
def test_convert_writes_sct_on_the_exact_input_grid(modality, phantom_files, tiny_mr_model, tiny_cbct_model,
                                                    tmp_path):
    model = tiny_mr_model if modality == "mr" else tiny_cbct_model
    out = tmp_path / f"out-{modality}"
    report = convert(phantom_files[modality], out, ConvertOptions(model=str(model), preview=True))
    values, mask = check_sct_folder(out, phantom_files[modality])
    assert 0.1 < mask.mean() < 0.9
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["input"]["modality"] == modality
    assert on_disk["model"]["name"] == model.name
    assert set(on_disk["timings_s"]) >= {"read", "mask", "predict", "write", "total"}
    assert on_disk["hu_in_body"]["voxels"] == int(mask.sum())
    assert report["versions"]["sctconv"]
    files = sorted((out / "dicom").glob("*.dcm"))
    assert len(files) == values.shape[0]
    first = pydicom.dcmread(files[0])
    assert first.Modality == "CT" and first.RescaleType == "HU"
    assert "synthetic" in first.DerivationDescription.lower()
    assert (out / "preview.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # exports to ONNX
def test_onnx_and_torch_backends_agree_within_1_hu(phantom_files, tiny_mr_model, tmp_path):
    a = convert(phantom_files["mr"], tmp_path / "torch", ConvertOptions(model=str(tiny_mr_model), dicom=False,
                                                                       preview=False))
    b = convert(phantom_files["mr"], tmp_path / "onnx", ConvertOptions(model=str(tiny_mr_model), dicom=False,
                                                                      preview=False, backend="onnx"))
    assert a["inference"]["backend"] == "torch" and b["inference"]["backend"] == "onnx"
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "torch" / "sct.nii.gz"))).astype(float)
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "onnx" / "sct.nii.gz"))).astype(float)
    assert np.abs(x - y).mean() < 1.0


def export(folder: Path) -> bytes:
    """`sctconv export FOLDER` (in this process); the bytes of the model.onnx it writes."""
    result = cli("export", str(folder))
    assert result.exit_code == 0, result.output
    return (folder / "model.onnx").read_bytes()


@pytest.mark.slow  # exports two models to ONNX
def test_a_stale_or_unbound_model_onnx_is_refused_and_the_report_hashes_what_ran(phantom_files, tiny_mr_model,
                                                                                  tmp_path):
    own = export(tiny_mr_model)
    onnx = tiny_mr_model / "model.onnx"
    unbound = onnx_lib.load_model_from_string(own)
    del unbound.metadata_props[:]
    other = export(make_tiny_model(tmp_path / "other", "mr", seed=1))
    card = json.loads((tiny_mr_model / "model.json").read_text())
    options = ConvertOptions(model=str(tiny_mr_model), dicom=False, preview=False, backend="onnx")
    for damage, expected in ((other, "stale"), (unbound.SerializeToString(), "does not record which weights")):
        onnx.write_bytes(damage)  # another model's export (issue 9: it ran, the report gave these weights' hash)
        with pytest.raises(SctconvError, match=expected):
            convert(phantom_files["mr"], tmp_path / "out", options)
        assert not (tmp_path / "out").exists()
    onnx.write_bytes(own)
    report = convert(phantom_files["mr"], tmp_path / "out", options)
    assert report["model"]["onnx_sha256"] == hashlib.sha256(own).hexdigest()
    assert report["model"]["weights_sha256"] == hashlib.sha256(
        (tiny_mr_model / "model.safetensors").read_bytes()).hexdigest()
    (tiny_mr_model / "model.json").write_text(json.dumps({**card, "patch_size": [32, 32, 32]}))
    with pytest.raises(SctconvError, match="takes patches of"):
        convert(phantom_files["mr"], tmp_path / "out2", options)


def test_existing_output_is_refused_then_replaced_with_overwrite(phantom_files, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    options = ConvertOptions(model=str(tiny_mr_model), dicom=False, preview=False)
    convert(phantom_files["mr"], out, options)
    (out / "sct.nii.gz").unlink()
    with pytest.raises(SctconvError, match="--overwrite"):
        convert(phantom_files["mr"], out, options)
    assert not (out / "sct.nii.gz").exists()
    options.overwrite = True
    convert(phantom_files["mr"], out, options)
    assert (out / "sct.nii.gz").exists()


def test_modality_contradicting_the_model_is_refused(phantom_files, tiny_mr_model, tmp_path):
    with pytest.raises(SctconvError, match="converts mr images"):
        convert(phantom_files["cbct"], tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), modality="cbct"))
    assert not (tmp_path / "out").exists()


def test_modality_guess(phantom):
    ct, mr, cbct = phantom
    assert guess_modality(mr) == "mr"
    assert guess_modality(cbct) == "cbct"


def _bad_inputs(tmp_path: Path, phantom) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image")
    nan = tmp_path / "nan.nii.gz"
    array = sitk.GetArrayFromImage(phantom[1])
    array[3, 10:20, 10:20] = np.nan
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(phantom[1])
    sitk.WriteImage(image, str(nan))
    return {"missing": (tmp_path / "nope.nii.gz", "does not exist"),
            "not an image": (text, "cannot read"),
            "NaN": (nan, "NaN")}


@pytest.mark.parametrize("case", ["missing", "not an image", "NaN"])
def test_bad_input_gives_one_line_and_no_output(case, tmp_path, phantom, tiny_mr_model):
    path, expected = _bad_inputs(tmp_path, phantom)[case]
    out = tmp_path / "out"
    result = cli("convert", str(path), str(out), "--model", str(tiny_mr_model))
    assert result.exit_code != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr.replace("\n", " ")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_model_gives_one_line_and_no_output(phantom_files, tmp_path):
    out = tmp_path / "out"
    result = cli("convert", str(phantom_files["mr"]), str(out), "--model", "no-such-model")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "unknown model" in result.stderr
    assert not out.exists()


def test_unreadable_weights_are_refused(phantom_files, tiny_mr_model, tmp_path):
    (tiny_mr_model / "model.safetensors").write_bytes(b"\x00" * 64)
    result = cli("convert", str(phantom_files["mr"]), str(tmp_path / "out"), "--model", str(tiny_mr_model))
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "cannot read weights" in result.stderr.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_a_card_with_a_nan_std_is_refused_with_one_line_and_no_output(phantom_files, tiny_mr_model, tmp_path):
    card = json.loads((tiny_mr_model / "model.json").read_text())
    card["target_normalization"]["std"] = float("nan")  # converted with exit 0 before issue 9
    (tiny_mr_model / "model.json").write_text(json.dumps(card))
    result = cli("convert", str(phantom_files["mr"]), str(tmp_path / "out"), "--model", str(tiny_mr_model))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "normalization std must be a positive finite number, not nan" in result.stderr.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_output_folder_holding_the_input_is_refused_even_with_overwrite(phantom_files, tiny_mr_model):
    folder = phantom_files["mr"].parent
    with pytest.raises(SctconvError, match="holds the input"):
        convert(phantom_files["mr"], folder, ConvertOptions(model=str(tiny_mr_model), overwrite=True))
    assert phantom_files["mr"].exists() and phantom_files["ct"].exists()


@pytest.mark.parametrize("option, value", [("step", 0.0), ("blend", "median"), ("batch_size", 0),
                                           ("backend", "tensorrt")])
def test_bad_inference_settings_are_refused_before_any_work(option, value, phantom_files, tiny_mr_model, tmp_path):
    options = ConvertOptions(model=str(tiny_mr_model))
    setattr(options, option, value)
    with pytest.raises(SctconvError):
        convert(phantom_files["mr"], tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_a_residual_model_keeps_the_input_detail_on_its_own_grid(phantom_files, tmp_path):
    """A CBCT model whose correction is zero returns its input exactly, on the input's own grid
    (finer than the model grid), inside the body; air outside."""
    from sctconv.nn.model import load_model, save_model

    folder = make_tiny_model(tmp_path / "residual", "cbct")
    model = load_model(folder)
    norm = model.card.target_normalization
    card = replace(model.card, input_normalization=norm,
                   architecture=replace(model.card.architecture, residual_output=True))
    network = UNet(card.architecture)
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.zeros_(network.head.bias)
    save_model(folder, card, network)
    convert(phantom_files["cbct"], tmp_path / "out", ConvertOptions(model=str(folder), dicom=False, preview=False))
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_files["cbct"])))
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "sct.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "mask.nii.gz"))) > 0
    assert mask.sum() > 1000
    assert np.abs(sct[mask] - np.clip(np.round(source[mask]), -1024, 3071)).max() <= 1.0  # int16 rounding
    assert (sct[~mask] == -1024).all()


def test_an_anchored_residual_model_is_blind_to_a_global_offset_and_scale_of_its_input(phantom_files, tmp_path):
    """With a zero correction, an anchored CBCT model moves the peak of the input's body histogram to its
    anchor; the same CBCT read 95 HU higher gives the same sCT, and read 10% stretched as well nearly the
    same (the anchors take offset and scale away)."""
    from sctconv.nn.model import load_model, save_model
    from sctconv.preprocessing.normalize import histogram_peak

    folder = make_tiny_model(tmp_path / "anchored", "cbct")
    model = load_model(folder)
    norm = model.card.target_normalization
    card = replace(model.card, input_normalization=replace(norm, anchor_hu=0.0, air_anchor_hu=-1000.0),
                   architecture=replace(model.card.architecture, residual_output=True))
    network = UNet(card.architecture)
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.zeros_(network.head.bias)
    save_model(folder, card, network)
    image = sitk.Cast(sitk.ReadImage(str(phantom_files["cbct"])), sitk.sitkFloat32)
    sitk.WriteImage(image + 95.0, str(tmp_path / "brighter.mha"))
    sitk.WriteImage(image * 1.1 + 95.0, str(tmp_path / "stretched.mha"))
    options = ConvertOptions(model=str(folder), dicom=False, preview=False)
    sitk.WriteImage(image * 0.6, str(tmp_path / "squeezed.mha"))
    report = convert(phantom_files["cbct"], tmp_path / "out", options)
    mask_path = tmp_path / "out" / "mask.nii.gz"
    convert(tmp_path / "brighter.mha", tmp_path / "out2", replace(options, mask=mask_path))
    stretched = convert(tmp_path / "stretched.mha", tmp_path / "out3", replace(options, mask=mask_path))
    squeezed = convert(tmp_path / "squeezed.mha", tmp_path / "out4", replace(options, mask=mask_path))
    scale = report["inference"]["input_anchor"][0]["scale"]
    assert abs(stretched["inference"]["input_anchor"][0]["scale"] * 1.1 - scale) <= 0.02
    assert not any("most allowed" in w for w in report["warnings"])
    assert any("most allowed" in w for w in squeezed["warnings"])
    everywhere = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    everywhere.CopyInformation(image)
    sitk.WriteImage(everywhere, str(tmp_path / "everywhere.nii.gz"))
    no_air = convert(phantom_files["cbct"], tmp_path / "out5", replace(options, mask=tmp_path / "everywhere.nii.gz"))
    assert no_air["inference"]["input_anchor"][0]["scale"] == 1.0
    assert any("no air around the body" in note for note in no_air["notes"])

    def read(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)

    sct, sct2, mask = read(tmp_path / "out" / "sct.nii.gz"), read(tmp_path / "out2" / "sct.nii.gz"), read(mask_path) > 0
    sct3, source = read(tmp_path / "out3" / "sct.nii.gz"), read(phantom_files["cbct"])
    assert abs(histogram_peak(source[mask]) - histogram_peak(sct[mask])) > 20  # it did move
    assert abs(histogram_peak(sct[mask])) <= 15  # to water, on the input grid
    unclipped = mask & (source > -900) & (source < 2700)
    assert np.abs(sct[unclipped] - sct2[unclipped]).max() <= 1.0  # int16 rounding
    stretch = np.abs(sct3[unclipped] - sct[unclipped])
    assert np.percentile(stretch, 95) <= 10.0  # from 88 HU apart on average (bins of 5 HU)
