"""Values for reports: JSON-friendly scalars and samples, and histogram bins (exact ones, and
estimates from quantile sketches)."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "HISTOGRAM_BINS",
    "HISTOGRAM_MAX_VALUES",
    "bin_edges",
    "float_or_none",
    "histogram_from_quantiles",
    "int_or_none",
    "jsonable",
    "scalar",
    "value_bins",
]

HISTOGRAM_BINS = 20
# Up to this many distinct values (or lengths) a histogram has one bar per value: binning a
# handful of values would smear each over its neighbours' bins.
HISTOGRAM_MAX_VALUES = 40
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


def value_bins(values: Sequence[float], *, integral: bool) -> tuple[list[float], list[float]]:
    """Edges of one bin per value of ``values`` (sorted, distinct), and the value of each bin.

    Integers spanning at most :data:`HISTOGRAM_MAX_VALUES` get unit-wide bins centred on every
    integer of their range, so missing values show as empty bins; other values get bins that
    meet halfway between neighbouring values.
    """
    if integral and values[-1] - values[0] < HISTOGRAM_MAX_VALUES:
        every = [float(v) for v in range(int(values[0]), int(values[-1]) + 1)]
        return [v - 0.5 for v in every] + [every[-1] + 0.5], every
    points = [float(v) for v in values]
    if len(points) == 1:
        return [points[0] - 0.5, points[0] + 0.5], points
    middles = [(a + b) / 2 for a, b in itertools.pairwise(points)]
    first = points[0] - (middles[0] - points[0])
    last = points[-1] + (points[-1] - middles[-1])
    return [first, *middles, last], points


def bin_edges(low: Any, high: Any, *, integral: bool, bins: int = HISTOGRAM_BINS) -> list[float]:
    """Edges of at most ``bins`` equal-width bins from ``low`` to ``high``; for integers each bin
    covers the same number of whole values, its edges halfway between two of them."""
    if integral:
        span = int(high) - int(low) + 1
        width = -(-span // bins)
        return [int(low) - 0.5 + i * width for i in range(-(-span // width) + 1)]
    return [float(e) for e in np.linspace(float(low), float(high), bins + 1)]


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
