"""One measured configuration, run in a fresh process: read its epochs, print one JSON line.

Run by the harness as ``python -m duckstream.benchmarks.epoch --loader ... --source DIR``;
the parent samples this process tree's memory, so nothing else runs here. With ``--ids-dir``,
the duckstream loaders also write each epoch's ids, in the order the loop received them, for
the parent to judge the shuffle by (``shuffle_quality.py``). The source is a local folder,
``s3://bucket/prefix`` or a DuckLake table (``--lake-catalog``). Secrets never
travel on the command line, where ``ps`` shows them: S3 settings come from the environment
(``DUCKSTREAM_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), a PostgreSQL
catalog's password from ``PGPASSWORD``.
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
from .readbytes import tree_read_chars

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "EpochResult",
    "LakeSource",
    "LoaderName",
    "duckstream_epochs",
    "ids_file",
    "main",
    "pyarrow_epoch",
    "to_python",
]

# pyarrow: the plain scan; pyarrow-python: the same scan, each batch handed to Python as
# `to_python` does; duckstream: output="torch"; duckstream-arrow: output="arrow".
LoaderName = Literal["pyarrow", "pyarrow-python", "duckstream", "duckstream-arrow"]


@dataclass(frozen=True, kw_only=True)
class EpochResult:
    """What one epoch took: rows seen, wall seconds, seconds until the first batch, bytes read."""

    rows: int
    batches: int
    seconds: float
    first_batch_seconds: float
    start_rss_bytes: int  # this process after its imports, before the epoch began
    read_bytes: int = 0  # rchar of the process tree during the epoch (readbytes.py)


@dataclass(frozen=True, kw_only=True)
class LakeSource:
    """A DuckLake table to read: its catalog (a file, or a DSN without password), data path, name."""

    catalog: str
    data_path: str
    table: str


def ids_file(directory: str | Path, epoch: int) -> Path:
    """Where ``--ids-dir`` keeps epoch ``epoch``'s ids: raw native int64, in the order received."""
    return Path(directory) / f"epoch-{epoch}.int64"


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
    source: str, columns: Sequence[str], *, batch_size: int, python: bool = False
) -> EpochResult:
    """The floor: a plain, unshuffled ``iter_batches`` scan of every file, in one process.

    ``source`` is a local folder or ``s3://bucket/prefix`` (read through pyarrow's own
    ``S3FileSystem``, with ``pre_buffer`` on: pyarrow's way to coalesce a row group's ranged
    reads, which matters once each request costs a round trip). With ``python``, each batch
    is also handed to Python by :func:`to_python`: the floor any loader pays to deliver the
    same data as Python objects.
    """
    import pyarrow.parquet as pq

    if python:
        _import_pandas()
    remote = source.startswith("s3://")
    filesystem = _s3_filesystem() if remote else None
    start_rss = rss_bytes(os.getpid())
    start_read = tree_read_chars(os.getpid())
    rows = batches = 0
    first = 0.0
    start = time.perf_counter()
    for file in _parquet_files(source, filesystem):
        opened = filesystem.open_input_file(file.path) if filesystem is not None else file
        parquet = pq.ParquetFile(opened, pre_buffer=remote)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns)):
            if python:
                rows += len(to_python(batch)[columns[0]])
            else:
                rows += batch.num_rows
            if batches == 0:
                first = time.perf_counter() - start
            batches += 1
    seconds = time.perf_counter() - start
    return EpochResult(
        rows=rows,
        batches=batches,
        seconds=seconds,
        first_batch_seconds=first,
        start_rss_bytes=start_rss,
        read_bytes=tree_read_chars(os.getpid()) - start_read,
    )


def _s3_filesystem() -> Any:
    from duckstream.storage import S3Settings, pyarrow_s3

    return pyarrow_s3(S3Settings.resolve())


def _parquet_files(source: str, filesystem: Any) -> list[Any]:
    """The Parquet files under ``source`` in sorted path order (pyarrow ``FileInfo``s on S3)."""
    if filesystem is None:
        return sorted(Path(source).glob("**/*.parquet"))
    from pyarrow import fs

    selector = fs.FileSelector(source.removeprefix("s3://").rstrip("/"), recursive=True)
    found = [info for info in filesystem.get_file_info(selector) if info.path.endswith(".parquet")]
    return sorted(found, key=lambda info: info.path)


