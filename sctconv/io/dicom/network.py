"""DICOM networking with pynetdicom: the address of a peer, and sending files to it by C-STORE."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from sctconv.errors import SctconvError

for _name in ("pynetdicom", "pynetdicom.assoc", "pynetdicom.acse", "pynetdicom.dul"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)  # every failure reaches the user as one line of ours

_AE_TITLE = re.compile(r"[ -\[\]-~]{1,16}")  # the default character repertoire without backslash


@dataclass(frozen=True)
class Peer:
    """A DICOM node: application entity title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(title: str) -> str:
    """``title`` if it is a valid AE title (1-16 characters, no backslash or control characters)."""
    if not _AE_TITLE.fullmatch(title) or not title.strip():
        raise SctconvError(f"{title!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return title


def parse_peer(text: str) -> Peer:
    """``AE@host:port`` as a :class:`Peer`."""
    match = re.fullmatch(r"(.+)@(.+):(\d+)", text)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise SctconvError(f"{text!r} is not a DICOM node; write AE_TITLE@HOST:PORT, e.g. ORTHANC@10.0.0.5:4242")
    return Peer(check_ae_title(match.group(1)), match.group(2), int(match.group(3)))


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` (recursively, sorted), or an error when there are none."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        files.append(path)
    if not files:
        raise SctconvError(f"no DICOM files in {folder}")
    return files


def send_files(files: list[Path], peer: Peer, calling_ae: str = "SCTCONV", timeout: float = 30.0) -> None:
    """C-STORE every file to ``peer`` in one association; an error names the first failure."""
    from pynetdicom import AE

    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=check_ae_title(calling_ae))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, syntax)
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not association.is_established:
        raise SctconvError(f"{peer} did not accept an association from {calling_ae} (not listening, or the AE "
                           "title is not allowed there)")
    try:
        for path, dataset in zip(files, datasets):
            status = association.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                reason = "no response (connection lost)" if code is None else f"status 0x{code:04X}"
                raise SctconvError(f"{peer} did not store {path.name}: {reason}")
    finally:
        if association.is_established:
            association.release()
