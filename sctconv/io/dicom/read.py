"""Reading source MR / CT / CBCT DICOM series into a SimpleITK image with exact patient geometry.

Rules (the modules: :mod:`~sctconv.io.dicom.files` finds and decodes the files, :mod:`~sctconv.io.dicom.entries`
reads one entry per slice, this module groups them into series and picks one, :mod:`~sctconv.io.dicom.geometry`
checks and builds the slice grid):

* Non-image objects (RTSTRUCT, RTDOSE, SEG, SR, DICOMDIR, non-DICOM files) are ignored silently.
* Images are grouped by SeriesInstanceUID and then split by (ImageOrientationPatient, Rows,
  Columns); localizers and minority stacks are dropped with a logged warning.
* Slices are sorted by their position along the slice normal ``cross(row_cosine, col_cosine)``,
  never by InstanceNumber or z. Gaps, uneven spacing (> 1 %), duplicate positions and gantry tilt
  are refused with a message that names the problem; with ``allow_uneven`` gaps and uneven
  spacing are resampled instead (linearly along the normal, onto the most common step).
* A single file stands for its series: the series it belongs to is read from its folder.
* The image is built from numpy with origin = IPP of the first sorted slice, direction columns =
  (row cosine, column cosine, normal) and spacing = (column spacing, row spacing, slice step), so
  that sitk index (i, j, k) is column i, row j, slice k.
* Classic single-frame images and enhanced multi-frame images (geometry from the shared /
  per-frame functional groups) are supported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from sctconv.errors import SctconvError
from sctconv.io.dicom.entries import (
    SliceEntry,
    image_type,
    int_or_none,
    is_image,
    orientation_name,
    slice_entries,
    sop_class_uid,
    sop_instance_uid,
)
from sctconv.io.dicom.files import decode_pixels, dicom_file, is_dicom_path, is_zip, iter_files, read_header
from sctconv.io.dicom.geometry import (
    check_slices,
    check_stacking,
    format_mm,
    irregularity,
    most_common_step,
    resample_stack,
    single_slice_step,
    slice_cosines,
)
from sctconv.io.dicom.series import Resampling, SeriesSummary, SourceSeries

log = logging.getLogger(__name__)

__all__ = [
    "Resampling",
    "SeriesSummary",
    "SourceSeries",
    "list_series",
    "read_dicom_series",
    "read_series_header",
    "is_dicom_path",
]

_IOP_TOL = 1e-3  # cosines of two slices that belong to the same stack


@dataclass
class _Stack:
    """One candidate series: images of one SeriesInstanceUID with one orientation and size."""

    uid: str
    entries: list[SliceEntry]
    problem: str | None = None

    @property
    def first(self) -> Dataset:
        return self.entries[0].header

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "")

    @property
    def series_number(self) -> int | None:
        return int_or_none(self.first.get("SeriesNumber", None))

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    def summary(self) -> SeriesSummary:
        return SeriesSummary(
            series_instance_uid=self.uid,
            series_number=self.series_number,
            modality=self.modality,
            description=self.description,
            slices=len(self.entries),
            orientation=orientation_name(self.entries[0].iop),
            rows=self.entries[0].rows,
            columns=self.entries[0].cols,
        )

    def label(self) -> str:
        number = self.series_number
        num = f"#{number}" if number is not None else "#-"
        desc = f" '{self.description}'" if self.description else ""
        uid = self.uid or "(no SeriesInstanceUID)"
        return f"{uid} ({num}, {self.modality or '?'}{desc}, {len(self.entries)} images)"


def _scan(path: Path) -> list[_Stack]:
    by_series: dict[str, list[SliceEntry]] = {}
    seen_sops: dict[str, str] = {}
    n_files = 0
    for src in iter_files(path):
        ds = read_header(src)
        if ds is None:
            continue
        n_files += 1
        if not is_image(ds):
            log.debug("ignoring non-image object %s (%s)", src.name, ds.get("Modality", ""))
            continue
        sop = sop_instance_uid(ds)
        if sop and sop in seen_sops:
            log.warning("ignoring %s: same SOPInstanceUID as %s", src.name, seen_sops[sop])
            continue
        if sop:
            seen_sops[sop] = src.name
        # Normalise SOP Class/Instance UIDs that some exporters keep only in the file meta.
        if not str(ds.get("SOPClassUID", "") or "") and sop_class_uid(ds):
            ds.SOPClassUID = sop_class_uid(ds)
        if not str(ds.get("SOPInstanceUID", "") or "") and sop:
            ds.SOPInstanceUID = sop
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        try:
            entries = slice_entries(src, ds)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring %s: unreadable image header (%s)", src.name, exc)
            continue
        by_series.setdefault(uid, []).extend(entries)

    stacks: list[_Stack] = []
    for uid, entries in by_series.items():
        stacks.extend(_split_series(uid, entries))
    return stacks


def _split_series(uid: str, entries: list[SliceEntry]) -> list[_Stack]:
    label = uid or "(no SeriesInstanceUID)"
    localizers = [e for e in entries if "LOCALIZER" in image_type(e.header)]
    if localizers:
        entries = [e for e in entries if "LOCALIZER" not in image_type(e.header)]
        log.warning("series %s: ignoring %d localizer image(s)", label, len(localizers))
        if not entries:
            return []

    # Cluster by orientation (tolerant to rounding jitter) and matrix size.
    groups: list[tuple[np.ndarray | None, int, int, list[SliceEntry]]] = []
    for e in entries:
        for g in groups:
            iop, rows, cols, members = g
            same_iop = (iop is None and e.iop is None) or (
                iop is not None and e.iop is not None and np.max(np.abs(iop - e.iop)) < _IOP_TOL
            )
            if same_iop and rows == e.rows and cols == e.cols:
                members.append(e)
                break
        else:
            groups.append((e.iop, e.rows, e.cols, [e]))

    if len(groups) == 1:
        return [_Stack(uid, groups[0][3])]

    groups.sort(key=lambda g: len(g[3]), reverse=True)
    if len(groups[0][3]) == len(groups[1][3]):
        # No majority: present every stack; reading this UID will ask for a cleaner export.
        desc = "; ".join(
            f"{len(g[3])} images {g[2]}x{g[1]} {orientation_name(g[0])}" for g in groups
        )
        problem = (
            f"series {label} mixes stacks of different orientation or size ({desc}); "
            "export each stack as its own series"
        )
        return [_Stack(uid, g[3], problem=problem) for g in groups]
    kept = groups[0]
    dropped = groups[1:]
    note = ", ".join(
        f"{len(g[3])} image(s) {g[2]}x{g[1]} {orientation_name(g[0])}" for g in dropped
    )
    log.warning(
        "series %s: keeping the %d images %dx%d %s and dropping %s",
        label, len(kept[3]), kept[2], kept[1], orientation_name(kept[0]), note,
    )
    return [_Stack(uid, kept[3])]


def list_series(path: Path) -> list[SeriesSummary]:
    """Image series under ``path``: a folder (searched recursively), a .zip, or a file's folder."""
    stacks = _scan(Path(path))
    summaries = [s.summary() for s in stacks]
    summaries.sort(key=lambda s: (s.series_number is None, s.series_number or 0,
                                  s.series_instance_uid))
    return summaries


