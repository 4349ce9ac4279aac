"""`sctconv serve`: a DICOM Storage SCP that converts each complete MR or CBCT series and sends the sCT on.

Received instances go into the work folder (:mod:`sctconv.node.workdir`) as they arrive; a series is
complete when no instance of it has come for ``quiet_seconds``. The working loop then converts it
(:func:`sctconv.convert.pipeline.convert`, models loaded once) and sends the sCT series to the forward
node by C-STORE. A failed delivery is tried again after 2, 4, 8 ... seconds (at most ``max_backoff``)
for as long as the node runs, and the series' data stays until it is delivered; a series that cannot be
converted is kept with its reason (state ``failed``). Calling AE titles can be limited to an allow-list.
On start the loop picks up whatever a previous run left: series still to convert or to deliver.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from sctconv.convert.options import ConvertOptions
from sctconv.convert.pipeline import convert
from sctconv.errors import SctconvError
from sctconv.io.dicom.network import Peer, check_ae_title, dicom_files, send_files
from sctconv.nn.model import Model
from sctconv.node.workdir import WorkDir

STORAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.2")
"""What the node accepts: MR Image, Enhanced MR Image and CT Image Storage (a CBCT is stored as CT)."""


class Node:
    """The receiving server and the working loop of one `sctconv serve`."""

    def __init__(self, work_dir: Path, forward: Peer, options: ConvertOptions, console: Console,
                 ae_title: str = "SCTCONV", quiet_seconds: float = 10.0, max_backoff: float = 300.0) -> None:
        self.work = WorkDir(work_dir)
        self.forward, self.options, self.console = forward, replace(options, overwrite=True), console
        self.ae_title, self.quiet_seconds, self.max_backoff = check_ae_title(ae_title), quiet_seconds, max_backoff
        self.models: dict[Path, Model] = {}

    def run(self, host: str, port: int, allowed: list[str], stop: threading.Event | None = None,
            poll_seconds: float = 0.5) -> None:
        """Listen on ``host:port`` and work until ``stop`` is set (or Ctrl-C / SIGTERM)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        ae = AE(ae_title=self.ae_title)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        if allowed:
            ae.require_calling_aet = [check_ae_title(title) for title in allowed]
        try:
            server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise SctconvError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.console.print(f"{self.ae_title} listening on {host}:{port}; sCTs go to {self.forward}", highlight=False)
        try:
            while stop is None or not stop.is_set():
                self.work_once()
                time.sleep(poll_seconds)
        finally:
            if server is not None:
                server.shutdown()

    def _on_store(self, event: object) -> int:
        """C-STORE handler (pynetdicom's thread): keep the instance; 0x0000 on success."""
        dataset, meta = event.dataset, event.file_meta  # type: ignore[attr-defined]
        calling = event.assoc.requestor.ae_title  # type: ignore[attr-defined]
        try:
            return 0x0000 if self.work.store(dataset, meta, str(calling).strip()) else 0xC000
        except OSError:
            return 0xA700  # out of resources: the sender keeps the instance and may try again

    def work_once(self) -> None:
        """One pass over the work folder: convert complete series, deliver converted ones that are due."""
        now = time.time()
        for series in self.work.series():
            state = self.work.state(series)
            if state.status == "receiving" and now - state.last_received >= self.quiet_seconds:
                self._convert(series, state.last_received)
            elif state.status == "converted" and now >= state.next_attempt:
                self._deliver(series, state.attempts)

    def _convert(self, series: str, last_received: float) -> None:
        self.console.print(f"converting series {series}", highlight=False)
        try:
            report = convert(self.work.incoming / series, self.work.outgoing / series, self.options,
                             models=self.models)
        except SctconvError as exc:
            self.work.update(series, last_received, status="failed", error=str(exc))
            self.console.print(f"[red]series {series} not converted:[/] {exc}", highlight=False)
            return
        if self.work.update(series, last_received, status="converted", attempts=0, next_attempt=0.0):
            self.console.print(f"converted series {series} with {report['model']['name']}", highlight=False)

    def _deliver(self, series: str, attempts: int) -> None:
        output = self.work.outgoing / series
        try:
            files = dicom_files(output / "dicom")
            send_files(files, self.forward, self.ae_title)
        except SctconvError as exc:
            wait = min(2.0 ** (attempts + 1), self.max_backoff)
            self.work.update(series, attempts=attempts + 1, next_attempt=time.time() + wait, error=str(exc))
            self.console.print(f"[yellow]delivery of series {series} failed[/] (attempt {attempts + 1}; again in "
                               f"{wait:.0f} s): {exc}", highlight=False)
            return
        state = self.work.state(series)
        self.work.finish(series, {"series": series, "calling_ae": state.calling_ae, "received_files": state.files,
                                  "delivered_to": str(self.forward), "delivered_files": len(files),
                                  "attempts": attempts + 1, "delivered_at": time.time(),
                                  "report": json.loads((output / "report.json").read_text())})
        self.console.print(f"[green]delivered[/] the sCT of series {series} to {self.forward} ({len(files)} files)",
                           highlight=False)
