"""End to end (issue 3): DICOM series in, a conformant sCT CT series out, with tiny random models.

Generated source series (axial, 10-degree oblique, sagittal; HFS, FFS, HFP; MR and CT) go through
:func:`sctconv.convert.pipeline.convert`; the sCT series is checked with dciodvfy/dcentvfy, re-read with
SimpleITK and dcm2niix, and compared with the source's identity. Error paths run the command line in this
process. Every DICOM series under ../shared/data converts or fails with the one line stated for it here.
"""

from __future__ import annotations

import functools
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.errors import SctconvError
from sctconv.io.dicom.read import is_dicom_path, list_series, read_dicom_series
from sctconv.io.dicom.write import SeriesOptions
from tests import dicom_factory as factory
from tests.helpers import (
    DCENTVFY,
    DCIODVFY,
    DCM2NIIX,
    SHARED_DATA,
    assert_same_geometry,
    cli,
    error_lines,
    make_tiny_model,
    run_tool,
    shared_data,
    sitk_series,
    tool,
)

CASES = [(orientation, position, "MR") for orientation in ("axial", "oblique", "sagittal")
         for position in ("HFS", "FFS", "HFP")]
CASES += [("axial", "FFS", "CT"), ("oblique", "HFP", "CT"), ("sagittal", "HFS", "CT")]
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
            "StudyTime", "AccessionNumber", "StudyID", "FrameOfReferenceUID")


@dataclass
class Converted:
    """A generated source series and the output folder `convert` made from it."""

    fs: factory.FactorySeries
    out: Path
    report: dict

    @property
    def sct_files(self) -> list[Path]:
        return sorted((self.out / "dicom").glob("*.dcm"))

    @property
    def sct_image(self) -> sitk.Image:
        return sitk.ReadImage(str(self.out / "sct.nii.gz"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {"MR": make_tiny_model(base / "tiny-mr", "mr"), "CT": make_tiny_model(base / "tiny-cbct", "cbct")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, models):
    @functools.cache
    def get(orientation: str, position: str, modality: str) -> Converted:
        base = tmp_path_factory.mktemp(f"{orientation}_{position}_{modality}")
        fs = factory.make_series(base / "src", orientation=orientation, patient_position=position,
                                 modality=modality, seed=CASES.index((orientation, position, modality)))
        report = convert(base / "src", base / "out", ConvertOptions(model=str(models[modality]), preview=False))
        return Converted(fs, base / "out", report)

    return get


def assert_outcome(exit_code: int, stderr: str, out: Path) -> None:
    """Success with a complete output folder, or exit 1 with one specific error line and nothing left behind."""
    assert "Traceback" not in stderr
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []
    if exit_code == 0:
        assert (out / "report.json").is_file() and list((out / "dicom").glob("*.dcm"))
        return
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert exit_code == 1 and len(errors) == 1, stderr  # exit 2 is an unexpected error: a bug
    assert stderr.rstrip().splitlines()[-1] == errors[0] and "unexpected" not in errors[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# Generated series: conformance, geometry, values and identity of the sCT series
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(DCIODVFY is None or DCENTVFY is None, reason="dicom3tools (dciodvfy, dcentvfy) not installed")
@pytest.mark.parametrize("orientation,position,modality", CASES)
def test_sct_series_passes_dciodvfy_and_dcentvfy(converted, orientation, position, modality) -> None:
    c = converted(orientation, position, modality)
    for path in c.sct_files:
        out = run_tool(DCIODVFY, path)
        assert "CTImage" in out and error_lines(out) == [], f"{path.name}: {out}"
    out = run_tool(DCENTVFY, *c.sct_files, *c.fs.paths)
    assert error_lines(out) == [], out


@pytest.mark.parametrize("orientation,position,modality", CASES)
def test_simpleitk_reads_source_geometry_and_written_hu(converted, orientation, position, modality) -> None:
    c = converted(orientation, position, modality)
    back = sitk_series(c.out / "dicom")
    assert_same_geometry(back, sitk_series(c.fs.folder))
    np.testing.assert_allclose(back.GetOrigin(), c.fs.origin, atol=1e-3)
    np.testing.assert_allclose(np.array(back.GetDirection()).reshape(3, 3), c.fs.direction, atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(c.sct_image), atol=0.5)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")
@pytest.mark.parametrize("orientation,position,modality", CASES)
def test_dcm2niix_reads_source_geometry(converted, tmp_path, orientation, position, modality) -> None:
    c = converted(orientation, position, modality)
    log = run_tool(DCM2NIIX, "-z", "n", "-b", "n", "-f", "sct", "-o", tmp_path, c.out / "dicom")
    written = sorted(tmp_path.glob("*.nii"))
    if not written and orientation != "axial":
        pytest.skip("Debian's dcm2niix 1.0.20220720 computes a NaN gantry tilt on some valid oblique series and "
                    f"writes nothing; SimpleITK and the IPP values are checked instead: {log[-200:]}")
    assert len(written) == 1, log
    theirs = sitk.DICOMOrient(sitk.ReadImage(str(written[0])), "LPS")
    ours = sitk.DICOMOrient(c.sct_image, "LPS")
    assert_same_geometry(theirs, ours)
    np.testing.assert_allclose(sitk.GetArrayFromImage(theirs), sitk.GetArrayFromImage(ours), atol=0.5)


@pytest.mark.parametrize("orientation,position,modality", CASES)
def test_patient_study_and_frame_of_reference_are_the_source(converted, orientation, position, modality) -> None:
    c = converted(orientation, position, modality)
    source = pydicom.dcmread(c.fs.paths[0], stop_before_pixels=True)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in c.sct_files]
    assert len(datasets) == len(c.fs.sop_uids)
    for k, ds in enumerate(datasets):
        assert [ds[kw].value for kw in IDENTITY] == [source[kw].value for kw in IDENTITY]
        assert ds.PatientPosition == position and ds.SeriesInstanceUID != c.fs.series_uid
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == c.fs.sop_uids[k]
    assert c.report["input"]["modality"] == ("cbct" if modality == "CT" else "mr")
    assert c.report["input"]["dicom_series"] == c.fs.series_uid and c.report["input"]["resampled"] is None


# ------------------------------------------------------------------------------------------
# Input forms: single file, zip, two-series folder, --like, --allow-uneven
# ------------------------------------------------------------------------------------------


def test_single_file_input_converts_the_series_of_that_file(tmp_path, tiny_mr_model) -> None:
    fs = factory.make_series(tmp_path / "in", orientation="sagittal", patient_position="FFS")
    factory.make_series(tmp_path / "in", modality="CT", series_number=9, seed=3)  # another series beside it
    report = convert(fs.paths[2], tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), preview=False))
    assert report["input"]["dicom_series"] == fs.series_uid
    assert report["input"]["size"][2] == len(fs.sop_uids) == len(list((tmp_path / "out" / "dicom").iterdir()))


