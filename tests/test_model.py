import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

import sctconv
from sctconv.errors import SctconvError
from sctconv.inference.predict import OnnxBackend
from sctconv.nn.model import (
    SHIPPED_MODELS,
    available_models,
    canonical_region,
    load_model,
    read_card,
    resolve_model,
    save_model,
)
from sctconv.nn.network import Architecture
from sctconv.preprocessing.normalize import Normalization
from tests.helpers import cli, make_tiny_model


def test_card_round_trip_and_strict_weights(tmp_path: Path):
    folder = make_tiny_model(tmp_path / "m")
    model = load_model(folder)
    assert model.card.patch_size == (16, 32, 32)
    assert read_card(folder).to_dict() == model.card.to_dict()
    assert not model.network.training


def test_weights_of_another_architecture_are_refused(tmp_path: Path):
    a = make_tiny_model(tmp_path / "a")
    card = json.loads((a / "model.json").read_text())
    card["architecture"]["features"] = [4, 8, 32]
    (a / "model.json").write_text(json.dumps(card))
    with pytest.raises(SctconvError, match="do not match the architecture"):
        load_model(a)


@pytest.mark.parametrize("damage", ["no card", "bad json", "missing key", "bad patch", "no weights", "garbage"])
def test_broken_model_folders_give_clear_errors(tmp_path: Path, damage: str):
    folder = make_tiny_model(tmp_path / "m")
    card = json.loads((folder / "model.json").read_text())
    if damage == "no card":
        (folder / "model.json").unlink()
    elif damage == "bad json":
        (folder / "model.json").write_text("{not json")
    elif damage == "missing key":
        del card["target_normalization"]
        (folder / "model.json").write_text(json.dumps(card))
    elif damage == "bad patch":
        card["patch_size"] = [15, 32, 32]
        (folder / "model.json").write_text(json.dumps(card))
    elif damage == "no weights":
        (folder / "model.safetensors").unlink()
    else:
        (folder / "model.safetensors").write_bytes(b"PK\x03\x04 a pickle in disguise")
    with pytest.raises(SctconvError):
        load_model(folder)


def test_regions_and_resolution(tmp_path: Path):
    assert canonical_region("HN") == "head-neck"
    assert canonical_region("Thorax") == "thorax"
    with pytest.raises(SctconvError):
        canonical_region("pelvis")
    make_tiny_model(tmp_path / "a-mr", "mr")
    make_tiny_model(tmp_path / "b-cbct", "cbct")
    assert resolve_model(None, "cbct", None, tmp_path).name == "b-cbct"
    assert resolve_model(None, "mr", "thorax", tmp_path).name == "a-mr"
    assert resolve_model("b-cbct", "mr", None, tmp_path).name == "b-cbct"
    with pytest.raises(SctconvError, match="no shipped model"):
        resolve_model(None, "mr", "head-neck", tmp_path)
    with pytest.raises(SctconvError, match="unknown model"):
        resolve_model("nope", "mr", None, tmp_path)


def test_shipped_models_load_and_document_themselves():
    found = available_models(SHIPPED_MODELS)
    if not found:
        pytest.skip("no shipped models in sctconv/models/")
    modalities = set()
    for folder, card in found:
        model = load_model(folder)
        modalities.add(card.modality)
        assert card.training["train_cases"] and card.training["validation_cases"]
        assert card.target_normalization.scheme == "zscore-dataset"
        assert model.card.regions
        if card.task == "synthesis":
            metrics = card.metrics
            baseline = metrics.get("constant_water_mae_hu", metrics.get("constant_soft_tissue_mae_hu"))
            assert metrics["mae_hu"] < 0.8 * baseline
            if "constant_water_mae_hu" in metrics:  # metrics measured since 2026-12-01 say more
                assert {"bone_dice", "per_region"} <= set(metrics)
                if card.modality == "cbct":
                    assert metrics["mae_hu"] < metrics["input_cbct_mae_hu"]
            if not card.fast:  # the defaults were trained since 2026-12-01 and record how
                assert card.training["device"] and card.training["wall_seconds"] > 0 and card.training["iterations"]
        else:
            assert card.metrics["mean_dice"] > 0.5 and card.classes[0] == "background"
    assert modalities == {"mr", "cbct", "ct"}
    committed = (SHIPPED_MODELS, Path(__file__).resolve().parents[1] / "weights")  # shipped, and weights/wip
    assert sum(f.stat().st_size for folder in committed for f in folder.rglob("*") if f.is_file()) < 100e6



def test_shipped_models_are_found_through_the_package():
    """Names and the default choice resolve inside the installed package (sctconv/models/), never in the
    repository's weights/ (whose wip/ models are named by path only)."""
    models = Path(sctconv.__file__).resolve().parent / "models"
    assert SHIPPED_MODELS == models
    found = available_models()
    assert found and all(folder.parent == models for folder, _ in found)
    for modality in ("mr", "cbct"):
        assert resolve_model(None, modality, None).parent == models
    name = found[0][0].name
    assert resolve_model(name, "", None) == models / name

