"""ConvertOptions.check refuses for Python callers what the command line refuses; the writers follow the options."""

from __future__ import annotations

import pytest

from sctconv.convert.options import ConvertOptions
from sctconv.convert.writers import DicomSeries, MaskImage, Preview, SctImage, output_writers
from sctconv.errors import SctconvError
from sctconv.io.dicom.write import SeriesOptions


@pytest.mark.parametrize(("options", "message"), [
    (ConvertOptions(image_format="png"), "--format must be nii.gz or mha, not 'png'"),
    (ConvertOptions(series_options=SeriesOptions(station_name="S" * 17)), "--station-name holds at most 16"),
    (ConvertOptions(series_options=SeriesOptions(manufacturer_model_name="M" * 65)),
     "--manufacturer-model-name holds at most 64"),
    (ConvertOptions(step=0), "--step must be in"),
    (ConvertOptions(backend="tensorrt"), "unknown backend 'tensorrt'"),
])
def test_check_refuses_what_cannot_work(options: ConvertOptions, message: str) -> None:
    with pytest.raises(SctconvError, match=message):
        options.check()


def test_check_accepts_the_defaults_and_names_at_their_limit() -> None:
    ConvertOptions(image_format="mha", series_options=SeriesOptions(station_name="S" * 16)).check()


def test_one_writer_per_output_asked_for() -> None:
    assert [type(w) for w in output_writers(ConvertOptions())] == [SctImage, MaskImage, DicomSeries, Preview]
    assert output_writers(ConvertOptions(image_format="mha", dicom=False, preview=False)) == [
        SctImage("mha"), MaskImage("mha")]