def test_zip_input(tmp_path, tiny_mr_model) -> None:
    fs = factory.make_series(tmp_path / "series", orientation="oblique", patient_position="HFP")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in fs.paths:
            zf.write(p, f"export/{p.name}")
    report = convert(archive, tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), preview=False))
    assert report["input"]["dicom_series"] == fs.series_uid
    back = sitk_series(tmp_path / "out" / "dicom")
    assert_same_geometry(back, sitk_series(fs.folder))


def test_two_series_folder_picks_the_mr(tmp_path, tiny_mr_model) -> None:
    study = pydicom.uid.generate_uid()
    mr = factory.make_series(tmp_path / "in" / "mr", study_uid=study, series_number=3, seed=1)
    factory.make_series(tmp_path / "in" / "ct", modality="CT", study_uid=study, series_number=2, seed=2)
    report = convert(tmp_path / "in", tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), preview=False))
    assert report["input"]["dicom_series"] == mr.series_uid and report["input"]["modality"] == "mr"
    assert pydicom.dcmread(next((tmp_path / "out" / "dicom").iterdir())).FrameOfReferenceUID == mr.for_uid


def test_like_attaches_a_nifti_to_the_patient_study_and_frame_of_reference(tmp_path, tiny_mr_model) -> None:
    fs = factory.make_series(tmp_path / "mr", orientation="oblique", patient_position="HFP")
    axial = sitk.Resample(read_dicom_series(fs.folder).image, [12, 14, 9], sitk.Transform(), sitk.sitkLinear,
                          tuple(fs.origin - 3.0), (2.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0)
    nifti = tmp_path / "mr.nii.gz"
    sitk.WriteImage(axial, str(nifti))
    report = convert(nifti, tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), preview=False,
                                                            like=fs.paths[0]))
    assert report["input"]["like"]["frame_of_reference"] == fs.for_uid
    files = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))
    source = pydicom.dcmread(fs.paths[0], stop_before_pixels=True)
    for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in files):
        assert [ds[kw].value for kw in IDENTITY] == [source[kw].value for kw in IDENTITY]
        assert ds.SeriesInstanceUID != fs.series_uid
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    assert_same_geometry(sitk_series(files[0].parent), axial)
    assert error_lines(run_tool(tool("dciodvfy"), files[0])) == []
    assert error_lines(run_tool(tool("dcentvfy"), *files, *fs.paths)) == []