CARD_DAMAGES = {  # issue 9, item 4: each once converted with exit 0 or ended in an unexpected error
    "NaN std": (("target_normalization", "std"), float("nan")),
    "infinite mean": (("input_normalization", "mean"), float("inf")),
    "std beyond float32": (("target_normalization", "std"), 1e39),
    "negative std": (("target_normalization", "std"), -400.0),
    "std as text": (("target_normalization", "std"), "400"),
    "reversed clip": (("target_normalization", "clip"), [3071.0, -1024.0]),
    "zero spacing": (("spacing",), [0.0, 2.5, 2.5]),
    "negative spacing": (("spacing",), [-3.0, 2.5, 2.5]),
    "NaN spacing": (("spacing",), [3.0, float("nan"), 2.5]),
    "two spacings": (("spacing",), [3.0, 2.5]),
    "zero patch": (("patch_size",), [0, 32, 32]),
    "negative patch": (("patch_size",), [-16, 32, 32]),
    "fractional patch": (("patch_size",), [16.5, 32, 32]),
    "zero features": (("architecture", "features"), [4, 0, 16]),
    "even kernel": (("architecture", "kernel_sizes"), [[3, 3, 3], [2, 2, 2], [3, 3, 3]]),
    "zero stride": (("architecture", "strides"), [[1, 1, 1], [0, 2, 2], [2, 2, 2]]),
    "residual as text": (("architecture", "residual_output"), "false"),
    "two output channels": (("architecture", "out_channels"), 2),
    "region as text": (("regions",), "thorax"),
    "unknown region": (("regions",), ["pelvis"]),
    "name as number": (("name",), 7),
    "anchored target": (("target_normalization", "anchor_hu"), 0.0),
    "anchor as text": (("target_normalization", "anchor_hu"), "0"),
    "anchored MR z-score": (("input_normalization", "anchor_hu"), 0.0),
    "air anchor without anchor": (("input_normalization", "air_anchor_hu"), -1000.0),
    "air anchor on the target": (("target_normalization", "air_anchor_hu"), -1000.0),
}


@pytest.mark.parametrize("damage", CARD_DAMAGES)
def test_every_card_number_is_checked_when_the_card_is_read(tmp_path: Path, damage: str):
    folder = make_tiny_model(tmp_path / "m")
    card = json.loads((folder / "model.json").read_text())
    keys, value = CARD_DAMAGES[damage]
    parent = card
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value
    (folder / "model.json").write_text(json.dumps(card))  # NaN and Infinity as Python's json writes them
    with pytest.raises(SctconvError, match=f"model card {folder / 'model.json'}: "):
        read_card(folder)


def test_cards_built_in_code_are_checked_too(tmp_path: Path):
    card = load_model(make_tiny_model(tmp_path / "m")).card
    assert card.spacing == (3.0, 2.5, 2.5) and card.patch_size == (16, 32, 32)
    with pytest.raises(SctconvError, match="spacing"):
        replace(card, spacing=(0.0, 2.5, 2.5))
    with pytest.raises(SctconvError, match="patch_size"):
        replace(card, patch_size=(16, -32, 32))
    with pytest.raises(SctconvError, match="std"):
        Normalization("zscore-dataset", (-1024.0, 3071.0), 0.0, float("nan"))
    with pytest.raises(SctconvError, match="modality"):
        replace(card, modality="ct")
    assert replace(card, spacing=[3, 2, 2]).spacing == (3.0, 2.0, 2.0)  # ints and lists become float tuples


def test_saving_weights_removes_the_onnx_file_of_the_old_ones(tmp_path: Path):
    folder = make_tiny_model(tmp_path / "m")
    (folder / "model.onnx").write_bytes(b"exported from the weights before")
    model = load_model(folder)
    save_model(folder, model.card, model.network)  # as `train --no-onnx`, or a training whose export fails
    assert not (folder / "model.onnx").exists()
    assert load_model(folder).weights_sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_shipped_onnx_files_are_bound_to_their_weights():
    shipped = [folder for folder, _ in available_models(SHIPPED_MODELS) if (folder / "model.onnx").is_file()]
    for folder in shipped:
        OnnxBackend(load_model(folder), folder / "model.onnx", "cpu")  # refuses a stale or unbound file


def test_fast_picks_the_model_whose_card_says_fast_and_the_default_ignores_it(tmp_path):
    default = make_tiny_model(tmp_path / "b-default", "mr")
    fast = make_tiny_model(tmp_path / "a-fast", "mr")  # first by name: only the card decides
    card = json.loads((fast / "model.json").read_text())
    (fast / "model.json").write_text(json.dumps({**card, "fast": True}))
    assert resolve_model(None, "mr", None, tmp_path) == default
    assert resolve_model(None, "mr", None, tmp_path, fast=True) == fast
    with pytest.raises(SctconvError, match="no shipped fast model for modality cbct"):
        resolve_model(None, "cbct", None, tmp_path, fast=True)
    (fast / "model.json").write_text(json.dumps({**card, "fast": "yes"}))
    with pytest.raises(SctconvError, match="fast must be true or false"):
        read_card(fast)
    result = cli("convert", "in.nii.gz", str(tmp_path / "out"), "--fast", "--model", str(default))
    assert result.exit_code == 1 and "--fast picks the shipped fast model" in result.stderr


def test_the_json_of_sctconv_networks_is_what_it_was_before_imports_existed():
    """Checkpoints identify their run by this JSON: a new key would refuse every earlier checkpoint."""
    assert set(Architecture().to_dict()) == {"kind", "features", "strides", "kernel_sizes", "encoder_blocks",
                                             "decoder_blocks", "in_channels", "out_channels", "residual_output"}
