"""nnU-Net v2 model folders as teachers: a tiny but structurally real folder made with
dynamic-network-architectures, loaded without unpickling code, used by AFP and for segmentation."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("dynamic_network_architectures",
                    reason="dynamic-network-architectures is not installed (pip install -e '.[nnunet]')")

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet  # noqa: E402
from torch import nn  # noqa: E402

from sctconv.errors import SctconvError  # noqa: E402
from sctconv.evaluation.evaluate import load_segmenter, segment  # noqa: E402
from sctconv.inference.predict import TorchBackend, sliding_window  # noqa: E402
from sctconv.nn.model import load_model  # noqa: E402
from sctconv.nn.nnunet import NnUNetModel  # noqa: E402
from sctconv.nn.teacher import AFPLoss, load_teacher  # noqa: E402
from sctconv.preprocessing.normalize import (
    Normalization,  # noqa: E402
    normalize,  # noqa: E402
)
from tests.helpers import cli  # noqa: E402

LABELS = {"background": 0, "organs": 1, "bones": 2}
STATS = {"mean": 40.0, "std": 350.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "median": 30.0,
         "min": -1024.0, "max": 3071.0}
# In the network's (transposed) axis order, as nnU-Net writes them.
STRIDES = [[1, 1, 1], [1, 2, 1], [2, 2, 2], [1, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
FEATURES = [4, 8, 16, 16]
SPACING = [3.0, 2.0, 2.5]
PATCH = [8, 16, 16]
BLOCKS = {PlainConvUNet: "n_conv_per_stage", ResidualEncoderUNet: "n_blocks_per_stage"}
RAN: list[str] = []


def _record(message: str) -> list[str]:
    RAN.append(message)
    return RAN


class Payload:
    """An object whose unpickling would run code (it records that it did)."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def architecture(network: type) -> dict:
    return {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{network.__name__}",
        "arch_kwargs": {
            "n_stages": 4, "features_per_stage": FEATURES, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": KERNELS, "strides": STRIDES, BLOCKS[network]: [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def dna_network(network: type, outputs: int = len(LABELS)) -> nn.Module:
    torch.manual_seed(0)
    net = network(1, 4, FEATURES, nn.Conv3d, KERNELS, STRIDES, [2, 2, 2, 2], outputs, [2, 2, 2], True,
                        nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                        deep_supervision=False)
    with torch.no_grad():  # instance norms start as identities: make them matter
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def plans(transpose: list[int], network: type, old_style: bool, scheme: str = "CTNormalization") -> dict:
    configuration = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [40, 80, 80],
                     "spacing": SPACING, "normalization_schemes": [scheme], "use_mask_for_norm": [False],
                     "resampling_fn_data": "resample_data_or_seg_to_shape", "batch_dice": False}
    if old_style:
        configuration.update(UNet_class_name=network.__name__, UNet_base_num_features=4, unet_max_num_features=16,
                             n_conv_per_stage_encoder=[2, 2, 2, 2], n_conv_per_stage_decoder=[2, 2, 2],
                             num_pool_per_axis=[2, 3, 2], pool_op_kernel_sizes=STRIDES, conv_kernel_sizes=KERNELS)
    else:
        configuration["architecture"] = architecture(network)
    return {"dataset_name": "Dataset090_Test", "plans_name": "nnUNetPlans", "transpose_forward": transpose,
            "transpose_backward": [int(a) for a in np.argsort(transpose)], "image_reader_writer": "SimpleITKIO",
            "configurations": {"3d_fullres": configuration,
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}},
            "foreground_intensity_properties_per_channel": {"0": STATS}}


def checkpoint(state: dict, dataset: dict, plan: dict, **extra) -> dict:
    """What nnUNetTrainer.save_checkpoint writes, numpy scalars included."""
    return {"network_weights": state, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float32(0.5)], "ema_fg_dice": [np.float64(0.5)],
                        "train_losses": [np.float64(-0.3)], "lrs": [0.01]},
            "_best_ema": np.float64(0.5), "current_epoch": 1,
            "init_args": {"plans": plan, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2), **extra}


def make_folder(root: Path, transpose: list[int] = (0, 1, 2), network: type = PlainConvUNet, old_style: bool = False,
                checkpoint_name: str = "checkpoint_final.pth", synthesis: bool = False,
                **extra) -> tuple[Path, nn.Module]:
    """A trained-model folder as nnU-Net lays it out, and the network its checkpoint holds; with
    ``synthesis``, an MR -> CT regression network (one output, z-scored MR input) as nnUNet_translation trains."""
    folder = root / "Dataset090_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    plan = plans(list(transpose), network, old_style, "ZScoreNormalization" if synthesis else "CTNormalization")
    dataset = {"channel_names": {"0": "MR" if synthesis else "CT"}, "labels": {"background": 0} if synthesis
               else LABELS, "numTraining": 3, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plan))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    net = dna_network(network, 1 if synthesis else len(LABELS))
    torch.save(checkpoint(net.state_dict(), dataset, plan, **extra), folder / "fold_0" / checkpoint_name)
    return folder, net


