"""One type for every CT segmentation network: an sctconv segmentation model or an nnU-Net v2 model.

A :class:`Segmenter` is what the AFP loss (its frozen features) and `sctconv evaluate` (its label
maps) need, whoever trained the network: the network, its classes, its normalization, the grid it
works on and the size its inputs must be a multiple of. Two loaders build it:
:func:`segmenter_from_model` here and :func:`sctconv.nn.nnunet.load_nnunet_segmenter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sctconv.errors import SctconvError
from sctconv.nn.model import Model
from sctconv.preprocessing.normalize import Normalization

if TYPE_CHECKING:
    from sctconv.nn.network import UNet
    from sctconv.nn.nnunet import NnUNetModel, NnUNetNetwork


@dataclass(frozen=True)
class Segmenter:
    """A frozen CT segmentation network; spacing, patch size and divisor in (z, y, x).

    ``network(x)`` gives one logit per class; ``network.features(x)`` the maps of the AFP loss, then
    the logits. ``model`` is what it was loaded from.
    """

    network: UNet | NnUNetNetwork
    classes: tuple[str, ...]  # one name per output channel; the channel index is the label value
    normalization: Normalization
    spacing: tuple[float, float, float]  # mm
    patch_size: tuple[int, int, int]  # voxels
    divisor: tuple[int, int, int]  # inputs must be a multiple of this
    model: Model | NnUNetModel

    def __post_init__(self) -> None:
        self.network.eval().requires_grad_(False)


def segmenter_from_model(model: Model) -> Segmenter:
    """An sctconv model folder's network as a segmenter; refused unless its card says segmentation."""
    card = model.card
    if card.task != "segmentation":
        raise SctconvError(f"model {card.name} is not a segmentation model")
    return Segmenter(network=model.network, classes=tuple(card.classes), normalization=card.input_normalization,
                     spacing=card.spacing, patch_size=card.patch_size, divisor=card.architecture.divisor,
                     model=model)
