"""`sctconv serve` and `sctconv send` against real DICOM peers: dcmtk's storescu sending in, dcmtk's
storescp and an Orthanc server receiving; a receiver that is down, a node killed and restarted, an AE
title that is not allowed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import make_tiny_model, run_tool, sctconv, tool

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "phantom_mr_dicom"
SLICES = 40


def dcmtk(name: str) -> str:
    """dcmtk's ``name`` (pynetdicom installs Python apps of the same names into the environment)."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return tool(f"dcmtk-{name}")  # not installed: skip with the reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("node") / "tiny-mr", "mr")


def start_serve(processes: list, work: Path, port: int, forward: str, model: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "sctconv", "serve", "--forward", forward, "--work-dir", str(work), "--port", str(port),
         "--host", "127.0.0.1", "--quiet-seconds", "1", "--model", str(model), "--ae-title", "SCTCONV", *extra],
        stdout=subprocess.DEVNULL, stderr=open(work.parent / f"serve-{port}.log", "a"),
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    processes.append(process)
    wait_for(lambda: listening(port), 60, "sctconv serve to listen")
    return process


def start_storescp(processes: list, folder: Path, port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    processes.append(subprocess.Popen([dcmtk("storescp"), "-aet", "RECEIVER", "-od", str(folder), str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: listening(port), 30, "storescp to listen")


def storescu(port: int, calling: str = "SCANNER") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "SCTCONV", "+sd", "+r", "127.0.0.1",
                           str(port), str(EXAMPLE)], capture_output=True, text=True, timeout=120)


def received(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def test_a_series_sent_in_comes_out_as_a_valid_sct_series(processes, tiny_model, tmp_path):
    out, port, receiver = tmp_path / "received", free_port(), free_port()
    start_storescp(processes, out, receiver)
    start_serve(processes, tmp_path / "work", port, f"RECEIVER@127.0.0.1:{receiver}", tiny_model)
    assert storescu(port).returncode == 0
    wait_for(lambda: len(received(out)) == SLICES, what="the sCT series at storescp")
    files = received(out)
    assert all(f.name.startswith("CT.") for f in files)
    report = run_tool(tool("dciodvfy"), files[0])
    assert "Error" not in report, report
    wait_for(lambda: not list((tmp_path / "work" / "incoming").iterdir()), 10, "the received files to be removed")
    done = list((tmp_path / "work" / "done").glob("*.json"))
    assert len(done) == 1 and json.loads(done[0].read_text())["delivered_files"] == SLICES


def test_orthanc_receives_the_sct_series(processes, tiny_model, tmp_path):
    orthanc = shutil.which("Orthanc") or tool("Orthanc")
    dicom_port, http_port, port = free_port(), free_port(), free_port()
    storage = tmp_path / "orthanc"
    storage.mkdir()
    config = {"Name": "sctconv-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "Plugins": []}
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    processes.append(subprocess.Popen([orthanc, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    wait_for(lambda: listening(dicom_port) and listening(http_port), 60, "Orthanc to start")
    start_serve(processes, tmp_path / "work", port, f"ORTHANC@127.0.0.1:{dicom_port}", tiny_model)
    assert storescu(port).returncode == 0

    def instances() -> list[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/instances", timeout=5) as response:
            return json.loads(response.read())

    wait_for(lambda: len(instances()) == SLICES, what="the sCT series in Orthanc")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/instances/{instances()[0]}/simplified-tags",
                                timeout=5) as response:
        tags = json.loads(response.read())
    assert tags["Modality"] == "CT" and tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/instances/{instances()[0]}/file",
                                timeout=5) as response:
        (tmp_path / "from_orthanc.dcm").write_bytes(response.read())
    report = run_tool(tool("dciodvfy"), tmp_path / "from_orthanc.dcm")
    assert "Error" not in report, report


def test_pending_work_survives_a_receiver_that_is_down_and_a_killed_node(processes, tiny_model, tmp_path):
    out, port, receiver = tmp_path / "received", free_port(), free_port()
    work = tmp_path / "work"
    node = start_serve(processes, work, port, f"RECEIVER@127.0.0.1:{receiver}", tiny_model)
    assert storescu(port).returncode == 0

    def attempts() -> int:
        states = list((work / "incoming").glob("*/state.json"))
        return json.loads(states[0].read_text())["attempts"] if states else 0

    wait_for(lambda: attempts() >= 1, what="a failed delivery")  # converted, the receiver is down
    assert len(list((work / "incoming").glob("*/*.dcm"))) == SLICES  # the received data is kept
    node.send_signal(signal.SIGKILL)
    node.wait()
    start_storescp(processes, out, receiver)
    start_serve(processes, work, port, f"RECEIVER@127.0.0.1:{receiver}", tiny_model)  # picks up the pending series
    wait_for(lambda: len(received(out)) == SLICES, what="the pending sCT series after the restart")
    wait_for(lambda: len(list((work / "done").glob("*.json"))) == 1, 10, "the delivery record")


def test_a_calling_ae_title_that_is_not_allowed_is_rejected(processes, tiny_model, tmp_path):
    port = free_port()
    start_serve(processes, tmp_path / "work", port, "RECEIVER@127.0.0.1:9", tiny_model, "--allow", "SCANNER")
    refused = storescu(port, calling="INTRUDER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr
    assert not list((tmp_path / "work" / "incoming").iterdir())
    assert storescu(port, calling="SCANNER").returncode == 0


def test_send_stores_a_folder_and_refuses_a_bad_address(processes, tmp_path):
    out, receiver = tmp_path / "received", free_port()
    start_storescp(processes, out, receiver)
    sctconv("send", str(EXAMPLE), f"RECEIVER@127.0.0.1:{receiver}")
    assert len(received(out)) == SLICES
    bad = sctconv("send", str(EXAMPLE), "RECEIVER@127.0.0.1", check=False)
    assert bad.returncode == 1 and "AE_TITLE@HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    down = sctconv("send", str(EXAMPLE), f"RECEIVER@127.0.0.1:{free_port()}", check=False)
    assert down.returncode == 1 and "did not accept an association" in down.stderr


class FailingMidway:
    """A receiver (pynetdicom) that stores 10 instances of the first delivery and then fails the rest (out of
    resources), as a receiver that dies mid-way; later deliveries are stored whole."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.stored: dict[str, int] = {}
        self.associations: list[int] = []
        ae = AE(ae_title="RECEIVER")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2", ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store),
                                                    (evt.EVT_ACCEPTED, lambda event: self.associations.append(0))])

    def on_store(self, event) -> int:
        if len(self.associations) == 1 and len(self.stored) >= 10:
            return 0xA700
        self.stored[str(event.dataset.SOPInstanceUID)] = self.stored.get(str(event.dataset.SOPInstanceUID), 0) + 1
        return 0x0000


def test_a_delivery_that_fails_mid_way_is_sent_again_whole(processes, tiny_model, tmp_path):
    port, receiver_port = free_port(), free_port()
    receiver = FailingMidway(receiver_port)
    try:
        start_serve(processes, tmp_path / "work", port, f"RECEIVER@127.0.0.1:{receiver_port}", tiny_model)
        assert storescu(port).returncode == 0
        wait_for(lambda: len(receiver.stored) == SLICES and len(receiver.associations) >= 2,
                 what="the whole series after a failed delivery")
        wait_for(lambda: len(list((tmp_path / "work" / "done").glob("*.json"))) == 1, 10, "the delivery record")
        record = json.loads(next((tmp_path / "work" / "done").glob("*.json")).read_text())
        assert record["attempts"] == 2 and record["delivered_files"] == SLICES
    finally:
        receiver.server.shutdown()
