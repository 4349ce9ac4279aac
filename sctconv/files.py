"""Image files by name: the suffixes sctconv reads and finding ``<stem>.<suffix>`` in a folder."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mhd")
"""Image file suffixes, in the order they are looked for (SynthRAD2025's .mha first)."""


def find_image(folder: Path, *stems: str) -> Path | None:
    """The first ``folder/<stem><suffix>`` that exists, stems in the order given, else None."""
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None
