"""Test-time augmentation, ensembles and the uncertainty map: zero where every member and window agrees,
the members' spread where they do not; written by `convert --tta 2 --uncertainty` on the input grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.inference.synthesize import Member, synthesize
from sctconv.nn.model import read_card
from sctconv.preprocessing.body_mask import body_mask_from_array
from tests.helpers import cli


class Constant:
    """Every window's output is ``value`` (normalized CT): all windows and flips agree."""

    name, device = "constant", "cpu"

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full_like(batch, self.value)


class Bright:
    """1 where the normalized input is positive, else 0: a per-voxel answer, the same in every window."""

    name, device = "bright", "cpu"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch > 0).float()


class LeftHalf:
    """1 in the left half of each window: windows and flipped copies disagree."""

    name, device = "left-half", "cpu"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(batch)
        out[..., : batch.shape[-1] // 2] = 1.0
        return out


def body_mask(image: sitk.Image) -> sitk.Image:
    mask = sitk.GetImageFromArray(body_mask_from_array(sitk.GetArrayFromImage(image), 20.0).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def test_uncertainty_is_zero_where_members_agree_and_their_spread_where_they_do_not(phantom, tiny_mr_model):
    _, mr, _ = phantom
    mask = body_mask(mr)
    card = read_card(tiny_mr_model)
    std_hu = card.target_normalization.std
    body = sitk.GetArrayFromImage(mask) > 0

    agree = synthesize([Member(card, Constant(0.5))], mr, mask, tta=4, uncertainty=True)
    assert agree.uncertainty is not None
    spread = sitk.GetArrayFromImage(agree.uncertainty)
    assert np.abs(spread).max() < 1e-2 and sitk.GetArrayFromImage(agree.sct)[body].std() < 1.0

    # Two members, 0 and Bright: where Bright says 1 they differ by one std of the CT (std_hu HU), so the
    # standard deviation there is half of it; where Bright says 0 they agree.
    split = synthesize([Member(card, Constant(0.0)), Member(card, Bright())], mr, mask, uncertainty=True)
    assert split.uncertainty is not None
    spread = sitk.GetArrayFromImage(split.uncertainty)
    values = sitk.GetArrayFromImage(split.sct)
    high = body & (values > card.target_normalization.mean + 0.45 * std_hu)  # Bright said 1: the mean is 0.5
    low = body & (np.abs(values - card.target_normalization.mean) < 1.0)  # both said 0
    assert high.sum() > 100 and low.sum() > 100
    assert abs(np.median(spread[high]) - 0.5 * std_hu) < 1
    assert np.median(spread[low]) < 1.0
    assert (spread[~body] == 0).all()

    windows = synthesize([Member(card, LeftHalf())], mr, mask, uncertainty=True)
    flips = synthesize([Member(card, LeftHalf())], mr, mask, tta=2, uncertainty=True)
    assert windows.uncertainty is not None and flips.uncertainty is not None
    assert sitk.GetArrayFromImage(windows.uncertainty)[body].mean() > 10  # overlapping windows disagree
    assert sitk.GetArrayFromImage(flips.uncertainty)[body].mean() > 10


def test_convert_with_tta_writes_the_uncertainty_map_and_summarises_it(phantom_files, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    result = cli("convert", str(phantom_files["mr"]), str(out), "--model", str(tiny_mr_model), "--tta", "2",
                 "--uncertainty", "--ensemble", str(tiny_mr_model), "--no-dicom", "--quiet")
    assert result.exit_code == 0, result.stderr
    source = sitk.ReadImage(str(phantom_files["mr"]))
    spread = sitk.ReadImage(str(out / "uncertainty.nii.gz"))
    assert spread.GetSize() == source.GetSize()
    for a, b in ((spread.GetSpacing(), source.GetSpacing()), (spread.GetDirection(), source.GetDirection()),
                 (spread.GetOrigin(), source.GetOrigin())):
        np.testing.assert_allclose(a, b, atol=1e-5)  # NIfTI keeps the geometry in float32
    report = json.loads((out / "report.json").read_text())
    assert report["inference"]["tta"] == 2 and len(report["inference"]["ensemble"]) == 2
    summary = report["uncertainty"]
    assert summary["mean_in_body"] >= 0 and summary["threshold_hu"] == 50 and "uncertainty.nii.gz" in report["outputs"]
    assert isinstance(summary["flagged"], bool)
    if summary["flagged"]:
        assert any("uncertainty" in w for w in report["warnings"])


def test_no_uncertainty_unless_asked_and_bad_tta_refused(phantom_files, tiny_mr_model, tmp_path):
    report = convert(phantom_files["mr"], tmp_path / "plain", ConvertOptions(model=str(tiny_mr_model), dicom=False,
                                                                            preview=False))
    assert report["uncertainty"] is None and not (tmp_path / "plain" / "uncertainty.nii.gz").exists()
    bad = cli("convert", str(phantom_files["mr"]), str(tmp_path / "x"), "--tta", "9")
    assert bad.exit_code == 1 and "--tta must be 1 to 8" in bad.stderr
    alone = cli("convert", str(phantom_files["mr"]), str(tmp_path / "y"), "--ensemble", str(tiny_mr_model))
    assert alone.exit_code == 1 and "--ensemble adds models to --model" in alone.stderr
    assert not Path(tmp_path / "x").exists() and not Path(tmp_path / "y").exists()
