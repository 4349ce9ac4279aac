"""The DICOM network commands of the CLI: `sctconv serve` (a node that converts what it receives) and
`sctconv send` (C-STORE a folder). Registered on the app in :mod:`sctconv.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def serve(
    forward: Annotated[str, typer.Option(help="Where the sCT series go: AE_TITLE@HOST:PORT.")],
    work_dir: Annotated[Path, typer.Option(help="Received series, conversions and delivery state (kept across "
                                                "restarts).")],
    ae_title: Annotated[str, typer.Option(help="This node's AE title.")] = "SCTCONV",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="The address to listen on (0.0.0.0: every interface).")] = "0.0.0.0",
    allow: Annotated[list[str] | None, typer.Option(help="A calling AE title that may send (repeat; default: "
                                                         "any).")] = None,
    quiet_seconds: Annotated[float, typer.Option(help="A series is complete when nothing of it came for this "
                                                      "long.")] = 10.0,
    model: Annotated[str | None, typer.Option(help="Shipped model name or folder (default: by modality).")] = None,
) -> None:
    """Receive MR/CBCT series (Storage SCP), convert each complete one, send its sCT on (C-STORE)."""
    from sctconv.convert.options import ConvertOptions
    from sctconv.io.dicom.network import parse_peer
    from sctconv.node.server import Node

    options = ConvertOptions(model=model, preview=True)
    options.check()
    Node(work_dir, parse_peer(forward), options, console, ae_title, quiet_seconds).run(host, port, allow or [])


def send(
    folder: Annotated[Path, typer.Argument(help="A folder of DICOM files (searched recursively).")],
    destination: Annotated[str, typer.Argument(help="AE_TITLE@HOST:PORT.")],
    ae_title: Annotated[str, typer.Option(help="The calling AE title.")] = "SCTCONV",
) -> None:
    """Send every DICOM file of a folder to a DICOM node (C-STORE)."""
    from sctconv.io.dicom.network import dicom_files, parse_peer, send_files

    peer = parse_peer(destination)
    files = dicom_files(folder)
    send_files(files, peer, ae_title)
    console.print(f"sent {len(files)} files to {peer}", highlight=False)
