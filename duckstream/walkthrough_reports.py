"""Walkthrough sections that report on the data: loader metrics to W&B (offline) and a quality profile.

Both are written against plain ``wandb`` and plain SQL, each in one function, so that they can be
swapped for ``duckstream.metrics`` and ``duckstream.quality.profile`` when those are available.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from duckstream._optional import require
from duckstream.catalog import Run
from duckstream.engine import sql_literal
from duckstream.walkthrough import CAPTIONS_TABLE, Lakehouse, Section, rows_table
from duckstream.walkthrough_data import CAPTION_ROWS

__all__ = ["quality_section", "wandb_metrics_section"]

WANDB_PROJECT = "duckstream-walkthrough"


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block only (W&B reads several of them at init)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _timed_epoch(lake: Lakehouse, run: Run, batch_size: int) -> tuple[list[int], list[float]]:
    """Rows and seconds of each batch of one shuffled epoch over the run's pinned table."""
    from duckstream.stream import stream_batches

    table = lake.catalog.table(CAPTIONS_TABLE, version=int((run.snapshots or {})[CAPTIONS_TABLE]))
    rows, seconds = [], []
    start = time.perf_counter()
    for batch in stream_batches(
        table,
        "SELECT imgid, sentences FROM source",
        shuffle=True,
        batch_size=batch_size,
        **lake.stream_keywords,
    ):
        now = time.perf_counter()
        rows.append(batch.num_rows)
        seconds.append(now - start)
        start = now
    return rows, seconds


def wandb_metrics_section(lake: Lakehouse, run: Run, wandb_dir: Path) -> Section:
    """One streamed epoch's rows/s and the caption-length histogram, logged to an offline W&B run."""
    wandb = require("wandb")
    rows, seconds = _timed_epoch(lake, run, batch_size=128)
    rows_per_s = sum(rows) / max(sum(seconds), 1e-9)
    lengths = lake.query(
        f"SELECT words, count(*) AS captions FROM ({CAPTION_ROWS}) GROUP BY words ORDER BY words"
    )
    words = np.array(lengths.column("words").to_pylist(), dtype=np.int64)
    counts = np.array(lengths.column("captions").to_pylist(), dtype=np.int64)
    edges = np.append(words, words[-1] + 1).astype(np.float64) - 0.5
    wandb_dir.mkdir(parents=True, exist_ok=True)
    offline = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    with _environment(offline):
        tracked = wandb.init(
            project=WANDB_PROJECT,
            dir=str(wandb_dir),
            mode="offline",
            name=f"run-{run.run_id[:8]}",
            config={**(run.config or {}), "duckstream_run_id": run.run_id, "snapshots": run.snapshots},
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True),
        )
        try:
            for step, (n, s) in enumerate(zip(rows, seconds, strict=True)):
                tracked.log({"loader/rows_per_s": n / max(s, 1e-9), "loader/batch_rows": n}, step=step)
            tracked.log(
                {
                    "data/caption_words": wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist())),
                    "loader/epoch_rows_per_s": rows_per_s,
                    "loader/epoch_rows": sum(rows),
                },
                step=len(rows),
                commit=True,  # a step is otherwise written only when a later one begins
            )
            run_dir = Path(tracked.dir).parent
            # What W&B recorded as the run's latest values, in its own JSON form.
            summary = {key: _plain(tracked.summary[key]) for key in tracked.summary.keys()}  # noqa: SIM118 (no __iter__)
        finally:
            tracked.finish()
    shown = rows_table(
        [
            {"metric": "loader/epoch_rows", "value": f"{sum(rows):,}"},
            {"metric": "loader/batches", "value": f"{len(rows)}"},
            {"metric": "loader/epoch_rows_per_s", "value": f"{rows_per_s:,.0f}"},
            {
                "metric": "data/caption_words (histogram)",
                "value": f"{len(counts)} bins, {int(counts.sum()):,} captions",
            },
        ]
    )
    text = (
        f"One shuffled epoch of the pinned table through stream_batches(batch_size=128), logged to W&B "
        f"offline:\n{lake.render(shown)}\nOffline run: {run_dir} (upload later with `wandb sync`)."
    )
    return Section(
        "Loader metrics to W&B (offline)",
        text,
        {
            "rows": sum(rows),
            "batches": len(rows),
            "rows_per_s": rows_per_s,
            "histogram": dict(zip(words.tolist(), counts.tolist(), strict=True)),
            "run_dir": run_dir,
            "summary": summary,
        },
    )


def _plain(value: Any) -> Any:
    """A W&B summary value (nested summary dicts included) as plain Python data."""
    # Looked up on the type: a summary dict answers unknown attributes with KeyError.
    if callable(getattr(type(value), "keys", None)):
        return {str(k): _plain(value[k]) for k in value.keys()}  # noqa: SIM118 (no __iter__)
    return value


def _profile_sql(source: str, columns: list[tuple[str, str]]) -> str:
    """One pass over ``source``: per column nulls, distinct values and lengths of text and lists."""
    parts = ["count(*) AS total_rows"]
    for index, (name, kind) in enumerate(columns):
        quoted = '"' + name.replace('"', '""') + '"'
        parts.append(f"count(*) - count({quoted}) AS null_{index}")
        parts.append(f"count(DISTINCT {quoted}) AS distinct_{index}")
        sized = kind == "VARCHAR" or kind.endswith("[]")
        length = f"length({quoted})" if sized else "NULL"
        parts.append(f"min({length}) AS min_len_{index}, max({length}) AS max_len_{index}")
    return f"SELECT {', '.join(parts)} FROM {source}"


def quality_section(lake: Lakehouse, raw_files: list[str]) -> Section:
    """A per-column profile of the raw Parquet tier: the fields of a quality report."""
    with lake.query_engine() as query:
        query.register_source(raw_files)
        columns = [
            (str(n), str(k))
            for n, k in query.execute("SELECT column_name, column_type FROM (DESCRIBE source)").fetchall()
        ]
        values = query.execute(_profile_sql("source", columns)).to_arrow().to_pylist()[0]
        samples = query.execute(
            "SELECT imgid, split, image_file FROM source ORDER BY imgid LIMIT 3"
        ).to_arrow()
    profile: dict[str, Any] = {
        "source": raw_files,
        "total_rows": values["total_rows"],
        "total_columns": len(columns),
        "null_counts": {name: values[f"null_{i}"] for i, (name, _) in enumerate(columns)},
        "distinct_counts": {name: values[f"distinct_{i}"] for i, (name, _) in enumerate(columns)},
        "sample_rows": samples.to_pylist(),
    }
    shown = rows_table(
        [
            {
                "column": name,
                "type": kind,
                "nulls": values[f"null_{i}"],
                "distinct": values[f"distinct_{i}"],
                "min_len": values[f"min_len_{i}"],
                "max_len": values[f"max_len_{i}"],
            }
            for i, (name, kind) in enumerate(columns)
        ]
    )
    where = raw_files[0].rsplit("/", 1)[0]
    text = (
        f"{profile['total_rows']:,} rows, {profile['total_columns']} columns in {len(raw_files)} "
        f"Parquet files under {sql_literal(where)}:\n{lake.render(shown)}"
    )
    return Section("Quality profile of the raw tier", text, profile)
