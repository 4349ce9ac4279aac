"""Output folders under races and signals: one case per folder, nothing left beside it, --overwrite only
replaces what sctconv wrote."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk

import sctconv.convert.pipeline
from sctconv.convert.pipeline import ConvertOptions, convert
from sctconv.errors import SctconvError
from sctconv.io import output_dir as output
from sctconv.io.dicom.read import list_series
from sctconv.io.output_dir import atomic_output_dir
from sctconv.training.data import discover_cases

EXAMPLE_MR = Path(__file__).resolve().parents[1] / "examples" / "phantom_mr.nii.gz"


def fast_options(model: Path, **changes) -> ConvertOptions:
    return ConvertOptions(model=str(model), preview=False, step=1.0, **changes)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def check_one_case(out: Path, input_path: Path) -> None:
    """``out`` holds the sCT, mask, DICOM series and report of ``input_path``, and nothing of another input."""
    size = sitk.ReadImage(str(input_path)).GetSize()
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["path"] == str(input_path)
    assert sitk.ReadImage(str(out / "sct.nii.gz")).GetSize() == size
    assert sitk.ReadImage(str(out / "mask.nii.gz")).GetSize() == size
    files = sorted((out / "dicom").glob("*.dcm"))
    assert len(files) == size[2]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert (first.Columns, first.Rows) == size[:2]
    assert {p.name for p in out.iterdir()} == {"sct.nii.gz", "mask.nii.gz", "dicom", "report.json",
                                               output.MARKER}


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "portable"])
def test_two_concurrent_converts_into_one_folder_one_wins(renameat2, phantom_files, tiny_mr_model, tmp_path,
                                                          monkeypatch):
    """Both runs pass the existence check and predict before either commits: one succeeds, the other
    says why, the folder holds the winner's whole case."""
    if not renameat2:
        monkeypatch.setattr(output, "_RENAMEAT2", None)
    both_staged = threading.Barrier(2, timeout=120)
    synthesize = sctconv.convert.pipeline.synthesize

    def synthesize_together(*args, **kwargs):
        both_staged.wait()
        return synthesize(*args, **kwargs)

    monkeypatch.setattr(sctconv.convert.pipeline, "synthesize", synthesize_together)
    out = tmp_path / "outs" / "patient"
    inputs = [phantom_files["mr"], EXAMPLE_MR]
    results: dict[Path, BaseException | None] = {}

    def run(path: Path) -> None:
        try:
            convert(path, out, fast_options(tiny_mr_model))
            results[path] = None
        except BaseException as exc:
            results[path] = exc

    threads = [threading.Thread(target=run, args=(path,)) for path in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [path for path, exc in results.items() if exc is None]
    assert len(winners) == 1, results
    loser = next(exc for exc in results.values() if exc is not None)
    assert isinstance(loser, SctconvError) and "appeared while this run worked" in str(loser)
    check_one_case(out, winners[0])
    assert os.listdir(out.parent) == ["patient"]


def start_convert(out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sctconv", "convert", str(EXAMPLE_MR), str(out), "--model",
                             str(model), "--step", "1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"convert ended before the moment to stop it: {process.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def staged(parent: Path) -> bool:
    return any(p.name.startswith(".") for p in parent.iterdir())


def writing_dicom(parent: Path) -> bool:
    return any(parent.glob(".*/dicom/*.dcm"))


def started(parent: Path) -> bool:
    time.sleep(0.3)  # the interpreter starts, sctconv is imported, the input read
    return True


MOMENTS = {"starting": started, "predicting": staged, "writing DICOM": writing_dicom}


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigterm_leaves_nothing_beside_the_output(moment, tiny_mr_model, tmp_path):
    parent = tmp_path / "outs"
    parent.mkdir()
    process = start_convert(parent / "out", tiny_mr_model)
    wait_for(lambda: MOMENTS[moment](parent), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert os.listdir(parent) in ([], ["out"])  # "out" only when the signal came after the commit
    if moment != "starting":
        assert stderr.strip() == "terminated" and process.returncode == 143


def test_sigkill_leaves_a_staging_folder_no_scan_lists_and_the_next_run_removes(phantom_files, tiny_mr_model,
                                                                                  tmp_path):
    parent = tmp_path / "outs"
    parent.mkdir()
    process = start_convert(parent / "out", tiny_mr_model)
    wait_for(lambda: writing_dicom(parent), process)
    process.kill()
    process.wait()
    assert os.listdir(parent) == hidden(parent) and len(hidden(parent)) == 1
    assert list_series(parent) == []
    convert(phantom_files["mr"], parent / "next", fast_options(tiny_mr_model, dicom=False))
    assert os.listdir(parent) == ["next"]


def test_staging_folders_of_live_processes_and_other_hosts_are_kept(tmp_path):
    host = socket.gethostname()
    live = tmp_path / f".a.sctconv-staging-{host}-{os.getpid()}-0123abcd"
    elsewhere = tmp_path / f".a.sctconv-staging-not-{host}-{2 ** 22 + 1}-0123abcd"  # a pid no process has here
    dead = tmp_path / f".a.sctconv-staging-{host}-{2 ** 22 + 1}-0123abcd"
    for folder in (live, elsewhere, dead):
        folder.mkdir()
    with atomic_output_dir(tmp_path / "b", overwrite=False):
        pass
    assert hidden(tmp_path) == sorted([live.name, elsewhere.name])


def test_overwrite_refuses_a_folder_sctconv_did_not_write_and_keeps_it(phantom_files, tiny_mr_model, tmp_path):
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "letter.txt").write_text("mine")
    with pytest.raises(SctconvError, match="not an sctconv output"):
        convert(phantom_files["mr"], documents, fast_options(tiny_mr_model, overwrite=True))
    assert os.listdir(documents) == ["letter.txt"] and hidden(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "portable"])
def test_overwrite_replaces_a_previous_output(renameat2, tmp_path, monkeypatch):
    if not renameat2:
        monkeypatch.setattr(output, "_RENAMEAT2", None)
    out = tmp_path / "out"
    for text in ("old", "new"):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "case.txt").write_text(text)
    assert (out / "case.txt").read_text() == "new" and hidden(tmp_path) == []


def test_an_interrupted_portable_swap_keeps_the_previous_output(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM between the renames of the portable swap puts the previous output back."""
    monkeypatch.setattr(output, "_RENAMEAT2", None)
    out = tmp_path / "out"
    with atomic_output_dir(out, overwrite=False) as staging:
        (staging / "case.txt").write_text("old")
    rename = output._rename_noreplace
    calls = []

    def interrupted_once(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 1:
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(output, "_rename_noreplace", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "case.txt").write_text("new")
    assert (out / "case.txt").read_text() == "old" and hidden(tmp_path) == []


def test_a_signal_while_the_previous_output_is_deleted_still_deletes_it(tmp_path, monkeypatch):
    """SIGTERM (raised as KeyboardInterrupt) after the swap: the new output stays, the old one goes, then
    the signal ends the run."""
    out = tmp_path / "out"
    with atomic_output_dir(out, overwrite=False) as staging:
        (staging / "case.txt").write_text("old")
    rmtree = output.shutil.rmtree
    calls = []

    def interrupted_once(path, ignore_errors=False):
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(output.shutil, "rmtree", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "case.txt").write_text("new")
    assert (out / "case.txt").read_text() == "new" and hidden(tmp_path) == []


def test_training_data_scans_skip_staging_folders(tmp_path):
    """A killed `sctconv simulate` leaves a staging case folder; training never takes it for a case."""
    for folder in ("case", ".leftover.sctconv-staging-host-1-0123abcd"):
        (tmp_path / folder).mkdir()
        for name in ("mr.mha", "ct.mha"):
            (tmp_path / folder / name).write_bytes(b"")
    assert [case.name for case in discover_cases(tmp_path, "mr")] == ["case"]
