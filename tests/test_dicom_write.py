"""Tests for sctconv.io.dicom.write: IOD validity (dciodvfy/dcentvfy), geometry, HU and references."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from sctconv.errors import SctconvError
from sctconv.io.dicom.read import SourceSeries, read_dicom_series
from sctconv.io.dicom.write import SeriesOptions, format_ds, write_sct_series
from tests import dicom_factory as factory
from tests.helpers import DCENTVFY, DCIODVFY, DCM2NIIX, error_lines, run_tool, tool

OPTIONS = SeriesOptions(
    model_name="synthmr-unet", model_version="2.1", software_version="0.1.0",
)

WRITE_CASES = [
    (orientation, position)
    for orientation in ("axial", "oblique", "sagittal")
    for position in ("HFS", "FFS", "HFP")
]


@dataclass
class Written:
    source_files: list[Path]
    source: SourceSeries
    sct: sitk.Image
    paths: list[Path]
    fs: factory.FactorySeries


def sct_from(source: SourceSeries) -> sitk.Image:
    """A deterministic 'sCT' on the source grid: HU = 4 * MR - 1024 plus a few fractions."""
    sct = sitk.Cast(source.image, sitk.sitkFloat32) * 4.0 - 1024.0 + 0.3
    return sct


_CACHE: dict[tuple[str, str], Written] = {}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    def get(orientation: str, position: str) -> Written:
        key = (orientation, position)
        if key not in _CACHE:
            base = tmp_path_factory.mktemp(f"{orientation}_{position}")
            fs = factory.make_series(base / "src", orientation=orientation,
                                     patient_position=position, seed=len(_CACHE))
            source = read_dicom_series(base / "src")
            sct = sct_from(source)
            paths = write_sct_series(sct, base / "sct", source, OPTIONS)
            _CACHE[key] = Written(fs.paths, source, sct, paths, fs)
        return _CACHE[key]

    yield get
    _CACHE.clear()


def walk(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def read_sitk_series(paths: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(paths[0].parent))
    assert len(names) == len(paths)
    reader.SetFileNames(names)
    return reader.Execute()


# ------------------------------------------------------------------------------------------
# Validators
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("orientation,position", WRITE_CASES)
def test_dciodvfy_clean(written, orientation: str, position: str) -> None:
    w = written(orientation, position)
    for path in w.paths:
        out = run_tool(DCIODVFY, path)
        assert "CTImage" in out
        assert error_lines(out) == [], f"{path.name}: {out}"


@pytest.mark.skipif(DCENTVFY is None, reason="dcentvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("orientation,position", WRITE_CASES)
def test_dcentvfy_with_source_clean(written, orientation: str, position: str) -> None:
    w = written(orientation, position)
    out = run_tool(DCENTVFY, *w.paths, *w.source_files)
    assert error_lines(out) == [], out


@pytest.mark.skipif(DCIODVFY is None or DCENTVFY is None, reason="dicom3tools not installed")
def test_validators_do_catch_errors(written, tmp_path: Path) -> None:
    """The harness above can fail: a broken copy of an sCT file is reported."""
    w = written("axial", "HFS")
    ds = pydicom.dcmread(w.paths[0])
    del ds.FrameOfReferenceUID
    ds.PatientID = "SOMEONE-ELSE"
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    assert error_lines(run_tool(DCIODVFY, bad))
    assert error_lines(run_tool(DCENTVFY, bad, *w.source_files))


# ------------------------------------------------------------------------------------------
# Geometry and values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation,position", WRITE_CASES)
def test_simpleitk_reread_geometry_and_hu(written, orientation: str, position: str) -> None:
    w = written(orientation, position)
    back = read_sitk_series(w.paths)
    assert back.GetSize() == w.sct.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), w.sct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), w.sct.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), w.sct.GetSpacing(), atol=1e-3)
    hu = sitk.GetArrayFromImage(back).astype(np.float64)
    expected = sitk.GetArrayFromImage(w.sct).astype(np.float64)
    np.testing.assert_allclose(hu, expected, atol=0.5)
    # And our own reader agrees, as a CT series with the same FoR as the source.
    again = read_dicom_series(w.paths[0].parent)
    assert again.modality == "CT"
    np.testing.assert_allclose(again.image.GetOrigin(), w.sct.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(again.image), expected, atol=0.5)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")
@pytest.mark.parametrize("orientation,position", WRITE_CASES)
def test_dcm2niix_reread_geometry(written, tmp_path: Path, orientation: str,
                                  position: str) -> None:
    w = written(orientation, position)
    log = run_tool(DCM2NIIX, "-z", "n", "-b", "n", "-f", "sct", "-o", tmp_path,
                   w.paths[0].parent)
    outputs = sorted(tmp_path.glob("*.nii"))
    if not outputs:
        if orientation != "axial":
            pytest.skip(
                "dcm2niix wrote no NIfTI for this oblique/sagittal series (Debian's dcm2niix "
                f"1.0.20220720 can compute a NaN gantry tilt on valid oblique series): {log[-300:]}"
            )
        pytest.fail(f"dcm2niix wrote nothing: {log}")
    assert len(outputs) == 1, log
    nii = sitk.ReadImage(str(outputs[0]))
    a = sitk.DICOMOrient(nii, "LPS")
    b = sitk.DICOMOrient(w.sct, "LPS")
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-3)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(a).astype(np.float64),
                               sitk.GetArrayFromImage(b).astype(np.float64), atol=0.5)


def test_hu_clipping_and_rounding(tmp_path: Path) -> None:
    arr = np.array([[[-3000.0, -1024.4, -0.6, 12.4], [12.6, 3070.6, 3071.4, 9999.0]]],
                   dtype=np.float32)
    arr[0, 0, 0] = np.nan
    sct = sitk.GetImageFromArray(arr)
    paths = write_sct_series(sct, tmp_path, None, SeriesOptions())
    ds = pydicom.dcmread(paths[0])
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, [[-1024, -1024, -1, 12], [13, 3071, 3071, 3071]])
    assert ds.pixel_array.max() <= 4095


def test_integer_input_pixel_type(tmp_path: Path) -> None:
    arr = (np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 50 - 500)
    sct = sitk.GetImageFromArray(arr)
    sct.SetSpacing((0.7, 0.8, 3.0))
    paths = write_sct_series(sct, tmp_path, None, SeriesOptions())
    back = read_sitk_series(paths)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)


# ------------------------------------------------------------------------------------------
# Header content
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation,position", [("axial", "HFS"), ("oblique", "FFS"),
                                                  ("sagittal", "HFP")])
def test_identity_and_references(written, orientation: str, position: str) -> None:
    w = written(orientation, position)
    src0 = pydicom.dcmread(w.source_files[0])
    datasets = [pydicom.dcmread(p) for p in w.paths]
    sop_uids = {d.SOPInstanceUID for d in datasets}
    assert len(sop_uids) == len(datasets)
    series_uids = {d.SeriesInstanceUID for d in datasets}
    assert len(series_uids) == 1 and w.fs.series_uid not in series_uids
    assert not sop_uids & set(w.fs.sop_uids)
    normal = np.cross(np.array(w.sct.GetDirection()).reshape(3, 3)[:, 0],
                      np.array(w.sct.GetDirection()).reshape(3, 3)[:, 1])
    positions = []
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.Modality == "CT"
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                   "ReferringPhysicianName", "StudyID", "FrameOfReferenceUID",
                   "PatientPosition"):
            assert ds[kw].value == src0[kw].value, kw
        assert ds.PatientPosition == position
        assert int(ds.InstanceNumber) == k + 1
        assert int(ds.SeriesNumber) == w.fs.series_number + 1000
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16, 12, 11, 0)
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope), ds.RescaleType) == (
            -1024.0, 1.0, "HU")
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
        assert "SyntheticData" not in ds
        text = ds.DerivationDescription
        assert "sctconv 0.1.0" in text and "synthmr-unet 2.1" in text
        assert "SYNTHETIC" in text and "not for clinical use without verification" in text
        assert len(text) <= 1024
        ref = ds.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == w.fs.sop_uids[k]
        assert ref.ReferencedSOPClassUID == pydicom.uid.MRImageStorage
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        rs = ds.ReferencedSeriesSequence[0]
        assert rs.SeriesInstanceUID == w.fs.series_uid
        assert {i.ReferencedSOPInstanceUID for i in rs.ReferencedInstanceSequence} == set(
            w.fs.sop_uids)
        codes = [i.PurposeOfReferenceCodeSequence[0].CodeValue
                 for i in ds.ContributingEquipmentSequence]
        assert codes == ["109101", "109100"]
        assert ds.ContributingEquipmentSequence[0].Manufacturer == src0.Manufacturer
        assert ds.Manufacturer == "sctconv"
        positions.append(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
        for kw in ("KVP", "AcquisitionNumber", "PositionReferenceIndicator", "SliceThickness"):
            assert kw in ds, kw
    assert positions == sorted(positions)  # InstanceNumber follows the slice order


@pytest.mark.parametrize("orientation,position", WRITE_CASES)
def test_ds_lengths_and_no_private_tags(written, orientation: str, position: str) -> None:
    w = written(orientation, position)
    for path in w.paths:
        ds = pydicom.dcmread(path)
        for elem in walk(ds):
            assert not elem.tag.is_private, f"{path.name}: private tag {elem.tag}"
            if elem.VR == "DS" and elem.value is not None:
                values = elem.value if elem.VM > 1 else [elem.value]
                for v in values:
                    assert len(str(v)) <= 16, f"{elem.keyword}={v!s}"
            if elem.VR in ("LO", "SH", "CS", "ST") and isinstance(elem.value, str):
                limit = {"LO": 64, "SH": 16, "CS": 16, "ST": 1024}[elem.VR]
                assert len(elem.value) <= limit, elem.keyword
        assert not any(e.tag.is_private for e in walk(ds))


# ------------------------------------------------------------------------------------------
# Value formatting
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    (9.999999999999998, "10"), (-0.0, "0"), (1e-12, "0"), (-1e-12, "0"), (2.5, "2.5"),
    (0.984807753924636, "0.98480775"), (-123456.123456789, "-123456.12345679"),
    (-1234567.123456789, "-1234567.1234568"), (1e20, "1e+20"), (-249.51171875, "-249.51171875"),
])
def test_format_ds(value: float, expected: str) -> None:
    s = format_ds(value)
    assert s == expected
    assert len(s) <= 16
    assert float(s) == pytest.approx(value, abs=1e-7, rel=1e-7)


def test_format_ds_random_values() -> None:
    rng = np.random.default_rng(0)
    for v in np.concatenate([rng.normal(0, 1, 500), rng.normal(0, 1e4, 500),
                             rng.uniform(-1, 1, 500) * 1e-6]):
        s = format_ds(float(v))
        assert len(s) <= 16 and abs(float(s) - v) <= max(1e-8, 1e-9 * abs(v)) + 5e-9


def test_format_ds_refuses_nan() -> None:
    with pytest.raises(SctconvError):
        format_ds(float("nan"))


# ------------------------------------------------------------------------------------------
# Options and non-DICOM sources
# ------------------------------------------------------------------------------------------


def test_non_dicom_source_oblique_and_left_handed(tmp_path: Path) -> None:
    arr = (np.random.default_rng(1).uniform(-1000, 2000, (5, 7, 6))).astype(np.float32)
    rot = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix()
    m = np.array(rot).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])  # left-handed (det -1)
    sct = sitk.GetImageFromArray(arr)
    sct.SetDirection(tuple(m.ravel()))
    sct.SetOrigin((10.123456789, -20.5, 33.3))
    sct.SetSpacing((0.8, 0.9, 2.2))
    options = SeriesOptions(patient_id="P-42", patient_name="Doe^Jane", series_number=7,
                            kvp="120", synthetic_data=True, series_description="x" * 100)
    paths = write_sct_series(sct, tmp_path / "out", None, options)
    assert [p.name for p in paths] == [f"CT.{k:04d}.dcm" for k in range(1, 6)]
    datasets = [pydicom.dcmread(p) for p in paths]
    ds = datasets[0]
    assert ds.PatientID == "P-42" and str(ds.PatientName) == "Doe^Jane"
    assert ds.PatientPosition == "HFS"
    assert ds.SeriesNumber == 7 and ds.KVP == 120 and ds.SyntheticData == "YES"
    assert ds.SeriesDescription == "x" * 64
    assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    assert len({d.StudyInstanceUID for d in datasets}) == 1
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1
    # Explicit per-slice IPPs along the (left-handed) slice axis.
    for k, d in enumerate(datasets):
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   sct.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-6)
    # A DICOM reader builds a right-handed grid: the same voxels, slice order reversed.
    back = read_sitk_series(paths)
    expected = sitk.Flip(sct, [False, False, True])
    np.testing.assert_allclose(back.GetOrigin(), expected.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), expected.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back),
                               np.rint(sitk.GetArrayFromImage(expected)), atol=0.5)
    for p in paths:
        out = run_tool(tool("dciodvfy"), p)
        # dicom3tools 2022 does not know SyntheticData (0008,001C) yet.
        errors = [e for e in error_lines(out) if "0x0008,0x001c" not in e.lower()
                  and "syntheticdata" not in e.lower().replace(" ", "")]
        assert errors == [], out


def test_non_dicom_source_defaults(tmp_path: Path) -> None:
    sct = sitk.Image(4, 3, 2, sitk.sitkInt16)
    ds = pydicom.dcmread(write_sct_series(sct, tmp_path, None, SeriesOptions())[0])
    assert ds.PatientID == "SCTCONV" and str(ds.PatientName) == "sctconv^synthetic"
    assert ds.SeriesNumber == 1000 and ds.PatientPosition == "HFS"
    assert ds.SeriesDescription == "sCT"
    assert error_lines(run_tool(tool("dciodvfy"), tmp_path / "CT.0001.dcm")) == []


def test_grid_mismatch_is_refused(written, tmp_path: Path) -> None:
    w = written("axial", "HFS")
    small = sitk.Image(3, 3, 3, sitk.sitkFloat32)
    with pytest.raises(SctconvError, match="differs from the source series grid"):
        write_sct_series(small, tmp_path, w.source, OPTIONS)


def test_shifted_grid_keeps_frame_of_reference_without_slice_refs(written, tmp_path: Path,
                                                                   caplog) -> None:
    w = written("axial", "HFS")
    moved = sitk.Image(w.sct)
    moved.SetOrigin(tuple(np.array(w.sct.GetOrigin()) + 5.0))
    with caplog.at_level(logging.WARNING, logger="sctconv.io.dicom.write"):
        paths = write_sct_series(moved, tmp_path, w.source, OPTIONS)
    assert "not the source grid" in caplog.text
    ds = pydicom.dcmread(paths[0])
    assert "SourceImageSequence" not in ds
    assert ds.FrameOfReferenceUID == w.fs.for_uid
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               moved.GetOrigin(), atol=1e-6)


def test_sheared_grid_is_refused(tmp_path: Path) -> None:
    sct = sitk.Image(4, 4, 3, sitk.sitkFloat32)
    sct.SetDirection((1, 0, 0.3, 0, 1, 0, 0, 0, 0.9539392))
    with pytest.raises(SctconvError, match="sheared"):
        write_sct_series(sct, tmp_path, None, SeriesOptions())


def test_long_strings_are_truncated_and_valid(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path / "src", series_description="s" * 64)
    source = read_dicom_series(tmp_path / "src")
    options = SeriesOptions(series_description="d" * 80, model_name="m" * 80,
                            model_version="v" * 80, software_version="9" * 80,
                            manufacturer="M" * 80, manufacturer_model_name="N" * 80,
                            institution_name="I" * 80)
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    try:
        paths = write_sct_series(sct_from(source), tmp_path / "out", source, options)
    finally:
        pydicom_config.settings.writing_validation_mode = old
    ds = pydicom.dcmread(paths[0])
    assert len(ds.SeriesDescription) == 64 and len(ds.InstitutionName) == 64
    assert len(ds.file_meta.ImplementationVersionName) <= 16
    assert len(ds.DerivationDescription) <= 1024
    assert fs.series_uid in ds.DerivationDescription
    assert error_lines(run_tool(tool("dciodvfy"), paths[0])) == []


def test_laterality_position_and_charset(tmp_path: Path, caplog) -> None:
    fs = factory.make_series(tmp_path / "src", body_part="BREAST", write_position=False,
                             patient_name="Müller^Jürgen")
    for p in fs.paths:
        ds = pydicom.dcmread(p)
        ds.Laterality = "L"
        ds.save_as(p)
    source = read_dicom_series(tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="sctconv.io.dicom.write"):
        paths = write_sct_series(sct_from(source), tmp_path / "out", source, OPTIONS)
    assert "no PatientPosition" in caplog.text
    ds = pydicom.dcmread(paths[0])
    assert ds.Laterality == "L" and "ImageLaterality" not in ds
    assert ds.BodyPartExamined == "BREAST"
    assert ds.PatientPosition == ""
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds.SpecificCharacterSet == "ISO_IR 100"  # the source's, which holds these names
    assert error_lines(run_tool(tool("dcentvfy"), *paths, *fs.paths)) == []


def test_non_ascii_name_without_dicom_source_uses_utf8(tmp_path: Path) -> None:
    sct = sitk.Image(4, 3, 2, sitk.sitkInt16)
    options = SeriesOptions(patient_name="Иванов^Иван", patient_id="Ж-1")
    ds = pydicom.dcmread(write_sct_series(sct, tmp_path, None, options)[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Иванов^Иван" and ds.PatientID == "Ж-1"


def test_series_number_and_institution_options(written, tmp_path: Path) -> None:
    w = written("axial", "HFS")
    options = SeriesOptions(series_number=42, institution_name="Clinic X", manufacturer_model_name="sCT-HN-v2",
                            station_name="SCT_MRL")
    ds = pydicom.dcmread(write_sct_series(w.sct, tmp_path, w.source, options)[0])
    assert ds.SeriesNumber == 42 and ds.InstitutionName == "Clinic X"
    assert ds.ManufacturerModelName == "sCT-HN-v2" and ds.StationName == "SCT_MRL"
    assert "StationName" not in pydicom.dcmread(write_sct_series(w.sct, tmp_path / "plain", w.source,
                                                                 SeriesOptions())[0])


def test_enhanced_source_references_frames(tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    fs = factory.make_series(tmp_path / "classic", orientation="oblique", patient_position="HFP")
    (tmp_path / "enh").mkdir()
    enhanced = factory.make_enhanced_from(fs, tmp_path / "enh" / "enhanced.dcm")
    source = read_dicom_series(tmp_path / "enh")
    paths = write_sct_series(sct_from(source), tmp_path / "out", source, OPTIONS)
    enh_uid = pydicom.dcmread(enhanced, stop_before_pixels=True).SOPInstanceUID
    for k, p in enumerate(paths):
        ref = pydicom.dcmread(p).SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == enh_uid
        assert int(ref.ReferencedFrameNumber) == source.frame_numbers[k]
    back = read_sitk_series(paths)
    np.testing.assert_allclose(back.GetOrigin(), source.image.GetOrigin(), atol=1e-3)
    assert error_lines(run_tool(tool("dciodvfy"), paths[0])) == []
