"""Loader statistics and column statistics as metrics for Weights & Biases (or any logger).

``target`` is a plain ``wandb`` run (anything with ``.log(dict, step=...)``) or a Lightning
logger such as ``WandbLogger`` (anything with ``.log_metrics(dict, step=...)``). Offline runs
(``WANDB_MODE=offline``) need no network and no API key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa

from duckstream.core.planning import Source
from duckstream.core.world import World
from duckstream.errors import ConfigurationError
from duckstream.runs.loader_stats import EpochStats

__all__ = ["column_statistics", "loader_metrics", "log_metrics"]

_STATS_KEYS = ("rows", "batches", "seconds", "wait_seconds", "rows_per_second", "wait_fraction")


def loader_metrics(stats: EpochStats, *, prefix: str = "loader/") -> dict[str, float]:
    """One pass's statistics as ``{prefix + name: value}`` (rows, batches, rows/s, wait...)."""
    values = stats.as_dict()
    found = {f"{prefix}{key}": float(values[key]) for key in _STATS_KEYS}
    for name, items in (stats.sources or {}).items():  # a mix: items per source
        found[f"{prefix}source/{name}"] = float(items)
    return found


def column_statistics(
    source: Source,
    sql: str,
    *,
    prefix: str = "data/",
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str | None = None,
    s3_use_ssl: bool | None = None,
    s3_retry_seconds: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """The numeric columns of the one row ``sql`` returns over ``source``, as metrics.

    For example ``SELECT avg(length(caption)) AS caption_length_mean FROM source``. The query
    runs once over the whole source (aggregates are never split between readers). The S3
    keywords are those of :func:`duckstream.stream.stream_batches`.
    """
    from duckstream.stream import stream_batches

    batches = list(
        stream_batches(
            source,
            sql,
            world=World(0, 1, 0, 1),
            s3_endpoint=s3_endpoint,
            s3_access_key=s3_access_key,
            s3_secret_key=s3_secret_key,
            s3_region=s3_region,
            s3_use_ssl=s3_use_ssl,
            s3_retry_seconds=s3_retry_seconds,
            cache_dir=cache_dir,
        )
    )
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows != 1:
        found = 0 if table is None else table.num_rows
        raise ConfigurationError(
            f"column statistics need a query that returns exactly one row, found {found} rows for: {sql}"
        )
    row = table.to_pylist()[0]
    metrics: dict[str, float] = {}
    for name, value in row.items():
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise ConfigurationError(
                f"column {name!r} of the statistics query is {type(value).__name__}, expected a number "
                f"(aggregate it, e.g. avg(length({name}))): {sql}"
            )
        if math.isfinite(float(value)):
            metrics[f"{prefix}{name}"] = float(value)
    return metrics


def log_metrics(target: Any, metrics: Mapping[str, float], *, step: int | None = None) -> None:
    """Send ``metrics`` to a wandb run (``.log``) or a Lightning logger (``.log_metrics``)."""
    if hasattr(target, "log_metrics"):
        target.log_metrics(dict(metrics), step=step)
    elif hasattr(target, "log"):
        target.log(dict(metrics), step=step)
    else:
        raise ConfigurationError(f"expected a wandb run or a Lightning logger, found {type(target).__name__}")