def read_dicom_series(path: Path, series: str | None = None,
                      allow_uneven: bool = False) -> SourceSeries:
    """Read one image series under ``path`` into a float32 SimpleITK image.

    ``series`` is a SeriesInstanceUID or a SeriesNumber (as a string); None picks the only image
    series, else the only MR series, else the only CT series. A single file picks its own series
    (read from the file's folder). ``allow_uneven`` resamples a stack with gaps or uneven
    spacing onto a regular grid instead of refusing it.
    """
    return _load_stack(_find_stack(Path(path), series), allow_uneven)


def read_series_header(path: Path, series: str | None = None) -> Dataset:
    """The header (no pixel data) of one image series under ``path``, picked as by
    :func:`read_dicom_series` but without reading pixels or checking the slice grid."""
    return _find_stack(Path(path), series).first


def _find_stack(path: Path, series: str | None) -> _Stack:
    if path.is_file() and not is_zip(path):
        series = _series_of_file(path, series)
    stacks = _scan(path)
    if not stacks:
        raise SctconvError(f"no DICOM image series found in {path}")
    return _select(stacks, series, path)


def _series_of_file(path: Path, series: str | None) -> str:
    """The SeriesInstanceUID of the image file ``path`` (which names its own series)."""
    header = read_header(dicom_file(path))
    if header is None or not is_image(header):
        kind = f" (it is a {header.get('Modality', '') or 'non-image'} object)" if header else ""
        raise SctconvError(f"no DICOM image series found in {path}{kind}")
    if series is not None:
        raise SctconvError(
            f"--series picks a series in a folder or zip, but {path} is a single file of its "
            "own series; give its folder to choose another series"
        )
    return str(header.get("SeriesInstanceUID", "") or "")


