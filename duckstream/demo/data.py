"""Walkthrough sections on the data itself: ingest, the run record, schema and OLAP queries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from duckstream._optional import require
from duckstream.catalog import Run
from duckstream.demo.frame import (
    CAPTIONS_TABLE,
    INGEST_SPLITS,
    Lakehouse,
    Section,
    rows_table,
)
from duckstream.sync import SyncResult, sync_from_hf

__all__ = [
    "CAPTION_ROWS",
    "EXPERIMENT",
    "HELD_OUT_SPLIT",
    "caption_chars_section",
    "caption_length_section",
    "captions_per_image_section",
    "complete_run_section",
    "ingest",
    "ingest_section",
    "register_section",
    "schema_section",
    "top_words_section",
]

EXPERIMENT = "coco-captions"
# Words that say little about an image; left out of the word counts.
STOP_WORDS = ("a", "an", "the", "is", "on", "in", "of", "at", "to", "with", "next", "near", "under")
# One caption per row with its word and character counts: the base of the caption statistics.
CAPTION_ROWS = f"""SELECT imgid, split, caption, len(string_split(caption, ' ')) AS words,
        length(caption) AS chars
    FROM (SELECT imgid, split, unnest(sentences) AS caption FROM {CAPTIONS_TABLE})"""
# The Hub's third split. It stays out of the lake: a held-out split no run may train or tune on.
HELD_OUT_SPLIT = "test"


def ingest(lake: Lakehouse, split: str) -> SyncResult:
    """Sync one split of the saved dataset into raw Parquet and append it to the lake table."""
    settings = lake.settings
    # Several files per split and several row groups per file, so that the shard plan and the
    # pushdown section have something to work with.
    sizes: dict[str, Any] = {"rows_per_file": max(64, settings.images // 4), "row_group_rows": 128}
    target: dict[str, Any]
    if settings.bucket is None:
        target = {"dest": settings.raw_location}
    else:
        target = {
            "bucket": settings.bucket,
            "prefix": settings.raw_location.removeprefix(f"s3://{settings.bucket}/"),
            "s3_endpoint_url": settings.s3_endpoint,
            "s3_access_key": settings.s3_access_key,
            "s3_secret_key": settings.s3_secret_key,
        }
    # Without a catalog the sync fills the raw tier only.
    appended: dict[str, Any] = {}
    if lake.catalog is not None:
        appended = {"catalog": lake.catalog, "table": CAPTIONS_TABLE, "key": "imgid"}
    return sync_from_hf(settings.hf_dataset, split, **target, **sizes, progress=False, **appended)


def ingest_section(lake: Lakehouse) -> Section:
    results = {split: ingest(lake, split) for split in INGEST_SPLITS}
    if lake.catalog is None:
        lake.serve_raw([f for result in results.values() for f in result.files])
    # File names only: the folder is printed once above, and a long path would wrap mid-name.
    synced = rows_table(
        [
            {
                "split": split,
                "files_written": r.files_uploaded,
                "files": len(r.files),
                "rows": r.rows_total,
                "KiB": round(r.bytes_total / 1024, 1),
                "first_file": PurePosixPath(r.files[0]).name,
            }
            for split, r in results.items()
        ]
    )
    in_lake = lake.query(
        f"""SELECT split, count(*) AS images, sum(len(sentences))::BIGINT AS captions
            FROM {CAPTIONS_TABLE} GROUP BY split ORDER BY images DESC"""
    )
    held_out = _split_rows(lake, HELD_OUT_SPLIT)
    if lake.catalog is None:
        appended = "sync_from_hf(...), split by split (no catalog: the raw Parquet tier only):"
        rows_of = f"Rows of the raw tier (queried as the view {CAPTIONS_TABLE!r}) by Karpathy split:"
    else:
        appended = f"sync_from_hf(..., catalog=, table={CAPTIONS_TABLE!r}, key='imgid'), split by split:"
        rows_of = f"Rows of the lake table {CAPTIONS_TABLE!r} by Karpathy split:"
    text = (
        f"Hugging Face dataset saved with save_to_disk: {lake.settings.hf_dataset}\n"
        f"Lakehouse: {lake.settings.describe()}\n\n"
        f"{appended}\n"
        f"{lake.render(synced)}\n"
        f"Files under {lake.settings.raw_location}/; files_written is what this run wrote (a rerun finds "
        "the files whole).\n"
        f"The {HELD_OUT_SPLIT!r} split ({held_out:,} images) is saved but never synced: it is held out, "
        "so no run\ncan train or tune on it.\n\n"
        f"{rows_of}\n{lake.render(in_lake)}"
    )
    return Section(
        "Ingest: Hugging Face dataset -> Parquet"
        + (" -> DuckLake table" if lake.catalog is not None else ""),
        text,
        {
            "results": results,
            "held_out": held_out,
            "lake_rows": dict(
                zip(in_lake.column("split").to_pylist(), in_lake.column("images").to_pylist(), strict=True)
            ),
        },
    )


def _split_rows(lake: Lakehouse, split: str) -> int:
    """Rows of ``split`` in the saved Hugging Face dataset (memory-mapped, not read)."""
    datasets = require("datasets")
    return int(datasets.load_from_disk(str(lake.settings.hf_dataset))[split].num_rows)


def register_section(lake: Lakehouse) -> Section:
    catalog = lake.recorded
    experiment = catalog.register_experiment(EXPERIMENT, "a small caption model on COCO Karpathy captions")
    # Pinned to the snapshot that last changed the table, which holds the same rows as the newest
    # one: a rerun on unchanged data then trains on the very snapshot the first run did.
    table = catalog.table(CAPTIONS_TABLE, version=lake.last_change(CAPTIONS_TABLE))
    run = catalog.register_run(
        experiment.experiment_id,
        sim_index=0,
        config={"model": "caption-lm-tiny", "lr": 3e-4, "batch_size": 64, "split": "train"},
        s3_prefix=lake.settings.raw_location,
        snapshots={CAPTIONS_TABLE: table.version},
    )
    shown = rows_table(
        [
            {"field": "experiment", "value": f"{experiment.name} ({experiment.experiment_id})"},
            {"field": "run_id", "value": run.run_id},
            {"field": "status", "value": run.status},
            {"field": "config", "value": str(run.config)},
            {"field": "snapshots", "value": str(run.snapshots)},
        ]
    )
    text = (
        f"{lake.render(shown)}\n"
        f"The run trains on catalog.table({CAPTIONS_TABLE!r}, version={table.version}), the snapshot that "
        "last changed the table:\nlater writes never change what it streams, and a rerun on the same data "
        "pins the same snapshot."
    )
    return Section("Register an experiment and a run, pinned to a snapshot", text, {"run": run})


def schema_section(lake: Lakehouse, run: Run) -> Section:
    version = int((run.snapshots or {})[CAPTIONS_TABLE])
    columns = lake.query(
        f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {CAPTIONS_TABLE} AT (VERSION => ?))",
        [version],
    )
    text = f"The lake table {CAPTIONS_TABLE!r} at snapshot {version}:\n{lake.render(columns)}"
    return Section(
        "Schema of the lake table",
        text,
        {"columns": _pairs(columns)},
    )


def caption_length_section(lake: Lakehouse) -> Section:
    histogram = lake.query(
        f"""SELECT words, count(*) AS captions,
                   repeat('#', (count(*) * 50 / max(count(*)) OVER ())::INT) AS bar
            FROM ({CAPTION_ROWS}) GROUP BY words ORDER BY words"""
    )
    return Section(
        "OLAP: caption length histogram (words per caption)",
        lake.render(histogram),
        {"histogram": _pairs(histogram)},
    )


def caption_chars_section(lake: Lakehouse) -> Section:
    def summary(name: str, rows: str) -> str:
        return f"""SELECT '{name}' AS captions, count(*) AS n, min(chars) AS min,
                       quantile_disc(chars, 0.1) AS p10, median(chars) AS median,
                       round(avg(chars), 2) AS mean, quantile_disc(chars, 0.9) AS p90,
                       max(chars) AS max, round(stddev_samp(chars), 2) AS std
                   FROM ({rows})"""

    stats = lake.query(
        f"""{summary("every caption", CAPTION_ROWS)}
            UNION ALL
            {summary("first of each image", f"SELECT length(sentences[1]) AS chars FROM {CAPTIONS_TABLE}")}
            ORDER BY n DESC"""
    )
    text = (
        f"{lake.render(stats)}\nThe first caption's length sorts the images into the streamable tiers "
        "of pattern 7\n(under 40, 40 to 59, 60 characters or more)."
    )
    return Section(
        "OLAP: caption length in characters",
        text,
        {"stats": {row.pop("captions"): row for row in stats.to_pylist()}},
    )


def captions_per_image_section(lake: Lakehouse) -> Section:
    per_image = lake.query(
        f"""SELECT len(sentences) AS captions_per_image, count(*) AS images,
                   sum(len(sentences))::BIGINT AS captions
            FROM {CAPTIONS_TABLE} GROUP BY ALL ORDER BY captions_per_image"""
    )
    return Section(
        "OLAP: captions per image",
        lake.render(per_image),
        {"images_by_count": _pairs(per_image)},
    )


def top_words_section(lake: Lakehouse) -> Section:
    stop = ", ".join(f"'{w}'" for w in STOP_WORDS)
    words = lake.query(
        f"""WITH w AS (SELECT lower(trim(unnest(string_split(caption, ' ')), '.')) AS word
                       FROM ({CAPTION_ROWS}))
            SELECT word, count(*) AS n, round(100.0 * count(*) / (SELECT count(*) FROM w), 2) AS pct
            FROM w WHERE word NOT IN ({stop}) GROUP BY word ORDER BY n DESC, word LIMIT 10"""
    )
    totals = lake.query(
        f"""SELECT count(*) AS words, count(DISTINCT word) AS vocabulary
            FROM (SELECT lower(trim(unnest(string_split(caption, ' ')), '.')) AS word
                  FROM ({CAPTION_ROWS}))"""
    )
    total, vocabulary = (totals.column(i)[0].as_py() for i in range(2))
    text = f"{total:,} words, {vocabulary} distinct; the most frequent, stop words left out:\n"
    return Section(
        "OLAP: word counts",
        text + lake.render(words),
        {
            "top": _pairs(words),
            "words": total,
            "vocabulary": vocabulary,
        },
    )


def complete_run_section(lake: Lakehouse, run: Run, metrics: dict[str, Any]) -> Section:
    done = lake.recorded.complete_run(run.run_id, metrics=metrics)
    took = done.finished_at - done.started_at if done.finished_at is not None else None
    # One row per metric: the JSON whole would wrap mid-name in a table cell.
    shown = rows_table([{"metric": name, "value": str(value)} for name, value in _flat(done.metrics or {})])
    text = (
        f"Run {done.run_id[:8]} of {EXPERIMENT}: {done.status}, took {took}; its metrics in the catalog:\n"
        f"{lake.render(shown)}"
    )
    return Section("Complete the run with its metrics", text, {"run": done})


def _flat(value: Any, name: str = "") -> Iterator[tuple[str, Any]]:
    """Nested JSON as (dotted name, value) pairs, list items numbered."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flat(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flat(item, f"{name}[{index}]")
    else:
        yield name, value


def _pairs(table: pa.Table) -> dict[Any, Any]:
    """A two-column result as {first column: second column}."""
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
