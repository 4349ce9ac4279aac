"""The numbers of a model card, checked: real numbers (not text or booleans), finite in float32, where
inference runs, and positive where they are sizes."""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

import numpy as np

from sctconv.errors import SctconvError

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Inference runs in float32: a card's numbers must stay finite there."""


def _is_number(value: object) -> TypeGuard[float]:
    """A real number, not a bool. ``float`` stands for them all (int, NumPy scalars): typeshed's
    ``numbers.Real`` has no comparison with a float."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite_number(value: object, what: str, positive: bool = False) -> float:
    """``value`` as a float, or an error: a number (not a string or bool), finite in float32, and
    above zero when ``positive``."""
    if not _is_number(value) or not math.isfinite(value) or abs(value) > FLOAT32_MAX or (positive and value <= 0):
        kind = "positive finite number" if positive else "finite number"
        raise SctconvError(f"{what} must be a {kind}, not {value!r}")
    return float(value)


def three(values: object, what: str, integers: bool) -> tuple:
    """Three positive finite numbers (z, y, x), as floats, or as ints when ``integers``; else an error."""
    if (not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values)
            or (integers and not all(isinstance(v, numbers.Integral) for v in values))
            or any(not math.isfinite(v) or not 0 < v <= FLOAT32_MAX for v in values)):
        kind = "positive integers" if integers else "positive finite numbers"
        raise SctconvError(f"{what} must be 3 {kind} (z, y, x), not {values!r}")
    return tuple(int(v) for v in values) if integers else tuple(float(v) for v in values)
