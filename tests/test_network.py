import pytest
import torch
from torch import nn

from sctconv.nn.network import Architecture, UNet, count_parameters
from tests.helpers import TINY


def test_paper_residual_unet_size_and_layout():
    net = UNet(Architecture())
    # The paper's nnResU-Net with trilinear+conv decoder: ~122 M parameters (reference notes: 122.4 M).
    assert 118e6 < count_parameters(net) < 126e6
    assert not any(isinstance(m, nn.ConvTranspose3d) for m in net.modules())
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in net.modules()) > 50
    assert net.head.out_channels == 1


def test_plain_configuration_builds_and_runs():
    arch = Architecture(kind="plain", features=(4, 8, 16), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)), encoder_blocks=(2, 2, 2),
                        decoder_blocks=(2, 2))
    net = UNet(arch)
    out = net(torch.randn(1, 1, 8, 16, 16))
    assert out.shape == (1, 1, 8, 16, 16)
    assert not any(type(m).__name__ == "ResidualBlock" for m in net.modules())


def test_features_are_skips_then_decoder_then_output():
    net = UNet(TINY).eval()
    x = torch.randn(2, 1, 16, 32, 32)
    feats = net.features(x)
    assert [f.shape[1] for f in feats] == [4, 8, 8, 4, 1]
    assert torch.allclose(feats[-1], net(x))


def test_architecture_round_trips_and_checks():
    assert Architecture.from_dict(Architecture().to_dict()) == Architecture()
    assert Architecture().divisor == (8, 32, 32)
    with pytest.raises(ValueError):
        Architecture(features=(4, 8), strides=((1, 1, 1),), kernel_sizes=((3, 3, 3),) * 2,
                     encoder_blocks=(1, 1), decoder_blocks=(1,))
    with pytest.raises(ValueError):
        Architecture(residual_output=True, out_channels=2)
    residual = Architecture(residual_output=True)
    assert Architecture.from_dict(residual.to_dict()) == residual
    assert not Architecture.from_dict({k: v for k, v in Architecture().to_dict().items()
                                       if k != "residual_output"}).residual_output  # cards from before
