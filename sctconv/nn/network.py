"""The paper's 3D U-Nets: residual encoder and decoder (nnResU-Net) or plain conv blocks.

Both share one layout: a stack of stages, each reducing the resolution by its stride, and a
decoder that upsamples by trilinear interpolation followed by a 3x3x3 convolution (no transposed
convolutions), concatenates the skip connection and refines with blocks of its own. Every conv is
followed by InstanceNorm and LeakyReLU. The head is a 1x1x1 conv to one output channel, with no
activation. Sizes come from an :class:`Architecture`, which the model card stores, so the paper's
~120 M parameter network and the small shipped models are the same code.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Network sizes; axes of kernels and strides are (z, y, x)."""

    kind: str = "residual"  # "residual" blocks (nnResU-Net), "plain" conv-norm-act layers, or "nnunet" (imported)
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[tuple[int, int, int], ...] = (
        (1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    kernel_sizes: tuple[tuple[int, int, int], ...] = (
        (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    encoder_blocks: tuple[int, ...] = (1, 3, 4, 6, 6, 6)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 2, 2)
    in_channels: int = 1
    out_channels: int = 1
    residual_output: bool = False  # the output is the input plus what the network computes (CBCT correction)
    nnunet: dict | None = None  # kind "nnunet": the plans' network, see sctconv.nn.nnunet.nnunet_spec

    def __post_init__(self) -> None:
        stages = len(self.features)
        if self.kind not in ("residual", "plain", "nnunet"):
            raise ValueError(f"unknown architecture kind {self.kind!r}")
        if (self.kind == "nnunet") != isinstance(self.nnunet, dict):
            raise ValueError("an imported nnU-Net network (kind nnunet) is described by its nnunet block, and only it")
        if not (len(self.strides) == len(self.kernel_sizes) == len(self.encoder_blocks) == stages):
            raise ValueError("features, strides, kernel_sizes and encoder_blocks need one entry per stage")
        if len(self.decoder_blocks) != stages - 1:
            raise ValueError("decoder_blocks needs one entry per stage but the deepest")
        if self.residual_output and self.in_channels != self.out_channels:
            raise ValueError("a residual output needs as many output as input channels")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Counts are positive integers; strides and kernels are (z, y, x) triples, kernels odd (their
        padding keeps the size)."""
        counts = (*self.features, *self.encoder_blocks, *self.decoder_blocks, self.in_channels, self.out_channels)
        if not all(_positive_int(c) for c in counts):
            raise ValueError("features, blocks and channels must be positive integers")
        for name, triples in (("strides", self.strides), ("kernel_sizes", self.kernel_sizes)):
            if not all(len(t) == 3 and all(_positive_int(v) for v in t) for t in triples):
                raise ValueError(f"{name} must be (z, y, x) triples of positive integers, not {triples}")
        if any(k % 2 == 0 for kernel in self.kernel_sizes for k in kernel):
            raise ValueError(f"kernel sizes must be odd, not {self.kernel_sizes}")
        if not isinstance(self.residual_output, bool):
            raise ValueError(f"residual_output must be true or false, not {self.residual_output!r}")

    @property
    def divisor(self) -> tuple[int, int, int]:
        """The patch size must be a multiple of this along (z, y, x)."""
        if self.nnunet is not None:
            z, y, x = self.nnunet["divisor"]
            return int(z), int(y), int(x)
        total = [1, 1, 1]
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return (total[0], total[1], total[2])

    def to_dict(self) -> dict:
        """The JSON form; ``nnunet`` only for an imported network, so that the cards and checkpoint
        identities of sctconv's own networks read as they did before imports existed."""
        data = asdict(self)
        if data["nnunet"] is None:
            del data["nnunet"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(
            kind=data["kind"],
            features=tuple(data["features"]),
            strides=tuple(tuple(s) for s in data["strides"]),
            kernel_sizes=tuple(tuple(k) for k in data["kernel_sizes"]),
            encoder_blocks=tuple(data["encoder_blocks"]),
            decoder_blocks=tuple(data["decoder_blocks"]),
            in_channels=data.get("in_channels", 1),
            out_channels=data.get("out_channels", 1),
            residual_output=data.get("residual_output", False),
            nnunet=data.get("nnunet"),
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0


def _padding(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class ConvNormAct(nn.Sequential):
    """Conv3d, InstanceNorm3d (affine), LeakyReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int],
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, kernel, stride=stride, padding=_padding(kernel), bias=True),
            nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two convs with a skip path; when the shape changes, the skip is avg-pool then 1x1x1 conv."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int],
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, kernel, stride)
        self.conv2 = nn.Conv3d(cout, cout, kernel, padding=_padding(kernel), bias=True)
        self.norm2 = nn.InstanceNorm3d(cout, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(nn.AvgPool3d(stride, stride))
        if cin != cout:
            skip += [nn.Conv3d(cin, cout, 1, bias=False), nn.InstanceNorm3d(cout, eps=1e-5, affine=True)]
        self.skip = nn.Sequential(*skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


def _stage(kind: str, cin: int, cout: int, kernel: tuple[int, int, int],
           stride: tuple[int, int, int], blocks: int) -> nn.Sequential:
    """``blocks`` residual blocks, or ``blocks`` conv-norm-act layers for the plain U-Net."""
    block = ResidualBlock if kind == "residual" else ConvNormAct
    layers = [block(cin, cout, kernel, stride)]
    layers += [block(cout, cout, kernel) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class UpsampleConv(nn.Module):
    """Trilinear upsampling (align_corners=True) to the skip's size, then a 3x3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="trilinear", align_corners=True))


class UNet(nn.Module):
    """Residual (nnResU-Net) or plain 3D U-Net with one output channel.

    ``forward(x)`` returns the output (with ``residual_output``, the input plus the head's output, so
    that the network learns the difference between input and target); ``features(x)`` returns the encoder skips and
    decoder stage outputs (for the AFP loss's frozen teacher) followed by the output.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        f, k = arch.features, arch.kernel_sizes
        self.stem = ConvNormAct(arch.in_channels, f[0], k[0]) if arch.kind == "residual" else nn.Identity()
        first_in = f[0] if arch.kind == "residual" else arch.in_channels
        self.encoder = nn.ModuleList()
        for i in range(len(f)):
            self.encoder.append(_stage(arch.kind, first_in if i == 0 else f[i - 1], f[i], k[i], arch.strides[i],
                                       arch.encoder_blocks[i]))
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(f) - 1)):
            self.upsample.append(UpsampleConv(f[i + 1], f[i]))
            self.decoder.append(_stage(arch.kind, 2 * f[i], f[i], k[i], (1, 1, 1), arch.decoder_blocks[i]))
        self.head = nn.Conv3d(f[0], arch.out_channels, 1, bias=True)

    def _run(self, x: torch.Tensor, collect: list[torch.Tensor] | None) -> torch.Tensor:
        source = x
        x = self.stem(x)
        skips = []
        *upper, bottleneck = self.encoder
        for stage in upper:
            x = stage(x)
            skips.append(x)
        # The bottleneck (a few voxels wide, little of the compute) runs in fp32 under autocast: in bf16 on an
        # AMD EPYC its weight gradients came out NaN in about one step of 20 (benchmarks/RESULTS.md).
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):  # any device, meta too
            x = bottleneck(x.float())
        skips.append(x)
        if collect is not None:
            collect.extend(skips[:-1])
        for up, stage, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = stage(torch.cat([up(x, skip.shape[2:]), skip], dim=1))
            if collect is not None:
                collect.append(x)
        out = self.head(x)
        return out + source if self.arch.residual_output else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder skips (all but the bottleneck), decoder stage outputs, then the output."""
        collected: list[torch.Tensor] = []
        out = self._run(x, collected)
        return collected + [out]


def build_network(arch: Architecture) -> UNet:
    """The network of ``arch``: the one constructor that model loading, training and planning use."""
    return UNet(arch)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
