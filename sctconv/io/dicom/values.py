"""Attribute values that fit their Value Representation (PS3.5 §6.2): Decimal Strings of at most 16
characters, strings truncated to their VR's length, Person Names per component group, code items."""

from __future__ import annotations

import math
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from sctconv.errors import SctconvError

__all__ = ["format_ds", "fit", "fit_person_name", "copy_value", "code_item"]

# Maximum value lengths (characters) of the string VRs we write (PS3.5 Table 6.2-1).
_VR_MAX = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "SH": 16, "ST": 1024, "TM": 16, "UI": 64,
}


def format_ds(value: float) -> str:
    """A Decimal String of at most 16 characters for ``value``.

    Rounds to 8 decimals first (pydicom's own formatter can produce the 17-character
    ``'10.00000000000000'`` for 9.999999999999998), then drops decimals until it fits.
    """
    v = float(value)
    if not math.isfinite(v):
        raise SctconvError(f"cannot write the non-finite number {value!r} as a DICOM DS value")
    for decimals in range(8, -1, -1):
        r = round(v, decimals)
        s = f"{r:.{decimals}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        if s in ("-0", ""):
            s = "0"
        if len(s) <= 16:
            return s
    for digits in range(10, -1, -1):
        mantissa, exponent = f"{v:.{digits}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        s = f"{mantissa}e{exponent}"
        if len(s) <= 16:
            return s
    raise SctconvError(f"cannot write {value!r} as a DICOM DS value of at most 16 characters")


def fit(value: Any, vr: str) -> str:
    """``value`` as a string within the maximum length of ``vr`` (truncated, stripped)."""
    s = "" if value is None else str(value)
    s = s.replace("\x00", "").strip()
    if vr in ("LO", "SH", "CS", "AE", "PN"):
        s = s.replace("\\", "/")  # a backslash would split the value in two
    if vr == "CS":
        s = "".join(ch for ch in s.upper() if ch.isalnum() or ch in " _")[:16]
    limit = _VR_MAX.get(vr)
    if limit is not None and len(s) > limit:
        s = s[:limit].rstrip()
    return s


def fit_person_name(value: Any) -> str:
    """A Person Name string with at most 64 characters per component group."""
    if value is None or value == "":
        return ""
    text = str(value).replace("\\", "/").strip()
    groups = [g[:64] for g in text.split("=")[:3]]
    return "=".join(groups)


def copy_value(dst: Dataset, src: Dataset | None, keyword: str, vr: str, default: str = "") -> None:
    """Copy ``keyword`` from ``src`` into ``dst``, fitted to ``vr`` (``default`` when absent or empty)."""
    value = src.get(keyword, None) if src is not None else None
    if value is None or value == "":
        value = default
    if vr == "PN":
        dst.add_new(_tag(keyword), "PN", fit_person_name(value))
    else:
        dst.add_new(_tag(keyword), vr, fit(value, vr))


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - programming error
        raise KeyError(keyword)
    return tag


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence item (PS3.3 §8.8): value, coding scheme designator and meaning."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item
