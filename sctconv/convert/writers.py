"""The outputs of a conversion, one writer each: the sCT and mask images, the DICOM series, the preview.

A writer takes the :class:`Conversion` and the staging folder and returns what the report lists for it;
:func:`output_writers` chooses them from the options. A new output (an RT Structure Set of the body, an
Enhanced CT) is one writer class here and one option.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import SimpleITK as sitk
from pydicom.dataset import Dataset

from sctconv import __version__
from sctconv.convert.options import ConvertOptions
from sctconv.convert.preview import save_preview
from sctconv.io.dicom.write import SeriesOptions, write_sct_series
from sctconv.io.images import InputVolume, write_image
from sctconv.nn.model import Model


@dataclass(frozen=True)
class Conversion:
    """What a conversion read, chose and produced: what the writers and the report are made from."""

    input_path: Path
    volume: InputVolume
    modality: str
    modality_source: str  # what said the modality: "option", the DICOM Modality, the model or a guess
    mask: sitk.Image
    mask_source: str  # the --mask path, or "automatic"
    region: dict  # see sctconv.convert.pipeline.choose_region
    model: Model
    sct: sitk.Image  # whole HU on the input grid
    like: Dataset | None  # the --like series' header
    uncertainty: sitk.Image | None = None  # per-voxel standard deviation (HU) of members and windows
    anchor_maps: tuple[tuple[float, float], ...] = ()  # per member, the input's (scale, offset) before its z-score


class OutputWriter(Protocol):
    """One output of a conversion."""

    def write(self, conversion: Conversion, folder: Path) -> str:
        """Write the output into ``folder``; returns its entry in the report's ``outputs``."""
        ...


@dataclass(frozen=True)
class SctImage:
    """The sCT as an image file, int16 HU."""

    image_format: str

    def write(self, conversion: Conversion, folder: Path) -> str:
        name = f"sct.{self.image_format}"
        write_image(sitk.Cast(conversion.sct, sitk.sitkInt16), folder / name)
        return name


@dataclass(frozen=True)
class MaskImage:
    """The body mask as an image file."""

    image_format: str

    def write(self, conversion: Conversion, folder: Path) -> str:
        name = f"mask.{self.image_format}"
        write_image(conversion.mask, folder / name)
        return name


@dataclass(frozen=True)
class UncertaintyImage:
    """The per-voxel standard deviation of the sCT's members and windows, float32 HU on the input grid."""

    image_format: str

    def write(self, conversion: Conversion, folder: Path) -> str:
        if conversion.uncertainty is None:
            raise ValueError("the conversion was made without --uncertainty")
        name = f"uncertainty.{self.image_format}"
        write_image(conversion.uncertainty, folder / name)
        return name


@dataclass(frozen=True)
class DicomSeries:
    """The sCT as a CT Image Storage series in ``dicom/``, named after the model unless the options name it."""

    options: SeriesOptions

    def write(self, conversion: Conversion, folder: Path) -> str:
        card = conversion.model.card
        options = replace(self.options, model_name=self.options.model_name or card.name,
                          model_version=self.options.model_version or card.version, software_version=__version__,
                          series_description=self.options.series_description or f"sCT {card.name}")
        files = write_sct_series(conversion.sct, folder / "dicom", conversion.volume.source, options, conversion.like)
        return f"dicom/ ({len(files)} files)"


@dataclass(frozen=True)
class Preview:
    """Input and sCT in three planes, as ``preview.png``."""

    def write(self, conversion: Conversion, folder: Path) -> str:
        title = f"{conversion.input_path.name} -> sCT ({conversion.model.card.name})"
        save_preview(conversion.volume.image, conversion.sct, conversion.mask, folder / "preview.png", title,
                     conversion.uncertainty)
        return "preview.png"


def output_writers(options: ConvertOptions) -> list[OutputWriter]:
    """The writers ``options`` ask for, in the order they write."""
    writers: list[OutputWriter] = [SctImage(options.image_format), MaskImage(options.image_format)]
    if options.uncertainty:
        writers.append(UncertaintyImage(options.image_format))
    if options.dicom:
        writers.append(DicomSeries(options.series_options))
    if options.preview:
        writers.append(Preview())
    return writers
