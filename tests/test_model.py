import json
from pathlib import Path

import pytest

from sctconv.errors import SctconvError
from sctconv.model import (WEIGHTS_DIR, available_models, canonical_region, load_model, read_card,
                           resolve_model)
from tests.conftest import make_tiny_model


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
    found = available_models(WEIGHTS_DIR)
    if not found:
        pytest.skip("no shipped models in weights/")
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
            if "constant_water_mae_hu" in metrics:  # cards written since 2026-12-01 say more
                assert {"bone_dice", "per_region"} <= set(metrics)
                assert card.training["device"] and card.training["wall_seconds"] > 0 and card.training["iterations"]
                if card.modality == "cbct":
                    assert metrics["mae_hu"] < metrics["input_cbct_mae_hu"]
        else:
            assert card.metrics["mean_dice"] > 0.5 and card.classes[0] == "background"
    assert modalities == {"mr", "cbct", "ct"}
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file()) < 100e6