def duckstream_epochs(
    source: str | LakeSource,
    sql: str,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    repeat: int = 1,
    output: Literal["torch", "arrow"] = "torch",
    ids_dir: str | Path | None = None,
    ids_column: str = "id",
    count: Literal["exact", "skip"] = "exact",
    shuffle_buffer: int | None = None,
) -> list[EpochResult]:
    """``repeat`` shuffled epochs through one ``DuckStreamLoader``, as a training run reads them.

    ``source`` is a local folder, an ``s3://`` glob (S3 settings from the environment, passed
    as the S3 keywords) or a DuckLake table (its catalog given the same keywords, for files on
    S3), opened read-only before the clock starts, as a training script opens its catalog once.
    The first (cold) epoch is timed from constructing the dataset: it pays for planning and
    starting the workers. Later epochs reuse the plan and, with workers, the persistent worker
    processes. ``output="torch"`` collates each batch to tensors and Python lists;
    ``output="arrow"`` yields the ``pyarrow.RecordBatch`` itself. With ``ids_dir``, each epoch's
    ``ids_column`` goes to :func:`ids_file` as the batches arrive, workers' batches interleaved
    as the loader yields them: written, not kept, so the memory figures do not grow with it.
    ``count`` is the dataset's: ``"skip"`` plans a filter without counting it.
    ``shuffle_buffer``: the dataset's, in rows (None: its default, 64 MiB of rows).
    """
    import numpy as np

    from duckstream.catalog import LakehouseCatalog
    from duckstream.storage import S3Settings
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    _import_pandas()
    s3 = S3Settings.resolve()
    keywords: dict[str, Any] = {
        "s3_endpoint": s3.endpoint_url,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
    }
    catalog = None
    if isinstance(source, LakeSource):
        # The S3 keywords reach the table's files on S3 (lake-s3); a local lake ignores them.
        catalog = LakehouseCatalog(source.catalog, source.data_path, **keywords, read_only=True)
        readable: Any = catalog.table(source.table)
    else:
        readable = source
    try:
        start_rss = rss_bytes(os.getpid())
        start_read = tree_read_chars(os.getpid())
        start = time.perf_counter()  # the first batch is timed from constructing the dataset
        dataset = DuckStreamDataset(
            readable,
            sql=sql,
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            output=output,
            count=count,
            shuffle_buffer=shuffle_buffer,
            **keywords,
        )
        loader = DuckStreamLoader(dataset, num_workers=workers, persistent_workers=workers > 0)
        results = []
        for epoch in range(max(1, repeat)):
            rows = batches = 0
            first = 0.0
            ids = None if ids_dir is None else ids_file(ids_dir, epoch).open("wb")
            try:
                for batch in loader:
                    rows += batch.num_rows if output == "arrow" else len(next(iter(batch.values())))
                    if batches == 0:
                        first = time.perf_counter() - start
                    batches += 1
                    if ids is not None:
                        column = batch.column(ids_column) if output == "arrow" else batch[ids_column]
                        ids.write(np.ascontiguousarray(column, dtype=np.int64).data)
                seconds = time.perf_counter() - start
            finally:
                if ids is not None:
                    ids.close()
            read = tree_read_chars(os.getpid())
            results.append(
                EpochResult(
                    rows=rows,
                    batches=batches,
                    seconds=seconds,
                    first_batch_seconds=first,
                    start_rss_bytes=start_rss,
                    read_bytes=read - start_read,
                )
            )
            start_read = tree_read_chars(os.getpid())
            start = time.perf_counter()
        return results
    finally:
        if catalog is not None:
            catalog.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the configuration, run its epochs, print the cold and warm figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.epoch", description=__doc__)
    parser.add_argument("--loader", choices=get_args(LoaderName), required=True)
    parser.add_argument("--source", help="folder of Parquet files, or s3://bucket/prefix")
    parser.add_argument("--columns", required=True, help="comma-separated, e.g. id,captions")
    parser.add_argument(
        "--sql", help="duckstream's query over `source` (default: SELECT <columns> FROM source)"
    )
    parser.add_argument(
        "--lake-catalog", help="read a DuckLake table instead: its catalog file or DSN (no password)"
    )
    parser.add_argument("--lake-data-path", help="the DuckLake catalog's data path")
    parser.add_argument("--lake-table", default="bench", help="the DuckLake table (default bench)")
    parser.add_argument(
        "--count", choices=("exact", "skip"), default="exact", help="duckstream*: count a filter, or skip"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (duckstream*)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shuffle-buffer", type=int, help="duckstream*: the shuffle buffer in rows (default: the dataset's)"
    )
    parser.add_argument(
        "--ids-dir",
        type=Path,
        help="duckstream*: write each epoch's ids (the id column, as received) to DIR/epoch-N.int64",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="epochs to run: the first is cold, the fastest later one warm"
    )
    args = parser.parse_args(argv)
    columns = args.columns.split(",")
    floor = args.loader in ("pyarrow", "pyarrow-python")
    if args.lake_catalog is None and args.source is None:
        parser.error("give --source or --lake-catalog")
    if floor and args.source is None:
        parser.error(f"--loader {args.loader} scans files: give --source")
    if args.lake_catalog is not None and args.lake_data_path is None:
        parser.error("--lake-catalog needs --lake-data-path")

    if floor:
        runs = [
            pyarrow_epoch(
                args.source, columns, batch_size=args.batch_size, python=args.loader == "pyarrow-python"
            )
            for _ in range(max(1, args.repeat))
        ]
    else:
        source: str | LakeSource = (
            LakeSource(catalog=args.lake_catalog, data_path=args.lake_data_path, table=args.lake_table)
            if args.lake_catalog is not None
            else _duckstream_source(args.source)
        )
        runs = duckstream_epochs(
            source,
            args.sql or f"SELECT {', '.join(columns)} FROM source",
            batch_size=args.batch_size,
            workers=args.workers,
            seed=args.seed,
            repeat=args.repeat,
            output="arrow" if args.loader == "duckstream-arrow" else "torch",
            ids_dir=args.ids_dir,
            count=args.count,
            shuffle_buffer=args.shuffle_buffer,
        )
    # The first epoch is cold (planning, worker start, the page cache); a training run spends
    # most of its time in the later, warm ones. Timings on a shared machine wander between
    # runs, so the warm figure is the fastest of the later epochs.
    cold = runs[0]
    warm = min(runs[1:] or runs, key=lambda run: run.seconds)
    result = {
        **asdict(cold),
        "warm_seconds": warm.seconds,
        "warm_rows": warm.rows,
        "warm_read_bytes": warm.read_bytes,
    }
    print(json.dumps(result), flush=True)
    return 0


def _duckstream_source(source: str) -> str:
    """A folder as it is, ``s3://bucket/prefix`` as the glob of its Parquet objects."""
    if source.startswith("s3://"):
        return source.rstrip("/") + "/*.parquet"
    return source


if __name__ == "__main__":
    sys.exit(main())
