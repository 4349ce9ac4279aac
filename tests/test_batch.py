"""`sctconv convert IN... -o OUTDIR`: many cases, one failing, shards, CSV case lists, reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sctconv.convert.batch import BatchCase, batch_cases, case_name, shard
from sctconv.errors import SctconvError
from sctconv.io.output_dir import MARKER
from tests.helpers import cli


@pytest.fixture
def three_mrs(phantom_files: dict[str, Path], tmp_path: Path) -> list[Path]:
    """Three MR inputs: two NIfTI copies of the phantom and one MHA."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = [folder / "alpha.nii.gz", folder / "beta.nii.gz", folder / "gamma.nii.gz"]
    for path in paths:
        shutil.copy(phantom_files["mr"], path)
    return paths


def test_a_corrupt_case_is_reported_and_the_others_are_converted(three_mrs, tiny_mr_model, tmp_path):
    corrupt = three_mrs[1]
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # a truncated gzip stream
    out = tmp_path / "out"
    result = cli("convert", *map(str, three_mrs), "-o", str(out), "--model", str(tiny_mr_model), "--no-dicom",
                 "--quiet")
    assert result.exit_code == 1
    assert "1 of 3 cases failed" in result.stderr and "Traceback" not in result.output
    summary = json.loads((out / "batch.json").read_text())
    statuses = {Path(r["output"]).name: r["status"] for r in summary["results"]}
    assert statuses == {"alpha": "converted", "beta": "failed", "gamma": "converted"}
    reason = next(r["reason"] for r in summary["results"] if r["status"] == "failed")
    assert "beta.nii.gz" in reason
    assert (out / "alpha" / "sct.nii.gz").is_file() and (out / "gamma" / "sct.nii.gz").is_file()
    assert not (out / "beta").exists() and not [p for p in out.iterdir() if p.name.startswith(".beta")]

    again = cli("convert", *map(str, three_mrs), "-o", str(out), "--model", str(tiny_mr_model), "--no-dicom",
                "--quiet")
    rerun = {Path(r["output"]).name: r["status"] for r in json.loads((out / "batch.json").read_text())["results"]}
    assert again.exit_code == 1 and rerun == {"alpha": "skipped", "beta": "failed", "gamma": "skipped"}


def test_two_shards_cover_each_case_exactly_once(three_mrs, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    converted = []
    for part in (0, 1):
        result = cli("convert", *map(str, three_mrs), "-o", str(out), "--model", str(tiny_mr_model), "--no-dicom",
                     "--quiet", "--num-parts", "2", "--part-id", str(part))
        assert result.exit_code == 0, result.stderr
        summary = json.loads((out / f"batch-part-{part}-of-2.json").read_text())
        converted += [Path(r["output"]).name for r in summary["results"] if r["status"] == "converted"]
    assert sorted(converted) == ["alpha", "beta", "gamma"]
    assert all((out / name / MARKER).is_file() for name in converted)


def test_shards_partition_any_cohort():
    cases = [BatchCase(Path(f"in{i}"), Path(f"/out/case{i:02d}")) for i in range(11)]
    for parts in (1, 2, 3, 11, 12):
        together = [c for k in range(parts) for c in shard(cases, parts, k)]
        assert sorted(c.output for c in together) == sorted(c.output for c in cases)
    with pytest.raises(SctconvError, match="--part-id must be 0 to 2"):
        shard(cases, 3, 3)


def test_csv_case_lists_name_the_outputs(three_mrs, tmp_path):
    listing = tmp_path / "inputs" / "cases.csv"
    listing.write_text("input,output\nalpha.nii.gz,patient-1/sct\n" + f"{three_mrs[2]},patient-2\n")
    cases = batch_cases([listing, three_mrs[1]], tmp_path / "out")
    assert cases == [BatchCase(three_mrs[0], tmp_path / "out" / "patient-1" / "sct"),
                     BatchCase(three_mrs[2], tmp_path / "out" / "patient-2"),
                     BatchCase(three_mrs[1], tmp_path / "out" / "beta")]
    (tmp_path / "bad.csv").write_text("path\nalpha.nii.gz\n")
    with pytest.raises(SctconvError, match="columns input and output"):
        batch_cases([tmp_path / "bad.csv"], tmp_path / "out")


def test_two_inputs_with_one_name_are_refused_before_any_work(three_mrs, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(three_mrs[0], other / "alpha.mha")
    with pytest.raises(SctconvError, match="would both be written to"):
        batch_cases([three_mrs[0], other / "alpha.mha"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_case_names_and_the_single_case_form():
    assert case_name(Path("/data/p1.nii.gz")) == "p1" and case_name(Path("/data/P2.MHA")) == "P2"
    assert case_name(Path("/data/dicom_folder/")) == "dicom_folder"
    result = cli("convert", "a.nii.gz", "b.nii.gz", "out")
    assert result.exit_code == 1 and "-o OUTDIR" in result.stderr
