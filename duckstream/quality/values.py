"""Values for reports: JSON-friendly scalars and samples, and histograms from quantile sketches."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["HISTOGRAM_BINS", "float_or_none", "histogram_from_quantiles", "int_or_none", "jsonable", "scalar"]

HISTOGRAM_BINS = 20
_TEXT_PREVIEW = 120


def histogram_from_quantiles(
    quantiles: Sequence[float], count: int, bins: int = HISTOGRAM_BINS
) -> tuple[list[float], list[float]]:
    """Equal-width bins over ``[q0, q_last]`` with the rows each holds, from evenly spaced
    quantiles: the empirical CDF runs linearly between them. Counts sum to ``count``."""
    qs = np.asarray(quantiles, dtype=float)
    lo, hi = float(qs[0]), float(qs[-1])
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [], []
    if hi <= lo:
        return [lo - 0.5, lo + 0.5], [float(count)]
    edges = np.linspace(lo, hi, bins + 1)
    levels = np.linspace(0.0, 1.0, len(qs))
    # Repeated quantiles (a value many rows share) are steps of the CDF: keep the step's top.
    xs, first = np.unique(qs[::-1], return_index=True)
    ys = levels[::-1][first]
    cdf = np.interp(edges, xs, ys)
    cdf[0], cdf[-1] = 0.0, 1.0
    counts = np.diff(cdf) * count
    return [float(e) for e in edges], [float(c) for c in counts]


def jsonable(value: Any) -> Any:
    """A sample value as JSON can hold it: long text cut, bytes summarised, times as ISO text."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= _TEXT_PREVIEW else value[: _TEXT_PREVIEW - 1] + "…"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def scalar(value: Any) -> float | int | str | bool | None:
    out = jsonable(value)
    if out is None or isinstance(out, (bool, int, float, str)):
        return out
    return str(out)


def int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
