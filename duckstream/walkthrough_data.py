"""Walkthrough sections on the data itself: ingest, the run record, schema, OLAP and streams."""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa

from duckstream.catalog import Run
from duckstream.sync import SyncResult, sync_from_hf
from duckstream.walkthrough import (
    CAPTIONS_TABLE,
    INGEST_SPLITS,
    Lakehouse,
    Section,
    rows_table,
    short,
)

__all__ = [
    "EXPERIMENT",
    "caption_length_section",
    "captions_per_image_section",
    "complete_run_section",
    "ingest",
    "ingest_section",
    "register_section",
    "schema_section",
    "shuffle_section",
    "stream_rows_section",
    "top_words_section",
]

EXPERIMENT = "coco-captions"
# Words that say little about an image; left out of the word counts.
STOP_WORDS = ("a", "an", "the", "is", "on", "in", "of", "at", "to", "with", "next", "near", "under")
# One caption per row with its word count: the base of the caption statistics.
CAPTION_ROWS = f"""SELECT imgid, split, caption, len(string_split(caption, ' ')) AS words
    FROM (SELECT imgid, split, unnest(sentences) AS caption FROM {CAPTIONS_TABLE})"""


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
    return sync_from_hf(
        settings.hf_dataset,
        split,
        **target,
        **sizes,
        progress=False,
        catalog=lake.catalog,
        table=CAPTIONS_TABLE,
        key="imgid",
    )


def ingest_section(lake: Lakehouse) -> Section:
    results = {split: ingest(lake, split) for split in INGEST_SPLITS}
    synced = rows_table(
        [
            {
                "split": split,
                "files_written": r.files_uploaded,
                "files": len(r.files),
                "rows": r.rows_total,
                "KiB": round(r.bytes_total / 1024, 1),
                "first_file": r.files[0],
            }
            for split, r in results.items()
        ]
    )
    in_lake = lake.query(
        f"""SELECT split, count(*) AS images, sum(len(sentences))::BIGINT AS captions
            FROM {CAPTIONS_TABLE} GROUP BY split ORDER BY images DESC"""
    )
    text = (
        f"Hugging Face dataset saved with save_to_disk: {lake.settings.hf_dataset}\n"
        f"Lakehouse: {lake.settings.describe()}\n\n"
        "sync_from_hf(..., catalog=, table='captions', key='imgid'), split by split:\n"
        f"{lake.render(synced)}\n"
        f"Rows of the lake table {CAPTIONS_TABLE!r} by Karpathy split:\n{lake.render(in_lake)}"
    )
    return Section(
        "Ingest: Hugging Face dataset -> Parquet -> DuckLake table",
        text,
        {
            "results": results,
            "lake_rows": dict(
                zip(in_lake.column("split").to_pylist(), in_lake.column("images").to_pylist(), strict=True)
            ),
        },
    )


def register_section(lake: Lakehouse) -> Section:
    catalog = lake.catalog
    experiment = catalog.register_experiment(EXPERIMENT, "a small caption model on COCO Karpathy captions")
    table = catalog.table(CAPTIONS_TABLE)  # pinned to the snapshot the run trains on
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
        f"{lake.render(shown)}\nThe run trains on catalog.table({CAPTIONS_TABLE!r}), pinned to snapshot "
        f"{table.version}: later writes to the table never change what it streams."
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


def _pinned(lake: Lakehouse, run: Run) -> Any:
    return lake.catalog.table(CAPTIONS_TABLE, version=int((run.snapshots or {})[CAPTIONS_TABLE]))


def stream_rows_section(lake: Lakehouse, run: Run) -> Section:
    from duckstream.stream import DuckStreamDataset

    dataset = DuckStreamDataset(
        _pinned(lake, run),
        "SELECT imgid, split, len(sentences) AS captions, sentences[1] AS first_caption FROM source "
        "WHERE split IN ('train', 'restval')",
        batch_size=None,
        output="python",
        **lake.stream_keywords,
    )
    rows = list(itertools.islice(iter(dataset), 5))
    shown = rows_table([{**row, "first_caption": short(row["first_caption"], 50)} for row in rows])
    text = (
        "DuckStreamDataset(table pinned to the run's snapshot, sql, batch_size=None): rows as dicts.\n"
        f"{dataset.num_rows:,} rows after the SQL; the first 5:\n{lake.render(shown)}"
    )
    return Section("Stream 5 rows into PyTorch", text, {"rows": rows, "num_rows": dataset.num_rows})


def shuffle_section(lake: Lakehouse, run: Run) -> Section:
    from duckstream.stream import DuckStreamDataset

    table = _pinned(lake, run)
    sql = "SELECT imgid FROM source"

    def epoch_ids(shuffle: bool, epoch: int) -> list[int]:
        dataset = DuckStreamDataset(
            table, sql, batch_size=None, shuffle=shuffle, seed=7, output="python", **lake.stream_keywords
        )
        dataset.set_epoch(epoch)
        return [int(row["imgid"]) for row in dataset]

    orders = {
        "plain (storage order)": epoch_ids(False, 0),
        "shuffle, seed 7, epoch 0": epoch_ids(True, 0),
        "same again": epoch_ids(True, 0),
        "shuffle, seed 7, epoch 1": epoch_ids(True, 1),
    }
    shown = rows_table(
        [
            {"order": name, "first ids": ", ".join(map(str, ids[:10])) + ", ..."}
            for name, ids in orders.items()
        ]
    )
    same_rows = len({tuple(sorted(ids)) for ids in orders.values()}) == 1
    text = (
        f"{lake.render(shown)}\nEvery order holds the same {len(orders['plain (storage order)']):,} rows "
        f"({'yes' if same_rows else 'NO'}): a seeded permutation per epoch, reproducible on any machine."
    )
    return Section("Shuffled vs plain order", text, {"orders": orders})


def complete_run_section(lake: Lakehouse, run: Run, metrics: dict[str, Any]) -> Section:
    done = lake.catalog.complete_run(run.run_id, metrics=metrics)
    runs = lake.query(
        """SELECT left(r.run_id, 8) AS run, e.name AS experiment, r.status, r.metrics,
                  (r.finished_at - r.started_at) AS took
           FROM simulation_runs r JOIN experiments e USING (experiment_id)
           WHERE r.run_id = ?""",
        [run.run_id],
    )
    return Section("Complete the run with its metrics", lake.render(runs), {"run": done})


def _pairs(table: pa.Table) -> dict[Any, Any]:
    """A two-column result as {first column: second column}."""
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