def test_like_refuses_a_new_patient_and_a_series_without_frame_of_reference(tmp_path, phantom_files,
                                                                           tiny_mr_model) -> None:
    fs = factory.make_series(tmp_path / "mr")
    options = ConvertOptions(model=str(tiny_mr_model), like=fs.folder, series_options=SeriesOptions(patient_id="P1"))
    with pytest.raises(SctconvError, match="--patient-id/--patient-name make a new patient"):
        convert(phantom_files["mr"], tmp_path / "out", options)
    for path in fs.paths:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    with pytest.raises(SctconvError, match=f"--like series {fs.series_uid} .* has no FrameOfReferenceUID"):
        convert(phantom_files["mr"], tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), like=fs.folder))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("irregular,reason", [({"missing": 4}, "has a gap"), ({"uneven": 4}, "uneven slice spacing")])
def test_allow_uneven_resamples_onto_a_regular_grid(tmp_path, tiny_mr_model, caplog, irregular, reason) -> None:
    fs = factory.make_series(tmp_path / "in", n_slices=8, orientation="oblique", patient_position="FFS", **irregular)
    full = factory.make_series(tmp_path / "full", n_slices=8, orientation="oblique", patient_position="FFS")
    with caplog.at_level(logging.WARNING):
        report = convert(fs.folder, tmp_path / "out", ConvertOptions(model=str(tiny_mr_model), preview=False,
                                                                    allow_uneven=True))
    resampled = report["input"]["resampled"]
    assert reason in resampled["reason"] and reason in caplog.text and "resampled its" in caplog.text
    assert (resampled["original_slice_positions"], resampled["slices"]) == (len(fs.sop_uids), 8)
    assert resampled["step_mm"] == pytest.approx(2.5)
    image = read_dicom_series(fs.folder, allow_uneven=True).image
    assert_same_geometry(image, sitk_series(full.folder))
    if "missing" in irregular:  # the factory's values are linear along the slices
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), full.values, atol=1e-3)
    files = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))
    assert_same_geometry(sitk_series(files[0].parent), image)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert {ds.FrameOfReferenceUID for ds in datasets} == {fs.for_uid}
    derivation = datasets[0].DerivationDescription
    assert f"its {len(fs.sop_uids)} slices were resampled onto 8 slices every 2.5 mm" in derivation
    assert reason in derivation
    # Each slice references the one or two source slices it was interpolated from.
    sources = [[i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence] for ds in datasets]
    assert {len(s) for s in sources} == {1, 2} and {uid for s in sources for uid in s} == set(fs.sop_uids)
    referenced = datasets[0].ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {i.ReferencedSOPInstanceUID for i in referenced} == set(fs.sop_uids)
    assert all(error_lines(run_tool(tool("dciodvfy"), p)) == [] for p in files)
    assert error_lines(run_tool(tool("dcentvfy"), *files, *fs.paths)) == []


# ------------------------------------------------------------------------------------------
# The command line: writer overrides, and refusals as one line with nothing left behind
# ------------------------------------------------------------------------------------------


def test_writer_overrides_on_the_command_line(tmp_path, tiny_mr_model) -> None:
    fs = factory.make_series(tmp_path / "in")
    result = cli(
        "convert", str(fs.folder), str(tmp_path / "out"), "--model", str(tiny_mr_model), "--quiet",
        "--series-number", "42", "--manufacturer", "ACME RT", "--institution-name", "Clinic X", "--kvp", "120",
        "--series-description", "sCT for planning", "--synthetic-data-tag", "--manufacturer-model-name", "sCT MR HN",
        "--station-name", "SCT_MR")
    assert result.exit_code == 0, result.stderr
    ds = pydicom.dcmread(next((tmp_path / "out" / "dicom").iterdir()), stop_before_pixels=True)
    assert (ds.SeriesNumber, ds.Manufacturer, ds.InstitutionName, ds.KVP) == (42, "ACME RT", "Clinic X", 120)
    assert (ds.SeriesDescription, ds.SyntheticData) == ("sCT for planning", "YES")
    assert (ds.ManufacturerModelName, ds.StationName) == ("sCT MR HN", "SCT_MR")


