"""Shuffle quality over sources of many shapes: what the training loop receives, layout by layout.

The bench's datasets have one shape (8 files of equal row groups); users' sources have every
shape: one file or hundreds, files whose sizes differ a hundredfold, one row group a file or
several. This draws source shapes at random (files, their rows drawn lognormal, row groups a
file, value width, shuffle buffer, ranks, workers), writes each as Parquet, reads one shuffled
epoch per seed through :class:`~duckstream.stream.DuckStreamLoader` on every rank (ranks posed
one after another through ``RANK`` and ``WORLD_SIZE``), checks that every row came once, and
prints ``|Spearman(position, id)|`` per shape: the median, 90th percentile and most over seeds
and ranks, against the goal (median under 0.05, most under 0.1), then how many shapes miss it.

    python -m duckstream.benchmarks.layouts --layouts 40 --seeds 5
    python -m duckstream.benchmarks.layouts --first 13 --layouts 1 --seeds 20   # one shape again
    python -m duckstream.benchmarks.layouts --read filter   # the same shapes through a WHERE

``--read`` is the query each shape is read through: ``plain`` (``SELECT id, blob``), ``filter``
(a ``WHERE`` keeping 9 rows in 10, counted per row group when planning) or ``expression`` (a
SQL expression over the value, run on each batch).

Shape ``i`` is the same on every machine (drawn from ``numpy.random.default_rng([i, 15])``), so a
shape that misses can be named by its number and read again after a change. It judges no figure:
only a row lost or repeated stops it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from duckstream.benchmarks.shuffle_quality import spearman

from duckstream._environ import environment

__all__ = [
    "LayoutQuality",
    "SourceShape",
    "draw",
    "epoch_ids",
    "kept_ids",
    "main",
    "measure",
    "write",
]

# The goal a shape is judged by (median and most of |Spearman| over seeds and ranks).
GOAL_MEDIAN = 0.05
GOAL_MOST = 0.1
_FILE_COUNTS = (1, 2, 3, 5, 8, 20, 40, 80, 150)
_SIZE_SPREADS = (0.3, 1.0, 2.0)  # sigma of the lognormal the files' rows are drawn from
_WIDTHS = (8, 8, 512, 4096)  # bytes of the binary value beside each id
_ROW_GROUPS = (1, 1, 2, 4)  # row groups a file
_BUFFERS = (None, 1_000)  # the default buffer, or one far smaller than the data
_WORLDS = (1, 1, 2, 4, 8)
_WORKERS = (0, 0, 1, 2)
# The queries a shape may be read through, and which ids each keeps.
READS = {
    "plain": "SELECT id, blob FROM source",
    "filter": "SELECT id, blob FROM source WHERE id % 10 <> 0",
    "expression": "SELECT id, octet_length(blob) + 1 AS size FROM source",
}


def kept_ids(rows: int, read: str) -> np.ndarray:
    """The ids of a source of ``rows`` rows that ``READS[read]`` keeps."""
    ids = np.arange(rows)
    return ids[ids % 10 != 0] if read == "filter" else ids


@dataclass(frozen=True)
class SourceShape:
    """One source and how it is read: ``files`` rows in each file (ids in storage order)."""

    index: int
    files: tuple[int, ...]
    width: int
    row_groups: int
    buffer: int | None
    world_size: int
    workers: int

    @property
    def rows(self) -> int:
        return sum(self.files)

    def describe(self) -> str:
        return (
            f"{len(self.files)} files of {min(self.files)}-{max(self.files)} rows ({self.rows} in all), "
            f"{self.width} B values, {self.row_groups} row group(s) a file, buffer "
            f"{self.buffer or 'default'}, {self.world_size} rank(s), {self.workers} worker(s)"
        )


@dataclass(frozen=True)
class LayoutQuality:
    """|Spearman| of every rank's epoch over the seeds, summed up."""

    shape: SourceShape
    median: float
    p90: float
    most: float
    seconds: float

    @property
    def meets_goal(self) -> bool:
        return self.median < GOAL_MEDIAN and self.most < GOAL_MOST


def draw(index: int, rows: tuple[int, int] = (10_000, 40_000)) -> SourceShape:
    """Shape number ``index``: a pure function of it (and of the range of ``rows``)."""
    rng = np.random.default_rng([index, 15])
    files = int(rng.choice(_FILE_COUNTS))
    weights = rng.lognormal(0.0, float(rng.choice(_SIZE_SPREADS)), files)
    total = int(rng.integers(rows[0], rows[1] + 1))
    sizes = np.maximum(10, (weights / weights.sum() * total).astype(np.int64))
    return SourceShape(
        index=index,
        files=tuple(int(n) for n in sizes),
        width=int(rng.choice(_WIDTHS)),
        row_groups=int(rng.choice(_ROW_GROUPS)),
        buffer=_BUFFERS[int(rng.integers(len(_BUFFERS)))],
        world_size=int(rng.choice(_WORLDS)),
        workers=int(rng.choice(_WORKERS)),
    )


