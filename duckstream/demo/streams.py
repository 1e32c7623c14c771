"""Walkthrough sections that stream the data out: rows into PyTorch, a Hugging Face
``IterableDataset``, and seeded per-epoch orders (``DuckStreamDataset`` and ``stream_batches``).

Each streams the training source: the lake table pinned to the run's snapshot, or, without a
catalog, the raw Parquet files.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from duckstream.catalog import Run
from duckstream.core.lake import LakeTable
from duckstream.demo.frame import Lakehouse, Section, rows_table, short

__all__ = [
    "describe_source",
    "hf_stream_section",
    "reshuffle_section",
    "shuffle_section",
    "stream_rows_section",
    "training_source",
]

ROW_SQL = "SELECT imgid, split, len(sentences) AS captions, sentences[1] AS first_caption FROM source"
SHUFFLE_SEED = 7


def training_source(lake: Lakehouse, run: Run | None, raw_files: Sequence[str]) -> LakeTable | list[str]:
    """What the runs train on: the run's pinned lake table, else the raw Parquet files."""
    return list(raw_files) if run is None else lake.pinned(run)


def describe_source(source: LakeTable | list[str]) -> str:
    if isinstance(source, LakeTable):
        return f"catalog.table({source.name!r}, version={source.version})"
    return f"the {len(source)} raw Parquet files"


def stream_rows_section(lake: Lakehouse, source: LakeTable | list[str]) -> Section:
    from duckstream.stream import DuckStreamDataset

    dataset = DuckStreamDataset(
        source,
        f"{ROW_SQL} WHERE split IN ('train', 'restval')",
        batch_size=None,
        output="python",
        **lake.stream_keywords,
    )
    rows = list(itertools.islice(iter(dataset), 5))
    text = (
        f"DuckStreamDataset({describe_source(source)}, sql, batch_size=None): rows as dicts.\n"
        f"{dataset.num_rows:,} rows after the SQL; the first 5:\n{_render_rows(lake, rows)}"
    )
    return Section("Stream 5 rows into PyTorch", text, {"rows": rows, "num_rows": dataset.num_rows})


def hf_stream_section(lake: Lakehouse, source: LakeTable | list[str]) -> Section:
    """Egress to Hugging Face: the same source as a ``datasets.IterableDataset``."""
    from duckstream.stream import as_iterable_dataset

    sql = f"{ROW_SQL} LIMIT 5"
    dataset = as_iterable_dataset(source, sql, **lake.stream_keywords)
    rows = list(dataset)
    kind = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    text = (
        f"as_iterable_dataset({describe_source(source)}, sql) with the SQL\n  {sql}\n"
        f"is a {kind}:\n.map, .shuffle, .batch, split_dataset_by_node and state_dict work as in datasets. "
        "The LIMIT holds\nfor the whole source (it runs once, not per shard); its rows:\n"
        f"{_render_rows(lake, rows)}"
    )
    return Section("Stream to Hugging Face: IterableDataset", text, {"rows": rows, "type": type(dataset)})


def _render_rows(lake: Lakehouse, rows: list[dict[str, Any]]) -> str:
    return lake.render(
        rows_table([{**row, "first_caption": short(row["first_caption"], 50)} for row in rows])
    )


def _first_ids(ids: Sequence[int], count: int = 10) -> str:
    return ", ".join(map(str, ids[:count])) + ", ..."


def shuffle_section(lake: Lakehouse, source: LakeTable | list[str]) -> Section:
    from duckstream.stream import DuckStreamDataset

    sql = "SELECT imgid FROM source"

    def epoch_ids(shuffle: bool, epoch: int) -> list[int]:
        dataset = DuckStreamDataset(
            source,
            sql,
            batch_size=None,
            shuffle=shuffle,
            seed=SHUFFLE_SEED,
            output="python",
            **lake.stream_keywords,
        )
        dataset.set_epoch(epoch)
        return [int(row["imgid"]) for row in dataset]

    orders = {
        "plain (storage order)": epoch_ids(False, 0),
        f"shuffle, seed {SHUFFLE_SEED}, epoch 0": epoch_ids(True, 0),
        "same again": epoch_ids(True, 0),
        f"shuffle, seed {SHUFFLE_SEED}, epoch 1": epoch_ids(True, 1),
    }
    shown = rows_table([{"order": name, "first ids": _first_ids(ids)} for name, ids in orders.items()])
    same_rows = len({tuple(sorted(ids)) for ids in orders.values()}) == 1
    text = (
        f"DuckStreamDataset(..., shuffle=True, seed={SHUFFLE_SEED}) with set_epoch(n):\n"
        f"{lake.render(shown)}\n"
        f"Every order holds the same {len(orders['plain (storage order)']):,} rows "
        f"({'yes' if same_rows else 'NO'}): a seeded permutation per epoch, reproducible on any machine."
    )
    return Section("Shuffled vs plain order", text, {"orders": orders})


def reshuffle_section(lake: Lakehouse, source: LakeTable | list[str]) -> Section:
    """Per-epoch reshuffling with no torch at all: Arrow record batches from ``stream_batches``."""
    from duckstream.stream import stream_batches

    batch_size = 256

    def epoch(number: int) -> list[list[int]]:
        batches = stream_batches(
            source,
            "SELECT imgid FROM source",
            shuffle=True,
            seed=SHUFFLE_SEED,
            epoch=number,
            batch_size=batch_size,
            **lake.stream_keywords,
        )
        return [batch.column("imgid").to_pylist() for batch in batches]

    epochs = {f"epoch {n}": epoch(n) for n in (0, 1, 2)}
    epochs["epoch 1 again"] = epoch(1)
    first = [i for batch in epochs["epoch 0"] for i in batch]
    shown = rows_table(
        [
            {
                "pass": name,
                "batches": len(batches),
                "rows": sum(map(len, batches)),
                "same rows as epoch 0": sorted(i for b in batches for i in b) == sorted(first),
                "first batch starts": _first_ids(batches[0], 6),
            }
            for name, batches in epochs.items()
        ]
    )
    text = (
        f"stream_batches(source, sql, shuffle=True, seed={SHUFFLE_SEED}, epoch=n, batch_size={batch_size}) "
        "yields pyarrow.RecordBatch:\n"
        f"{lake.render(shown)}\nEach epoch is a new order of the same rows; the same seed and epoch give "
        "the same order again."
    )
    return Section("Reshuffle per epoch: stream_batches", text, {"epochs": epochs})