ERROR_CASES = {
    "gap": ({"missing": 3}, [], "has a gap: 5.0 mm between slices 3 and 4 where 2.5 mm is expected; pass "
                                "--allow-uneven"),
    "gantry-tilt": ({"tilt_deg": 12.0}, ["--allow-uneven"], "gantry tilt of about 12.0 degrees"),
    "like-with-dicom": ({}, ["--like", "{src}"], "--like is for a non-DICOM input"),
    "long-station-name": ({}, ["--station-name", "SCT_STATION_NAME_17"], "--station-name holds at most 16 characters"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_cli_refusals_are_one_line(tmp_path, tiny_mr_model, case) -> None:
    series, args, message = ERROR_CASES[case]
    fs = factory.make_series(tmp_path / "in", **series)
    out = tmp_path / "out"
    result = cli("convert", str(fs.folder), str(out), "--model", str(tiny_mr_model), "--quiet",
                 *(a.format(src=fs.folder) for a in args))
    assert_outcome(result.exit_code, result.stderr, out)
    assert result.exit_code == 1 and message in result.stderr


# ------------------------------------------------------------------------------------------
# Real data: every DICOM series under ../shared/data
# ------------------------------------------------------------------------------------------


def real_dicom_folders() -> list[Path]:
    """Folders under ../shared/data that hold DICOM files themselves."""
    return sorted({p.parent for p in SHARED_DATA.rglob("*")
                   if p.is_file() and p.suffix.lower() != ".zip" and is_dicom_path(p)})


CONVERTS = None
"""The expected outcome of a series that converts: exit 0, a complete output folder, dciodvfy clean."""

TOO_THIN = "sctconv needs at least 2 voxels along each axis"
REAL_OUTCOMES: dict[str, dict[str, str | None]] = {
    "dicom2nifti_vendor_mr/ge/anatomical/001": {"": CONVERTS},
    "dicom2nifti_vendor_mr/generic/compressed_j2k/001": {"": CONVERTS},
    "dicom2nifti_vendor_mr/hitachi/anatomical/001": {"": CONVERTS},
    "dicom2nifti_vendor_mr/philips/anatomical/001": {"": CONVERTS},
    "dicom2nifti_vendor_mr/siemens/anatomical/001": {"": CONVERTS},
    "lidc_idri_0001_chest_ct/dicom_sample5": {
        "": "has a gap: 50.0 mm between slices 1 and 2 where 25.0 mm is expected"},  # 5 slices of a longer series
    "pydicom_testfiles": {
        "": "holds 4 image series; choose one with --series",
        "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322": f"has size (128, 128, 1); {TOO_THIN}",
        "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457": f"has size (64, 64, 1); {TOO_THIN}",
        "1.3.6.1.4.1.5962.1.3.5.1.20040826185059.5457": f"has size (1024, 1024, 1); {TOO_THIN}",
        "1.2.826.0.1.3680043.2.1143.3712364435022872412969836992152438492":
            "emri_small.dcm (10 frames) has no Shared/PerFrameFunctionalGroupsSequence",
    },
    "totalsegmentator_ct_mr/example_ct_dicom": {"": CONVERTS},
}
"""Each DICOM folder under ../shared/data: for the whole folder ("") and, where it holds several series, for each
``--series``, either CONVERTS or the text of its one error line."""
REAL_FOLDERS = [pytest.param(folder, marks=[pytest.mark.slow] if CONVERTS in outcomes.values() else [])
                for folder, outcomes in sorted(REAL_OUTCOMES.items())]
"""A folder that converts is slow: sliding windows over a real-size series."""


def test_every_real_dicom_folder_has_a_stated_outcome() -> None:
    """A new DICOM folder in ../shared/data is added to REAL_OUTCOMES."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (../shared/data is not next to this checkout)")
    assert [str(f.relative_to(SHARED_DATA)) for f in real_dicom_folders()] == sorted(REAL_OUTCOMES)


@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_real_series_convert_or_fail_as_stated(tmp_path, models, folder) -> None:
    path = shared_data(folder)
    summaries = list_series(path)
    expected = REAL_OUTCOMES[folder]
    assert set(expected) == {""} | {s.series_instance_uid for s in summaries if len(summaries) > 1}
    for k, (series, outcome) in enumerate(expected.items()):
        picked = [s for s in summaries if series in ("", s.series_instance_uid)]
        model = models["CT" if all(s.modality == "CT" for s in picked) else "MR"]
        out = tmp_path / f"out{k}"
        result = cli("convert", str(path), str(out), "--model", str(model), "--quiet",
                     *(["--series", series] if series else []))
        assert_outcome(result.exit_code, result.stderr, out)
        if outcome is CONVERTS:
            assert result.exit_code == 0, (series, result.stderr)
            first = sorted((out / "dicom").glob("*.dcm"))[0]
            assert error_lines(run_tool(tool("dciodvfy"), first)) == [], first
        else:
            assert result.exit_code == 1 and outcome in result.stderr, (series, result.stderr)