def write(shape: SourceShape, folder: Path) -> Path:
    """The shape's files in ``folder``: ``id`` (0.. in storage order) and a ``blob`` value."""
    folder.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng([shape.index, 16]).integers(
        0, 256, (max(shape.files), shape.width), np.uint8
    )
    blobs = pa.array([bytes(row) for row in values], pa.binary())
    start = 0
    for number, rows in enumerate(shape.files):
        table = pa.table({"id": np.arange(start, start + rows, dtype=np.int64), "blob": blobs.slice(0, rows)})
        # Zero-padded names: files are read in name order, which is then id order.
        pq.write_table(
            table, folder / f"part-{number:04d}.parquet", row_group_size=-(-rows // shape.row_groups)
        )
        start += rows
    return folder


def epoch_ids(
    source: Path, shape: SourceShape, seed: int, cache_dir: Path, read: str = "plain"
) -> list[np.ndarray]:
    """Every rank's ids of one shuffled epoch through ``READS[read]``, in the order its loop
    received them; raises where the ranks together did not receive every row the query keeps
    exactly once."""
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader  # loads torch: only to read

    per_rank: list[np.ndarray] = []
    for rank in range(shape.world_size):
        with environment({"RANK": str(rank), "WORLD_SIZE": str(shape.world_size)}):
            dataset = DuckStreamDataset(
                source,
                READS[read],
                batch_size=64,
                shuffle=True,
                seed=seed,
                shuffle_buffer=shape.buffer,
                output="arrow",
                cache_dir=cache_dir,
            )
            loader = DuckStreamLoader(dataset, num_workers=shape.workers)
            per_rank.append(np.concatenate([batch.column("id").to_numpy() for batch in loader]))
    received = np.sort(np.concatenate(per_rank))
    kept = kept_ids(shape.rows, read)
    # Ranks are padded to equal counts by repeating rows: at most world_size - 1 of them.
    if not np.array_equal(np.unique(received), kept) or len(received) - len(kept) >= shape.world_size:
        raise AssertionError(f"shape {shape.index}: the ranks did not receive every row once")
    return per_rank


def measure(shape: SourceShape, seeds: int, folder: Path, read: str = "plain") -> LayoutQuality:
    """Write ``shape`` under ``folder``, read ``seeds`` epochs on every rank through
    ``READS[read]``, remove the files."""
    started = time.perf_counter()
    source = write(shape, folder / f"shape-{shape.index}")
    try:
        rhos = [
            spearman(ids)
            for seed in range(seeds)
            for ids in epoch_ids(source, shape, seed, folder / f"cache-{shape.index}", read)
        ]
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(folder / f"cache-{shape.index}", ignore_errors=True)
    values = np.asarray(rhos)
    return LayoutQuality(
        shape,
        float(np.median(values)),
        float(np.quantile(values, 0.9)),
        float(values.max()),
        time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m duckstream.benchmarks.layouts",
        description="Shuffle quality over sources of many shapes, as the training loop receives it.",
    )
    parser.add_argument("--layouts", type=int, default=40, help="shapes to measure (default 40)")
    parser.add_argument("--first", type=int, default=0, help="number of the first shape (default 0)")
    parser.add_argument("--seeds", type=int, default=5, help="epochs (seeds) per shape (default 5)")
    parser.add_argument(
        "--rows", default="10000,40000", help="least and most rows of a source (default 10000,40000)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where sources are written (default: a temporary folder)"
    )
    parser.add_argument(
        "--read", choices=sorted(READS), default="plain", help="the query read through (default plain)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers a rank for every shape (default: as drawn, 0-2)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    low, high = (int(part) for part in args.rows.split(","))
    folder = Path(tempfile.mkdtemp(prefix="duckstream-layouts-")) if args.dir is None else args.dir
    results = []
    try:
        for index in range(args.first, args.first + args.layouts):
            shape = draw(index, (low, high))
            if args.workers is not None:
                shape = replace(shape, workers=args.workers)
            quality = measure(shape, args.seeds, folder, args.read)
            results.append(quality)
            verdict = "ok  " if quality.meets_goal else "MISS"
            print(
                f"{verdict} shape {index:4d}: |Spearman| median {quality.median:.3f}, 90% {quality.p90:.3f}, "
                f"most {quality.most:.3f} ({quality.shape.describe()}; {quality.seconds:.0f} s)",
                file=out,
                flush=True,
            )
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    missed = [q.shape.index for q in results if not q.meets_goal]
    medians = [q.median for q in results]
    print(
        f"{len(results) - len(missed)} of {len(results)} shapes meet the goal (median < {GOAL_MEDIAN}, "
        f"most < {GOAL_MOST}); mean of the medians {np.mean(medians):.4f}; missed: {missed or 'none'}",
        file=out,
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps([{**asdict(q), "meets_goal": q.meets_goal} for q in results], indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
