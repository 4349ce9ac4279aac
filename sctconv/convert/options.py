"""What `sctconv convert` is asked to do, and the checks that refuse what cannot work before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sctconv.convert.limits import check_step
from sctconv.errors import SctconvError
from sctconv.inference.predict import check_window_settings
from sctconv.inference.synthesize import FLIPS
from sctconv.io.dicom.write import SeriesOptions

IMAGE_FORMATS = ("nii.gz", "mha")
FAST_STEP = 0.5
"""The window step of `convert --fast` unless --step is given (the default is the paper's 0.3)."""
BACKENDS = ("torch", "onnx")
NAME_LIMITS = (("--manufacturer-model-name", "manufacturer_model_name", 64), ("--station-name", "station_name", 16))
"""(option, SeriesOptions field, characters): names a planning system may match its CT-to-density table by,
refused rather than truncated when too long for their VR (LO, SH)."""


@dataclass
class ConvertOptions:
    """What `sctconv convert` was asked to do."""

    modality: str | None = None  # "mr" or "cbct"; None = from DICOM, the model, or the intensities
    region: str | None = None
    model: str | None = None  # shipped model name or model folder
    fast: bool = False  # the shipped fast model instead of the default one
    mask: Path | None = None
    series: str | None = None  # DICOM series UID or number (of the input, else of `like`)
    allow_uneven: bool = False  # resample a DICOM series with missing slices / uneven spacing
    allow_large: bool = False  # run past the size guards of sctconv.convert.limits
    like: Path | None = None  # DICOM series whose patient, study and FoR a non-DICOM input's sCT joins
    step: float = 0.3
    blend: str = "mean"
    batch_size: int | None = None  # windows per network call; None: 2 on the CPU, what fits on a GPU
    device: str = "auto"
    tta: int = 1  # members from flipped copies of the input (1: none)
    ensemble: tuple[str, ...] = ()  # more models whose sCTs are averaged with the first's
    uncertainty: bool = False  # write the per-voxel standard deviation of members and windows
    uncertainty_threshold_hu: float = 50.0  # the report flags a mean uncertainty in the body above this
    backend: str = "torch"
    image_format: str = "nii.gz"  # one of IMAGE_FORMATS
    dicom: bool = True
    preview: bool = True
    overwrite: bool = False
    series_options: SeriesOptions = field(default_factory=SeriesOptions)

    def check(self) -> None:
        """Refuse options that cannot work, naming the command line's option."""
        if self.image_format not in IMAGE_FORMATS:
            raise SctconvError(f"--format must be nii.gz or mha, not {self.image_format!r}")
        for flag, name, limit in NAME_LIMITS:
            value = getattr(self.series_options, name)
            if value and len(value) > limit:  # a truncated name would not match the planning system's table
                raise SctconvError(f"{flag} holds at most {limit} characters in DICOM; {value!r} has {len(value)}")
        check_window_settings(self.step, self.blend, self.batch_size)
        if not self.allow_large:
            check_step(self.step)
        if self.backend not in BACKENDS:
            raise SctconvError(f"unknown backend {self.backend!r}; use torch or onnx")
        if not 1 <= self.tta <= len(FLIPS):
            raise SctconvError(f"--tta must be 1 to {len(FLIPS)} (flips of the three axes), not {self.tta}")
        if self.fast and self.model is not None:
            raise SctconvError("--fast picks the shipped fast model; it cannot be combined with --model")
        if self.ensemble and self.model is None:
            raise SctconvError("--ensemble adds models to --model; name the first one with --model")
        if not self.uncertainty_threshold_hu > 0:
            raise SctconvError("--uncertainty-threshold must be a positive number of HU")
