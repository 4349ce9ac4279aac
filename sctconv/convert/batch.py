"""Many cases in one run: `sctconv convert IN... -o OUTDIR`.

Each input (an image file, a DICOM folder or zip, or a CSV of ``input,output`` rows) is one case,
converted into ``OUTDIR/<case name>/`` by :func:`sctconv.convert.pipeline.convert` with the models
loaded once. A case that fails is recorded with its reason and the others go on; a case whose
output folder already holds a finished sCT is skipped (so a shard that was stopped can be run
again), unless ``--overwrite``. ``--num-parts N --part-id K`` keeps every N-th case of the sorted
list, starting at the K-th, so that N machines cover each case exactly once. The summary is
``OUTDIR/batch.json`` (``batch-part-K-of-N.json`` for a part, so that parts can share OUTDIR), written
after every case, and a table on the console.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sctconv.convert.options import ConvertOptions
from sctconv.convert.pipeline import convert
from sctconv.errors import SctconvError
from sctconv.io.output_dir import MARKER
from sctconv.nn.model import Model

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".zip", ".dcm", ".hdr")
"""File endings removed from an input's name to make its case name."""



def summary_name(num_parts: int, part_id: int) -> str:
    """The summary file of a batch, or of one part of it."""
    return "batch.json" if num_parts == 1 else f"batch-part-{part_id}-of-{num_parts}.json"


@dataclass(frozen=True)
class BatchCase:
    """One input and the folder its sCT goes to."""

    input: Path
    output: Path


@dataclass(frozen=True)
class CaseResult:
    """What became of a case: converted, skipped (already converted) or failed, and why."""

    input: str
    output: str
    status: str
    reason: str = ""
    seconds: float = 0.0


def case_name(path: Path) -> str:
    """The case name of an input: its file name without the image ending, or its folder's name."""
    name = path.resolve().name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def batch_cases(inputs: list[Path], out_dir: Path) -> list[BatchCase]:
    """The cases of ``inputs``: one per image or DICOM input, one per row of a CSV (columns ``input``
    and ``output``; relative inputs from the CSV's folder, relative outputs inside ``out_dir``)."""
    cases: list[BatchCase] = []
    for path in inputs:
        if path.suffix.lower() == ".csv":
            cases += csv_cases(path, out_dir)
        else:
            cases.append(BatchCase(path, out_dir / case_name(path)))
    seen: dict[Path, Path] = {}
    for case in cases:
        key = case.output.resolve()
        if key in seen:
            raise SctconvError(f"{seen[key]} and {case.input} would both be written to {case.output}; give them "
                               "different names, or list them in a CSV with an output column")
        seen[key] = case.input
    return cases


def csv_cases(path: Path, out_dir: Path) -> list[BatchCase]:
    """The ``input,output`` rows of a CSV file (a header row names the columns)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SctconvError(f"cannot read the case list {path}: {exc}") from None
    if not rows or not {"input", "output"} <= set(rows[0]):
        raise SctconvError(f"the case list {path} needs a header row with the columns input and output, and a row "
                           "per case")
    cases = []
    for number, row in enumerate(rows, start=2):
        if not (row["input"] or "").strip() or not (row["output"] or "").strip():
            raise SctconvError(f"{path}, line {number}: both input and output are needed")
        source, target = Path(row["input"].strip()), Path(row["output"].strip())
        cases.append(BatchCase(source if source.is_absolute() else path.parent / source,
                               target if target.is_absolute() else out_dir / target))
    return cases


def shard(cases: list[BatchCase], num_parts: int, part_id: int) -> list[BatchCase]:
    """Part ``part_id`` (0 to ``num_parts`` - 1) of the cases sorted by output folder: every
    ``num_parts``-th case, so that the parts together hold each case exactly once."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SctconvError(f"--part-id must be 0 to {num_parts - 1} and --num-parts at least 1 "
                           f"(got part {part_id} of {num_parts})")
    ordered = sorted(cases, key=lambda case: str(case.output.resolve()))
    return ordered[part_id::num_parts]


def convert_batch(cases: list[BatchCase], summary: Path, options: ConvertOptions, console: Console,
                  progress: Progress | None = None) -> list[CaseResult]:
    """Convert each case in turn (models loaded once), recording each outcome in ``summary`` (JSON)."""
    options.check()
    models: dict[Path, Model] = {}
    results: list[CaseResult] = []
    for number, case in enumerate(cases, start=1):
        console.print(f"case {number}/{len(cases)}: {case.input} -> {case.output}", highlight=False)
        started = time.perf_counter()
        if (case.output / MARKER).is_file() and not options.overwrite:
            results.append(CaseResult(str(case.input), str(case.output), "skipped", "already converted"))
        else:
            try:
                convert(case.input, case.output, options, progress, models)
                results.append(CaseResult(str(case.input), str(case.output), "converted",
                                          seconds=round(time.perf_counter() - started, 1)))
            except SctconvError as exc:
                results.append(CaseResult(str(case.input), str(case.output), "failed", str(exc)))
            except Exception as exc:  # noqa: BLE001 - an unforeseen failure of one case must not stop the cohort
                results.append(CaseResult(str(case.input), str(case.output), "failed",
                                          f"unexpected {type(exc).__name__}: {exc}"))
        write_summary(results, len(cases), summary)
    return results


def write_summary(results: list[CaseResult], total: int, path: Path) -> None:
    """Every case so far with its outcome, as JSON at ``path`` (written anew after each case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {status: sum(r.status == status for r in results) for status in ("converted", "skipped", "failed")}
    summary = {"cases": total, "done": len(results), **counts, "results": [asdict(r) for r in results]}
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(path)


def summary_table(results: list[CaseResult]) -> Table:
    """The console's summary: one row per case."""
    table = Table("case", "status", "reason / seconds", title="sctconv batch")
    colours = {"converted": "green", "skipped": "cyan", "failed": "red"}
    for r in results:
        table.add_row(Path(r.output).name, f"[{colours[r.status]}]{r.status}[/]", r.reason or f"{r.seconds:.1f} s")
    return table
