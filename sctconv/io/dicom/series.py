"""The types shared by DICOM reading and writing: a source series ready for conversion, its summary, and how
an irregular one was resampled."""

from __future__ import annotations

from dataclasses import dataclass

import SimpleITK as sitk
from pydicom.dataset import Dataset

__all__ = ["Resampling", "SeriesSummary", "SourceSeries"]


@dataclass
class SeriesSummary:
    """One line of ``sctconv series DIR``."""

    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    slices: int
    orientation: str  # "axial", "sagittal", "coronal", "oblique" or "unknown"
    rows: int
    columns: int


@dataclass
class Resampling:
    """How an irregular slice stack was put onto a regular grid (``allow_uneven``)."""

    reason: str  # the irregularity, as the refusal would have named it
    original_slice_positions: int
    slices: int
    step_mm: float


@dataclass
class SourceSeries:
    """A source image series, ready for conversion."""

    image: sitk.Image  # float32 values after Rescale Slope/Intercept
    # Headers without pixel data in slice order; index k = image slice k (array axis 0) unless
    # the stack was resampled (then see slice_sources).
    datasets: list[Dataset]
    modality: str
    series_instance_uid: str
    description: str
    # For enhanced multi-frame sources: the 1-based frame number of datasets[k] in its file
    # (for SourceImageSequence > ReferencedFrameNumber); None for single-frame images.
    frame_numbers: list[int | None] | None = None
    resampled: Resampling | None = None  # set when the image is not on the slices' own grid
    # For a resampled image: the indices into datasets that slice k was interpolated from.
    slice_sources: list[tuple[int, ...]] | None = None
