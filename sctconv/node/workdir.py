"""The node's work folder, whose state survives a restart.

``incoming/<SeriesInstanceUID>/`` holds the received files and ``state.json`` (receiving, converted
or failed; when the last file came; delivery attempts and the time of the next one);
``outgoing/<SeriesInstanceUID>/`` the sctconv output of a converted series; ``done/<SeriesInstanceUID>.json``
the record of a delivered one. A series' files are removed only once its sCT is delivered. Every file is
written beside its final name and renamed into place, so a kill leaves no half-written file.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset

_UID = re.compile(r"[0-9.]{1,64}")


@dataclass
class SeriesState:
    """Where a received series stands."""

    status: str = "receiving"  # receiving -> converted -> (delivered: the folder is gone), or failed
    last_received: float = field(default_factory=time.time)
    calling_ae: str = ""
    files: int = 0
    attempts: int = 0  # deliveries tried
    next_attempt: float = 0.0  # when the next delivery may be tried (time.time())
    error: str = ""


class WorkDir:
    """The folders and per-series state of a node; safe to use from the receiving and the working thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming, self.outgoing, self.done = root / "incoming", root / "outgoing", root / "done"
        for folder in (self.incoming, self.outgoing, self.done):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def store(self, dataset: Dataset, file_meta: FileMetaDataset, calling_ae: str) -> bool:
        """Keep a received instance; False when its UIDs cannot name files."""
        series, instance = str(dataset.get("SeriesInstanceUID", "")), str(dataset.get("SOPInstanceUID", ""))
        if not (_UID.fullmatch(series) and _UID.fullmatch(instance)):
            return False
        folder = self.incoming / series
        folder.mkdir(exist_ok=True)
        dataset.file_meta = file_meta
        partial = folder / f".{instance}.partial"
        dataset.save_as(partial, enforce_file_format=True)
        partial.replace(folder / f"{instance}.dcm")
        with self._lock:
            state = self._read(series) or SeriesState(calling_ae=calling_ae)
            state.status, state.last_received, state.error = "receiving", time.time(), ""
            state.files = len(list(folder.glob("*.dcm")))
            self._write(series, state)
        return True

    def series(self) -> list[str]:
        """The series received and not yet delivered, oldest first."""
        return sorted((p.name for p in self.incoming.iterdir() if (p / "state.json").is_file()),
                      key=lambda uid: (self.incoming / uid / "state.json").stat().st_mtime)

    def state(self, series: str) -> SeriesState:
        with self._lock:
            return self._read(series) or SeriesState()

    def update(self, series: str, expected_last_received: float | None = None, **changes: object) -> bool:
        """Change a series' state; with ``expected_last_received``, only if no file came meanwhile."""
        with self._lock:
            state = self._read(series)
            if state is None or (expected_last_received is not None
                                 and state.last_received != expected_last_received):
                return False
            for key, value in changes.items():
                setattr(state, key, value)
            self._write(series, state)
            return True

    def finish(self, series: str, record: dict) -> None:
        """A delivered series: its record into ``done/``, its received files and output removed."""
        partial = self.done / f".{series}.json.partial"
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(self.done / f"{series}.json")
        with self._lock:
            shutil.rmtree(self.incoming / series, ignore_errors=True)
        shutil.rmtree(self.outgoing / series, ignore_errors=True)

    def _read(self, series: str) -> SeriesState | None:
        path = self.incoming / series / "state.json"
        return SeriesState(**json.loads(path.read_text())) if path.is_file() else None

    def _write(self, series: str, state: SeriesState) -> None:
        partial = self.incoming / series / ".state.json.partial"
        partial.write_text(json.dumps(asdict(state), indent=2) + "\n")
        partial.replace(self.incoming / series / "state.json")
