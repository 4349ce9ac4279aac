"""Tests for sctconv.io.dicom.read: real multi-vendor data (when present) and generated series."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sctconv.errors import SctconvError
from sctconv.io.dicom.read import (
    SourceSeries,
    is_dicom_path,
    list_series,
    read_dicom_series,
)
from tests import dicom_factory as factory
from tests.helpers import SHARED_DATA as DATA
from tests.helpers import assert_same_geometry, cli, sitk_series

VENDOR = DATA / "dicom2nifti_vendor_mr"
PYDICOM_FILES = DATA / "pydicom_testfiles"
TOTALSEG = DATA / "totalsegmentator_ct_mr"
LIDC = DATA / "lidc_idri_0001_chest_ct" / "dicom_sample5"

GEOM_TOL = 1e-3


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data {path} is not available in this checkout")
    return path


def assert_same_physical_grid(a: sitk.Image, b: sitk.Image, tol: float = GEOM_TOL) -> None:
    """Same voxels in space, whatever the axis order/flips (NIfTI writers reorient)."""
    assert_same_geometry(sitk.DICOMOrient(a, "LPS"), sitk.DICOMOrient(b, "LPS"), tol)


def assert_matches_factory(src: SourceSeries, fs: factory.FactorySeries) -> None:
    im = src.image
    assert im.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(im.GetOrigin(), fs.origin, atol=1e-4)
    np.testing.assert_allclose(np.array(im.GetDirection()).reshape(3, 3), fs.direction, atol=1e-6)
    np.testing.assert_allclose(im.GetSpacing(), fs.spacing, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(im), fs.values, atol=0.5)
    assert [d.SOPInstanceUID for d in src.datasets] == fs.sop_uids
    assert all("PixelData" not in d for d in src.datasets)


# ------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------

GROUND_TRUTH = {
    "ge": ("ge_anatomical_001_ground_truth.nii.gz", True),
    "philips": ("philips_anatomical_001_ground_truth.nii.gz", True),
    # The Siemens "implicit" ground truth has the same grid but other pixel data.
    "siemens": ("siemens_anatomical_001_implicit_ground_truth.nii.gz", False),
}


@pytest.mark.parametrize("vendor", sorted(GROUND_TRUTH))
def test_vendor_mr_matches_reference_nifti(vendor: str) -> None:
    folder = need(VENDOR / vendor / "anatomical" / "001")
    nifti_name, same_pixels = GROUND_TRUTH[vendor]
    ref = sitk.ReadImage(str(need(VENDOR / nifti_name)))
    src = read_dicom_series(folder)
    assert src.modality == "MR"
    assert len(src.datasets) == 4
    assert_same_physical_grid(src.image, ref)
    # Direct (not reoriented) comparison with SimpleITK's own DICOM reader.
    ours = src.image
    theirs = sitk_series(folder)
    assert_same_geometry(ours, theirs)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    if same_pixels:
        a = sitk.GetArrayFromImage(sitk.DICOMOrient(ours, "LPS"))
        b = sitk.GetArrayFromImage(sitk.DICOMOrient(ref, "LPS")).astype(np.float32)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sub", ["hitachi/anatomical/001", "generic/compressed_j2k/001"])
def test_vendor_mr_matches_simpleitk(sub: str) -> None:
    folder = need(VENDOR / sub)
    src = read_dicom_series(folder)
    ref = sitk_series(folder)
    assert_same_geometry(src.image, ref)
    np.testing.assert_allclose(sitk.GetArrayFromImage(src.image), sitk.GetArrayFromImage(ref))


def test_totalsegmentator_ct_jpeg2000_without_sop_class() -> None:
    folder = need(TOTALSEG / "example_ct_dicom")
    src = read_dicom_series(folder)
    assert src.modality == "CT"
    assert src.image.GetSize() == (512, 512, 20)
    ref = sitk.ReadImage(str(need(TOTALSEG / "example_seg_dicom.nii.gz")))
    assert_same_physical_grid(src.image, ref)
    theirs = sitk_series(folder)
    assert_same_geometry(src.image, theirs)
    np.testing.assert_allclose(sitk.GetArrayFromImage(src.image), sitk.GetArrayFromImage(theirs))
    # SOP Class/Instance UIDs are only in the file meta of these files.
    assert all(d.SOPClassUID == pydicom.uid.CTImageStorage for d in src.datasets)
    assert all(d.SOPInstanceUID for d in src.datasets)
    hu = sitk.GetArrayFromImage(src.image)
    assert hu.min() >= -1024 and hu.max() > 500  # rescale applied (air and bone)


def test_lidc_sample_with_gaps_is_refused() -> None:
    folder = need(LIDC)
    with pytest.raises(SctconvError, match=r"has a gap: 50\.0 mm between slices 1 and 2 where "
                                           r"25\.0 mm is expected"):
        read_dicom_series(folder)


def test_enhanced_mr_without_functional_groups_is_refused() -> None:
    path = need(PYDICOM_FILES / "emri_small.dcm")
    with pytest.raises(SctconvError, match="enhanced multi-frame.*no Shared/PerFrame"):
        read_dicom_series(path)


def test_single_slice_files() -> None:
    ct = read_dicom_series(need(PYDICOM_FILES / "CT_small.dcm"))
    assert ct.image.GetSize() == (128, 128, 1)
    assert ct.image.GetSpacing()[2] == pytest.approx(5.0)
    mr = read_dicom_series(need(PYDICOM_FILES / "MR_small.dcm"))
    assert mr.image.GetSize() == (64, 64, 1)
    assert mr.image.GetSpacing()[2] == pytest.approx(0.8)


def test_pydicom_folder_ignores_rt_objects_and_lists_candidates() -> None:
    folder = need(PYDICOM_FILES)
    summaries = list_series(folder)
    modalities = sorted(s.modality for s in summaries)
    assert "RTDOSE" not in modalities and "RTSTRUCT" not in modalities
    assert modalities == ["CT", "MR", "MR", "MR"]
    with pytest.raises(SctconvError, match="holds 4 image series; choose one") as err:
        read_dicom_series(folder)
    for s in summaries:
        assert s.series_instance_uid in str(err.value)
    ct_uid = next(s.series_instance_uid for s in summaries if s.modality == "CT")
    assert read_dicom_series(folder, series=ct_uid).modality == "CT"
    with pytest.raises(SctconvError, match="no DICOM image series"):
        read_dicom_series(need(PYDICOM_FILES / "rtdose.dcm"))


def test_is_dicom_path(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path / "s", n_slices=2)
    assert is_dicom_path(tmp_path / "s")
    assert is_dicom_path(fs.paths[0])
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(fs.paths[0], "a.dcm")
    assert is_dicom_path(archive)
    (tmp_path / "x.nii").write_bytes(b"\x00" * 400)
    assert not is_dicom_path(tmp_path / "x.nii")
    assert not is_dicom_path(tmp_path / "missing.dcm")


# ------------------------------------------------------------------------------------------
# Generated series
# ------------------------------------------------------------------------------------------

CASES = [
    (orientation, position)
    for orientation in ("axial", "oblique", "oblique2", "sagittal", "coronal")
    for position in ("HFS", "FFS", "HFP", "FFP")
]


@pytest.mark.parametrize("orientation,position", CASES)
def test_generated_series_geometry(tmp_path: Path, orientation: str, position: str) -> None:
    fs = factory.make_series(tmp_path, orientation=orientation, patient_position=position,
                             shuffle=True, seed=CASES.index((orientation, position)))
    src = read_dicom_series(tmp_path)
    assert_matches_factory(src, fs)
    assert src.series_instance_uid == fs.series_uid
    assert src.modality == "MR"
    # SimpleITK/GDCM agrees on these regular series.
    ref = sitk_series(tmp_path)
    assert_same_geometry(src.image, ref)
    np.testing.assert_allclose(sitk.GetArrayFromImage(src.image), sitk.GetArrayFromImage(ref))
    summary = list_series(tmp_path)[0]
    expected = orientation if orientation in ("axial", "sagittal", "coronal") else "oblique"
    assert summary.orientation == expected
    assert (summary.slices, summary.rows, summary.columns) == (6, 24, 20)


def test_sorting_ignores_instance_numbers(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path, shuffle=True, seed=3, n_slices=8)
    instance_numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in fs.paths]
    assert instance_numbers != sorted(instance_numbers)
    src = read_dicom_series(tmp_path)
    assert_matches_factory(src, fs)


def test_rescale_slope_intercept_applied(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path, slope=0.5, intercept=-10.0)
    assert_matches_factory(read_dicom_series(tmp_path), fs)


@pytest.mark.parametrize("codec", ["rle", "j2k"])
def test_compressed_series(tmp_path: Path, codec: str) -> None:
    fs = factory.make_series(tmp_path, compress=codec, rows=40, cols=36, orientation="oblique")
    ts = pydicom.dcmread(fs.paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    assert_matches_factory(read_dicom_series(tmp_path), fs)


def test_missing_decoder_names_transfer_syntax(tmp_path: Path, monkeypatch) -> None:
    factory.make_series(tmp_path, compress="j2k", rows=40, cols=36)

    def no_decoder(self):
        raise RuntimeError("Unable to decompress 'JPEG 2000 Image Compression (Lossless Only)' "
                           "pixel data because all plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(SctconvError, match=r"transfer syntax JPEG 2000 .*1\.2\.840\.10008\.1\.2\.4\.90"):
        read_dicom_series(tmp_path)


def _garble_frame(path: Path) -> None:
    """Keep the file's encapsulation, overwrite its compressed frame after 16 bytes."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:16] + b"\xff" * (len(frame) - 16)])
    ds.save_as(path)


