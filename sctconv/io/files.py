"""Image files by name: the suffixes sctconv reads, finding ``<stem>.<suffix>`` in a folder, and the folders
that hold one."""

from __future__ import annotations

from pathlib import Path

from sctconv.io.output_dir import is_staging_name

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


def folders_with(root: Path, stem: str) -> list[Path]:
    """The folders under ``root`` (``root`` included) that hold a ``<stem>.*`` file, sorted; staging folders
    (unfinished or abandoned outputs) and what they hold are left out."""
    folders = {path.parent for path in root.rglob(f"{stem}.*")}
    return sorted(f for f in folders if not any(map(is_staging_name, f.relative_to(root).parts)))
