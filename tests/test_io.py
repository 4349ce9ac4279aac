"""Reading inputs: what ITK would read wrongly, or what holds no image, is refused with one clear line."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.io.images import read_mask, read_volume

EXAMPLE_MR = Path(__file__).resolve().parents[1] / "examples" / "phantom_mr.nii.gz"


def _volume(dtype: type = np.float32) -> sitk.Image:
    array = np.random.default_rng(0).uniform(0, 900, (12, 20, 24)).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def _truncate(path: Path, keep: float = 0.7) -> None:
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])


def test_the_issues_truncated_example_is_refused(tmp_path):
    path = tmp_path / "t.nii.gz"
    path.write_bytes(EXAMPLE_MR.read_bytes()[:150_000])  # head -c 150000
    with pytest.raises(SctconvError, match="is truncated"):
        read_volume(path)


@pytest.mark.parametrize("name, data, dtype", [("a.nii", "a.nii", np.float32), ("a.nii", "a.nii", np.uint8),
                                               ("a.nii.gz", "a.nii.gz", np.int16), ("a.hdr", "a.img", np.int16),
                                               ("a.img", "a.img", np.float64)])
def test_truncated_nifti_of_any_type_is_refused(tmp_path, name, data, dtype):
    sitk.WriteImage(_volume(dtype), str(tmp_path / name))
    _truncate(tmp_path / data)
    with pytest.raises(SctconvError, match="is truncated"):
        read_volume(tmp_path / name)


@pytest.mark.parametrize("name, compress", [("a.mha", True), ("a.mhd", False), ("a.nrrd", True)])
def test_truncated_mha_nrrd_say_so(tmp_path, name, compress):
    sitk.WriteImage(_volume(), str(tmp_path / name), useCompression=compress)
    _truncate(tmp_path / ("a.raw" if name == "a.mhd" else name))
    with pytest.raises(SctconvError, match="truncated or corrupt"):
        read_volume(tmp_path / name)


def test_truncated_mask_is_refused(tmp_path):
    image = _volume()
    mask = sitk.Cast(image > 100, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii"))
    _truncate(tmp_path / "mask.nii", 0.5)
    with pytest.raises(SctconvError, match="mask .* is truncated"):
        read_mask(tmp_path / "mask.nii", image)


def test_complete_files_read_as_before(tmp_path):
    for name in ("a.nii", "a.nii.gz", "a.hdr", "a.mha"):
        sitk.WriteImage(_volume(), str(tmp_path / name))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / name).image),
                                      sitk.GetArrayFromImage(_volume()))
    assert read_volume(EXAMPLE_MR).image.GetSize() == (112, 96, 40)


def test_nan_in_an_analyze_pair_is_refused(tmp_path):
    array = sitk.GetArrayFromImage(_volume())
    array[3, 4, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "a.hdr"))
    with pytest.raises(SctconvError, match="1 NaN or infinite"):
        read_volume(tmp_path / "a.hdr")


@pytest.mark.parametrize("size", [0.0, -1.5, float("nan")])
def test_zero_or_negative_voxel_size_is_refused(tmp_path, size):
    path = tmp_path / "a.nii"
    sitk.WriteImage(_volume(), str(path))
    header = bytearray(path.read_bytes())
    struct.pack_into("<f", header, 80, size)  # pixdim[1]
    path.write_bytes(bytes(header))
    with pytest.raises(SctconvError, match="voxel size"):
        read_volume(path)


@pytest.mark.parametrize("value", [0.0, -1000.0, 500.0])
def test_a_constant_volume_is_refused_even_with_a_mask(tmp_path, tiny_cbct_model, value):
    from sctconv.convert.pipeline import ConvertOptions, convert

    image = sitk.GetImageFromArray(np.full((12, 20, 24), value, np.float32))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    sitk.WriteImage(sitk.Cast(image * 0 + 1, sitk.sitkUInt8), str(tmp_path / "mask.nii.gz"))
    with pytest.raises(SctconvError, match="one value everywhere"):
        convert(tmp_path / "in.nii.gz", tmp_path / "out", ConvertOptions(
            model=str(tiny_cbct_model), modality="cbct", mask=tmp_path / "mask.nii.gz", dicom=False, preview=False))
    assert not (tmp_path / "out").exists()