def test_corrupt_compressed_file_is_one_line_with_the_decoders_reason(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path / "series", compress="j2k", rows=40, cols=36)
    _garble_frame(fs.paths[3])
    result = cli("convert", str(tmp_path / "series"), str(tmp_path / "out"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot decode the pixel data of {fs.paths[3]}")
    assert "JPEG 2000" in lines[0] and "failed to read the header" in lines[0]  # openjpeg's reason
    assert not (tmp_path / "out").exists()


def test_missing_slice_names_the_gap(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path, n_slices=10, missing=7, slice_step=2.5)
    with pytest.raises(SctconvError) as err:
        read_dicom_series(tmp_path)
    assert str(err.value) == (
        f"series {fs.series_uid} has a gap: 5.0 mm between slices 7 and 8 where 2.5 mm is "
        "expected; pass --allow-uneven to resample it onto a regular grid"
    )


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    factory.make_series(tmp_path, n_slices=8, uneven=4)
    with pytest.raises(SctconvError, match="uneven slice spacing: 3.0 mm between slices 4 and 5"):
        read_dicom_series(tmp_path)


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    factory.make_series(tmp_path, duplicate=2)
    with pytest.raises(SctconvError, match=r"images at duplicate positions, e\.g\. slices 3 and 4"):
        read_dicom_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    factory.make_series(tmp_path, tilt_deg=12.0)
    with pytest.raises(SctconvError, match=r"gantry tilt of about 12\.0 degrees"):
        read_dicom_series(tmp_path)


def test_localizer_and_odd_size_are_dropped(tmp_path: Path, caplog) -> None:
    fs = factory.make_series(tmp_path, localizer=True, minority_size=True)
    with caplog.at_level(logging.WARNING, logger="sctconv.io.dicom.read"):
        src = read_dicom_series(tmp_path)
    assert_matches_factory(src, fs)
    text = caplog.text
    assert "localizer" in text
    assert "dropping 1 image(s) 8x8" in text
    assert list_series(tmp_path)[0].slices == 6


@pytest.mark.parametrize("real_rt_files", [False, True])
def test_non_dicom_and_rt_files_are_ignored(tmp_path: Path, real_rt_files: bool) -> None:
    fs = factory.make_series(tmp_path / "a" / "b")
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 20)
    if real_rt_files:  # an RT Structure Set and an RT Dose beside the series
        for name in ("rtstruct.dcm", "rtdose.dcm"):
            shutil.copy(need(PYDICOM_FILES / name), tmp_path / name)
    assert len(list_series(tmp_path)) == 1
    assert_matches_factory(read_dicom_series(tmp_path), fs)


def test_zip_archive(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path / "series", orientation="sagittal", patient_position="FFS")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in fs.paths:
            zf.write(p, f"patient/{p.name}")
        zf.writestr("patient/notes.txt", "not dicom")
    assert len(list_series(archive)) == 1
    assert_matches_factory(read_dicom_series(archive), fs)


def test_single_file_reads_its_series_from_its_folder(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path, shuffle=True, orientation="oblique")
    factory.make_series(tmp_path, modality="CT", series_number=9, seed=4)  # another series beside it
    assert_matches_factory(read_dicom_series(fs.paths[3]), fs)
    with pytest.raises(SctconvError, match="--series picks a series in a folder or zip"):
        read_dicom_series(fs.paths[3], series="9")


@pytest.fixture()
def two_series(tmp_path: Path):
    study = pydicom.uid.generate_uid()
    mr = factory.make_series(tmp_path / "mr", series_number=3, study_uid=study, seed=1)
    ct = factory.make_series(tmp_path / "ct", modality="CT", series_number=2, study_uid=study,
                             orientation="axial", n_slices=5, seed=2)
    return tmp_path, mr, ct


def test_two_series_auto_picks_mr(two_series) -> None:
    folder, mr, ct = two_series
    summaries = list_series(folder)
    assert [s.series_number for s in summaries] == [2, 3]
    src = read_dicom_series(folder)
    assert src.series_instance_uid == mr.series_uid
    assert_matches_factory(src, mr)


def test_two_series_explicit_pick(two_series) -> None:
    folder, mr, ct = two_series
    by_uid = read_dicom_series(folder, series=ct.series_uid)
    assert by_uid.modality == "CT"
    assert_matches_factory(by_uid, ct)
    by_number = read_dicom_series(folder, series="2")
    assert by_number.series_instance_uid == ct.series_uid
    with pytest.raises(SctconvError, match="series 77 not found.*available"):
        read_dicom_series(folder, series="77")


def test_only_ct_series_are_auto_picked(tmp_path: Path) -> None:
    ct = factory.make_series(tmp_path / "ct", modality="CT", seed=5)
    factory.make_series(tmp_path / "ot", modality="OT", seed=6)
    assert read_dicom_series(tmp_path).series_instance_uid == ct.series_uid


def test_two_mr_series_are_ambiguous(tmp_path: Path) -> None:
    a = factory.make_series(tmp_path / "a", series_number=4, seed=1)
    b = factory.make_series(tmp_path / "b", series_number=4, seed=2, orientation="sagittal")
    with pytest.raises(SctconvError, match="holds 2 image series; choose one") as err:
        read_dicom_series(tmp_path)
    assert a.series_uid in str(err.value) and b.series_uid in str(err.value)
    with pytest.raises(SctconvError, match="series number 4 is used by 2 series"):
        read_dicom_series(tmp_path, series="4")
    assert read_dicom_series(tmp_path, series=b.series_uid).series_instance_uid == b.series_uid


def test_enhanced_multiframe_geometry(tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    fs = factory.make_series(tmp_path / "classic", orientation="oblique2", patient_position="FFS")
    (tmp_path / "enh").mkdir()
    factory.make_enhanced_from(fs, tmp_path / "enh" / "enhanced.dcm")
    src = read_dicom_series(tmp_path / "enh")
    classic = read_dicom_series(tmp_path / "classic")
    assert_same_geometry(src.image, classic.image, tol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(src.image), fs.values, atol=0.5)
    assert src.frame_numbers is not None and sorted(src.frame_numbers) == list(range(1, 7))
    assert src.datasets[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.4"
    summary = list_series(tmp_path / "enh")[0]
    assert summary.slices == 6 and summary.orientation == "oblique"


def test_image_index_maps_to_column_row_slice(tmp_path: Path) -> None:
    fs = factory.make_series(tmp_path, orientation="oblique", patient_position="HFP")
    im = read_dicom_series(tmp_path).image
    ds = pydicom.dcmread(fs.paths[0])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    k = int(np.argmin([np.linalg.norm(np.array(im.TransformIndexToPhysicalPoint((0, 0, kk))) - ipp)
                       for kk in range(im.GetSize()[2])]))
    np.testing.assert_allclose(im.TransformIndexToPhysicalPoint((0, 0, k)), ipp, atol=1e-4)
    # Pixel (row 5, column 3) of that file is voxel index (i=3, j=5, k).
    assert im.GetPixel(3, 5, k) == pytest.approx(float(ds.pixel_array[5, 3]))
    row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    col_spacing = float(ds.PixelSpacing[1])
    np.testing.assert_allclose(
        np.array(im.TransformIndexToPhysicalPoint((1, 0, k))) - ipp, row_cos * col_spacing,
        atol=1e-5,
    )
