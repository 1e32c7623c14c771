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
from typing import TYPE_CHECKING, Any, Literal, get_args

from .memory import rss_bytes

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EpochResult", "LoaderName", "duckstream_epochs", "main", "pyarrow_epoch", "to_python"]

# pyarrow: the plain scan; pyarrow-python: the same scan, each batch handed to Python as
# `to_python` does; duckstream: output="torch"; duckstream-arrow: output="arrow".
LoaderName = Literal["pyarrow", "pyarrow-python", "duckstream", "duckstream-arrow"]


@dataclass(frozen=True, kw_only=True)
class EpochResult:
    """What one epoch took: rows seen, wall seconds, and seconds until the first batch."""

    rows: int
    batches: int
    seconds: float
    first_batch_seconds: float
    start_rss_bytes: int  # this process after its imports, before the epoch began


def to_python(batch: pa.RecordBatch) -> dict[str, Any]:
    """``batch`` the way a training loop needs it, by plain pyarrow calls and nothing else.

    Numeric columns become NumPy arrays (``to_numpy(zero_copy_only=False)``), fixed-size lists
    of numbers arrays of shape ``(n, k, ...)`` (flattened, then reshaped) and every other column
    a Python list (``to_pylist()``): what ``output="torch"`` has to do too, short of the tensors.
    """
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name, array in zip(batch.schema.names, batch.columns, strict=True):
        shape: list[int] = []
        leaf = array.type
        while pa.types.is_fixed_size_list(leaf):
            shape.append(leaf.list_size)
            leaf = leaf.value_type
        if pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf):
            values = array
            for _ in shape:
                values = values.flatten()
            columns[name] = values.to_numpy(zero_copy_only=False).reshape(len(array), *shape)
        else:
            columns[name] = array.to_pylist()
    return columns


def _import_pandas() -> None:
    """Import pandas the way pyarrow's first ``to_numpy`` call does (its pandas shim: about 0.2 s).

    pyarrow's ``to_numpy`` and DuckDB's first query import pandas lazily; the loaders that would
    do so during the epoch import it first, so that epoch and first-batch times leave out imports.
    """
    import pyarrow as pa

    pa.array([0]).to_numpy()


def pyarrow_epoch(
    source: Path, columns: Sequence[str], *, batch_size: int, python: bool = False
) -> EpochResult:
    """The floor: a plain, unshuffled ``iter_batches`` scan of every file, in one process.

    With ``python``, each batch is also handed to Python by :func:`to_python`: the floor any
    loader pays to deliver the same data as Python objects.
    """
    import pyarrow.parquet as pq

    files = sorted(source.glob("**/*.parquet"))
    if python:
        _import_pandas()
    start_rss = rss_bytes(os.getpid())
    rows = batches = 0
    first = 0.0
    start = time.perf_counter()
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns)):
            if python:
                rows += len(to_python(batch)[columns[0]])
            else:
                rows += batch.num_rows
            if batches == 0:
                first = time.perf_counter() - start
            batches += 1
    seconds = time.perf_counter() - start
    return EpochResult(
        rows=rows, batches=batches, seconds=seconds, first_batch_seconds=first, start_rss_bytes=start_rss
    )


def duckstream_epochs(
    source: Path,
    columns: Sequence[str],
    *,
    batch_size: int,
    workers: int,
    seed: int,
    repeat: int = 1,
    output: Literal["torch", "arrow"] = "torch",
) -> list[EpochResult]:
    """``repeat`` shuffled epochs through one ``DuckStreamLoader``, as a training run reads them.

    The first (cold) epoch is timed from constructing the dataset: it pays for planning and
    starting the workers. Later epochs reuse the plan and, with workers, the persistent worker
    processes. ``output="torch"`` collates each batch to tensors and Python lists;
    ``output="arrow"`` yields the ``pyarrow.RecordBatch`` itself.
    """
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    _import_pandas()
    start_rss = rss_bytes(os.getpid())
    start = time.perf_counter()  # the first batch is timed from constructing the dataset
    dataset = DuckStreamDataset(
        str(source),
        sql=f"SELECT {', '.join(columns)} FROM source",
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        output=output,
    )
    loader = DuckStreamLoader(dataset, num_workers=workers, persistent_workers=workers > 0)
    results = []
    for _ in range(max(1, repeat)):
        rows = batches = 0
        first = 0.0
        for batch in loader:
            rows += batch.num_rows if output == "arrow" else len(batch[columns[0]])
            if batches == 0:
                first = time.perf_counter() - start
            batches += 1
        seconds = time.perf_counter() - start
        results.append(
            EpochResult(
                rows=rows,
                batches=batches,
                seconds=seconds,
                first_batch_seconds=first,
                start_rss_bytes=start_rss,
            )
        )
        start = time.perf_counter()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the configuration, run one epoch, print its :class:`EpochResult` as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.epoch", description=__doc__)
    parser.add_argument("--loader", choices=get_args(LoaderName), required=True)
    parser.add_argument("--source", type=Path, required=True, help="directory of Parquet files")
    parser.add_argument("--columns", required=True, help="comma-separated, e.g. id,captions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (duckstream*)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="epochs to run: the first is cold, the fastest later one warm"
    )
    args = parser.parse_args(argv)
    columns = args.columns.split(",")

    if args.loader in ("pyarrow", "pyarrow-python"):
        runs = [
            pyarrow_epoch(
                args.source, columns, batch_size=args.batch_size, python=args.loader == "pyarrow-python"
            )
            for _ in range(max(1, args.repeat))
        ]
    else:
        runs = duckstream_epochs(
            args.source,
            columns,
            batch_size=args.batch_size,
            workers=args.workers,
            seed=args.seed,
            repeat=args.repeat,
            output="arrow" if args.loader == "duckstream-arrow" else "torch",
        )
    # The first epoch is cold (planning, worker start, the page cache); a training run spends
    # most of its time in the later, warm ones. Timings on a shared machine wander between
    # runs, so the warm figure is the fastest of the later epochs.
    cold = runs[0]
    warm = min(runs[1:] or runs, key=lambda run: run.seconds)
    result = {**asdict(cold), "warm_seconds": warm.seconds, "warm_rows": warm.rows}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
