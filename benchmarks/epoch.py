"""One measured configuration, run in a fresh process: read one epoch, print one JSON line.

Run by the harness as ``python -m duckstream.benchmarks.epoch --loader ... --source DIR``;
the parent samples this process tree's memory, so nothing else runs here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .memory import rss_bytes

__all__ = ["EpochResult", "LoaderName", "duckstream_epoch", "main", "pyarrow_epoch"]

LoaderName = Literal["pyarrow", "duckstream"]


@dataclass(frozen=True, kw_only=True)
class EpochResult:
    """What one epoch took: rows seen, wall seconds, and seconds until the first batch."""

    rows: int
    batches: int
    seconds: float
    first_batch_seconds: float
    start_rss_bytes: int  # this process after its imports, before the epoch began


def pyarrow_epoch(source: Path, columns: Sequence[str], *, batch_size: int) -> EpochResult:
    """The floor: a plain, unshuffled ``iter_batches`` scan of every file, in one process."""
    import pyarrow.parquet as pq

    files = sorted(source.glob("**/*.parquet"))
    start_rss = rss_bytes(os.getpid())
    rows = batches = 0
    first = 0.0
    start = time.perf_counter()
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns)):
            if batches == 0:
                first = time.perf_counter() - start
            rows += batch.num_rows
            batches += 1
    seconds = time.perf_counter() - start
    return EpochResult(
        rows=rows, batches=batches, seconds=seconds, first_batch_seconds=first, start_rss_bytes=start_rss
    )


def duckstream_epoch(
    source: Path, columns: Sequence[str], *, batch_size: int, workers: int, seed: int
) -> EpochResult:
    """One shuffled epoch through ``DuckStreamLoader``, batches collated to tensors and lists."""
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    start_rss = rss_bytes(os.getpid())
    rows = batches = 0
    first = 0.0
    start = time.perf_counter()  # the first batch is timed from constructing the dataset
    dataset = DuckStreamDataset(
        str(source),
        sql=f"SELECT {', '.join(columns)} FROM source",
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        output="torch",
    )
    loader = DuckStreamLoader(dataset, num_workers=workers)
    for batch in loader:
        if batches == 0:
            first = time.perf_counter() - start
        rows += len(batch["id"])
        batches += 1
    seconds = time.perf_counter() - start
    return EpochResult(
        rows=rows, batches=batches, seconds=seconds, first_batch_seconds=first, start_rss_bytes=start_rss
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the configuration, run one epoch, print its :class:`EpochResult` as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.epoch", description=__doc__)
    parser.add_argument("--loader", choices=("pyarrow", "duckstream"), required=True)
    parser.add_argument("--source", type=Path, required=True, help="directory of Parquet files")
    parser.add_argument("--columns", required=True, help="comma-separated, e.g. id,captions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (duckstream only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    columns = args.columns.split(",")
    if args.loader == "pyarrow":
        result = pyarrow_epoch(args.source, columns, batch_size=args.batch_size)
    else:
        result = duckstream_epoch(
            args.source, columns, batch_size=args.batch_size, workers=args.workers, seed=args.seed
        )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