def _select(stacks: list[_Stack], series: str | None, path: Path) -> _Stack:
    def listing(cands: list[_Stack]) -> str:
        return "; ".join(s.label() for s in cands)

    if series is not None:
        key = str(series).strip()
        chosen = [s for s in stacks if s.uid == key]
        if not chosen and key.lstrip("+-").isdigit():
            chosen = [s for s in stacks if s.series_number == int(key)]
        if not chosen:
            raise SctconvError(
                f"series {key} not found in {path}; available: {listing(stacks)}"
            )
        uids = {s.uid for s in chosen}
        if len(uids) > 1:
            raise SctconvError(
                f"series number {key} is used by {len(uids)} series in {path}; pick one by "
                f"SeriesInstanceUID: {listing(chosen)}"
            )
        return _single_stack(chosen)

    if len({s.uid for s in stacks}) == 1:
        return _single_stack(stacks)
    for modality in ("MR", "CT"):
        cands = [s for s in stacks if s.modality.upper() == modality]
        if len({s.uid for s in cands}) == 1:
            log.info("several image series found; using the only %s series %s", modality,
                     cands[0].label())
            return _single_stack(cands)
        if cands:
            break
    raise SctconvError(
        f"{path} holds {len(stacks)} image series; choose one with --series "
        f"(SeriesInstanceUID or SeriesNumber): {listing(stacks)}"
    )


def _single_stack(stacks: list[_Stack]) -> _Stack:
    if len(stacks) > 1:
        # Same UID, several stacks without a majority.
        raise SctconvError(stacks[0].problem or f"series {stacks[0].uid} is ambiguous")
    return stacks[0]


def _load_stack(stack: _Stack, allow_uneven: bool) -> SourceSeries:
    label = stack.uid or "(no SeriesInstanceUID)"
    entries = stack.entries
    if stack.problem:
        raise SctconvError(stack.problem)
    for e in entries:
        if e.problem:
            raise SctconvError(e.problem)
    check_slices(entries, label)

    r, c, n = slice_cosines(entries[0], label)
    positions = np.array([float(np.dot(e.position, n)) for e in entries])
    order = np.argsort(positions, kind="stable")
    entries = [entries[i] for i in order]
    positions = positions[order]

    irregular = None
    if len(entries) == 1:
        step = single_slice_step(entries[0], label)
    else:
        check_stacking(entries, positions, n, label)
        irregular = irregularity(positions, label)
        if irregular and not allow_uneven:
            raise SctconvError(
                f"{irregular}; pass --allow-uneven to resample it onto a regular grid"
            )
        step = most_common_step(np.diff(positions)) if irregular else float(
            (positions[-1] - positions[0]) / (len(positions) - 1))
    spacing_rc = entries[0].spacing  # (row spacing, column spacing)

    array = _pixels(entries, label)
    resampled = slice_sources = None
    if irregular:
        array, slice_sources, resampled = resample_stack(array, positions, step, irregular)
        log.warning(
            "%s; resampled its %d slices linearly along the slice normal onto a regular grid of "
            "%d slices %s mm apart (--allow-uneven)",
            irregular, len(entries), resampled.slices, format_mm(step),
        )
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0]), float(step)))
    image.SetOrigin(tuple(float(v) for v in entries[0].position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([r, c, n]).ravel()))

    headers = [e.header for e in entries]
    frames = [e.frame for e in entries]
    return SourceSeries(
        image=image,
        datasets=headers,
        modality=stack.modality,
        series_instance_uid=stack.uid,
        description=stack.description,
        frame_numbers=frames if any(f is not None for f in frames) else None,
        resampled=resampled,
        slice_sources=slice_sources,
    )


def _pixels(entries: list[SliceEntry], label: str) -> np.ndarray:
    rows, cols = entries[0].rows, entries[0].cols
    out = np.empty((len(entries), rows, cols), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for k, e in enumerate(entries):
        arr = cache.get(e.src.name)
        if arr is None:
            arr = decode_pixels(e.src, label)
            if e.frame is not None:
                cache[e.src.name] = arr  # keep multi-frame arrays for the other frames
        if e.frame is not None and arr.ndim == 3:
            plane = arr[e.frame - 1]
        elif arr.ndim == 3 and arr.shape[0] == 1:
            plane = arr[0]
        else:
            plane = arr
        if plane.shape != (rows, cols):
            raise SctconvError(
                f"series {label}: {e.src.name} decodes to {plane.shape}, expected "
                f"{rows}x{cols} (colour or corrupt image?)"
            )
        out[k] = plane.astype(np.float64) * e.slope + e.intercept
    return out