@pytest.mark.parametrize("transpose", [[0, 1, 2], [0, 2, 1]])
def test_loads_as_a_teacher_and_computes_what_the_dna_network_computes(tmp_path, transpose):
    folder, net = make_folder(tmp_path, transpose)
    teacher = load_teacher(folder)
    assert isinstance(teacher.model, NnUNetModel)
    model = teacher.model
    assert model.classes == list(LABELS) and model.configuration == "3d_fullres"
    assert model.checkpoint == folder / "fold_0" / "checkpoint_final.pth"
    assert teacher.normalization == Normalization("zscore-dataset", (-1000.0, 1500.0), 40.0, 350.0)
    back = np.argsort(transpose)
    assert model.spacing == tuple(SPACING[i] for i in back) and model.patch_size == tuple(PATCH[i] for i in back)
    assert teacher.divisor == tuple((2, 8, 4)[i] for i in back)
    assert not any(p.requires_grad for p in model.network.parameters())

    x = torch.randn(1, 1, 4, 16, 16)  # (z, y, x)
    axes = (0, 1, *(2 + a for a in transpose))
    with torch.no_grad():
        expected = net(x.permute(axes)).permute((0, 1, *(2 + int(a) for a in back)))
        logits = model.network(x)
        features = model.network.features(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(features[-1], logits, rtol=1e-5, atol=1e-5)
    # Encoder skips but the two deepest (stages 0 and 1), then the three decoder stages, then the
    # logits; (channels, shape in the network's axis order) for an input of (4, 16, 16) there.
    net_shapes = [(4, (4, 16, 16)), (8, (4, 8, 16)), (16, (2, 4, 8)), (8, (4, 8, 16)), (4, (4, 16, 16)),
                  (3, (4, 16, 16))]
    assert [tuple(f.shape[1:]) for f in features] == [(c, *(s[b] for b in back)) for c, s in net_shapes]


def test_fold_folder_checkpoint_file_and_best_checkpoint(tmp_path):
    folder, _ = make_folder(tmp_path, checkpoint_name="checkpoint_best.pth")
    assert load_teacher(folder).model.checkpoint.name == "checkpoint_best.pth"
    assert load_teacher(folder / "fold_0").model.folder == folder
    assert load_teacher(folder / "fold_0" / "checkpoint_best.pth").model.folder == folder


@pytest.mark.parametrize("network", [PlainConvUNet, ResidualEncoderUNet])
@pytest.mark.parametrize("old_style", [False, True])
def test_plain_and_residual_encoder_unets_from_new_and_old_style_plans(tmp_path, network, old_style):
    folder, net = make_folder(tmp_path, network=network, old_style=old_style)
    teacher = load_teacher(folder)
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        logits = teacher.model.network(x)
        torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
        torch.testing.assert_close(teacher.model.network.features(x)[-1], logits, rtol=1e-5, atol=1e-5)


def test_checkpoints_written_with_numpy_1_load(tmp_path):
    folder, _ = make_folder(tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    source, out = zipfile.ZipFile(path), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(info, data)
    path.write_bytes(out.getvalue())
    assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    assert load_teacher(folder).model.classes == list(LABELS)


def test_a_checkpoint_holding_python_objects_is_refused_unopened(tmp_path):
    folder, _ = make_folder(tmp_path, payload=Payload())
    RAN.clear()
    with pytest.raises(SctconvError, match=r"refers to .*_record.*only tensors") as error:
        load_teacher(folder)
    assert "\n" not in str(error.value) and RAN == []


def test_broken_checkpoints_plans_and_weights_are_one_line_errors(tmp_path):
    folder, net = make_folder(tmp_path)
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    good = checkpoint_path.read_bytes()
    checkpoint_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(SctconvError, match="cannot read checkpoint"):
        load_teacher(folder)
    checkpoint_path.write_bytes(good)

    plan = json.loads((folder / "plans.json").read_text())
    arch = plan["configurations"]["3d_fullres"]["architecture"]
    arch["arch_kwargs"]["features_per_stage"] = [4, 8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(SctconvError, match="does not match the network of its plans"):
        load_teacher(folder)
    arch["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(SctconvError, match="not a known building block"):
        load_teacher(folder)
    arch["network_class_name"] = "subprocess.Popen"
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(SctconvError, match="ask for network 'subprocess.Popen'"):
        load_teacher(folder)
    del plan["foreground_intensity_properties_per_channel"]
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(SctconvError, match="incomplete or malformed"):
        load_teacher(folder)


def test_afp_loss_runs_with_an_nnunet_teacher(tmp_path):
    folder, _ = make_folder(tmp_path)
    afp = AFPLoss(load_teacher(folder), Normalization("zscore-dataset", (-1024.0, 3071.0), -200.0, 400.0))
    target = torch.randn(2, 1, 6, 20, 12)  # padded to a multiple of the divisor (2, 8, 4) inside
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    loss = afp(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and pred.grad.abs().sum() > 0
    assert afp(target, target).item() == 0


def test_segment_gives_a_label_map_on_the_ct_grid(tmp_path):
    folder, _ = make_folder(tmp_path)
    teacher = load_teacher(folder)
    rng = np.random.default_rng(0)
    # On the model grid (LPS, the plans' spacing): labels are the argmax of the blended logits.
    array = rng.normal(0, 400, (10, 24, 20)).astype(np.float32)
    ct = sitk.GetImageFromArray(array)
    ct.SetSpacing(SPACING[::-1])
    ct.SetOrigin((-20.0, 10.0, 5.0))
    labels = segment(teacher, ct)
    assert labels.GetPixelID() == sitk.sitkUInt8 and labels.GetSize() == ct.GetSize()
    x = normalize(array, np.ones(array.shape, bool), teacher.normalization)
    logits = sliding_window(x, TorchBackend(teacher.model.network, "cpu"), teacher.model.patch_size, step=0.5,
                            blend="gaussian")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), logits.argmax(0))
    assert len(np.unique(logits.argmax(0))) > 1

    # An oblique, anisotropic CT, through `sctconv evaluate`'s segmenter loader.
    ct.SetSpacing((1.1, 1.4, 2.6))
    ct.SetDirection(sitk.VersorTransform((0.2, 0.1, 1.0), 0.3).GetMatrix())
    labels = load_segmenter(folder, "cpu")(ct)
    for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, what)() == getattr(ct, what)()
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2}


@pytest.mark.parametrize("network", [PlainConvUNet, ResidualEncoderUNet])
@pytest.mark.parametrize("transpose", [[0, 1, 2], [2, 0, 1]])
def test_an_imported_synthesis_model_predicts_what_the_nnunet_network_predicts(tmp_path, network, transpose):
    """import-nnunet: the folder converts as an sctconv model whose windows give the DNA network's output."""
    folder, net = make_folder(tmp_path, transpose, network, synthesis=True)
    target = tmp_path / "ct_plans.json"
    target.write_text(json.dumps({"foreground_intensity_properties_per_channel": {"0": {"mean": -300.0,
                                                                                        "std": 500.0}}}))
    out = tmp_path / "imported"
    result = cli("import-nnunet", str(folder), str(out), "--modality", "mr", "--target-plans", str(target))
    assert result.exit_code == 0, result.stderr
    model = load_model(out)
    card = model.card
    back = np.argsort(transpose)
    assert card.architecture.kind == "nnunet" and card.input_normalization == Normalization("zscore-case")
    assert card.target_normalization == Normalization("zscore-dataset", (-1024.0, 3071.0), -300.0, 500.0)
    assert card.spacing == tuple(SPACING[i] for i in back) and card.patch_size == tuple(PATCH[i] for i in back)
    volume = np.random.default_rng(5).normal(size=(21, 40, 33)).astype(np.float32)
    ours = sliding_window(volume, TorchBackend(model.network, "cpu"), card.patch_size, batch_size=3)
    forward, backward = (0, 1, *(2 + a for a in transpose)), (0, 1, *(2 + int(a) for a in back))

    class Reference:  # the DNA network on nnU-Net's transposed axes, as nnU-Net runs it
        name, device = "dna", "cpu"

        def __call__(self, batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net(batch.permute(forward)).permute(backward)

    reference = sliding_window(volume, Reference(), card.patch_size, batch_size=3)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    sct = tmp_path / "sct"
    mr = sitk.GetImageFromArray(np.where(volume > -1, volume * 100 + 500, 0).astype(np.float32))
    mr.SetSpacing((2.5, 2.0, 3.0))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    converted = cli("convert", str(tmp_path / "mr.nii.gz"), str(sct), "--model", str(out), "--no-dicom",
                    "--region", "thorax")
    assert converted.exit_code == 0, converted.stderr
    trained = cli("train", "--data", str(tmp_path / "no-data-needed"), "--output", str(tmp_path / "more"),
                  "--init", str(out))
    assert trained.exit_code == 1 and "imported nnU-Net model" in trained.stderr  # before looking for data


def test_what_cannot_be_imported_is_refused_with_the_reason(tmp_path):
    segmentation, _ = make_folder(tmp_path / "seg")
    result = cli("import-nnunet", str(segmentation), str(tmp_path / "a"), "--modality", "mr", "--target-mean", "0",
                 "--target-std", "300")
    assert result.exit_code == 1 and "has 3 outputs; a synthesis network has one" in result.stderr
    synthesis, _ = make_folder(tmp_path / "syn", synthesis=True)
    no_target = cli("import-nnunet", str(synthesis), str(tmp_path / "b"), "--modality", "mr")
    assert no_target.exit_code == 1 and "--target-plans" in no_target.stderr
    plan = json.loads((synthesis / "plans.json").read_text())
    plan["configurations"]["3d_fullres"]["normalization_schemes"] = ["RescaleTo01Normalization"]
    (synthesis / "plans.json").write_text(json.dumps(plan))
    other = cli("import-nnunet", str(synthesis), str(tmp_path / "c"), "--modality", "mr", "--target-mean", "0",
                "--target-std", "300")
    assert other.exit_code == 1 and "RescaleTo01Normalization" in other.stderr
    assert not any((tmp_path / n).exists() for n in "abc")
