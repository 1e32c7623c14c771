"""Ingest: a Hugging Face dataset streamed into Parquet files on S3 or a local folder.

Resumable and idempotent through a manifest written after each whole file: file ``k`` always
holds rows ``k * rows_per_file`` onwards, so a rerun after a crash skips the files the manifest
lists and writes the rest, and a rerun after success writes nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from duckstream._optional import require
from duckstream.core.lake import quote_name
from duckstream.destination import Destination, LocalDestination, S3Destination
from duckstream.engine import sql_literal
from duckstream.errors import ConfigurationError, SyncError
from duckstream.redact import get_logger, redact
from duckstream.storage import S3Settings

if TYPE_CHECKING:
    from duckstream.catalog import LakehouseCatalog

__all__ = ["SyncResult", "sync_from_hf"]

log = get_logger(__name__)

MANIFEST_VERSION = 1
DEFAULT_FILE_BYTES = 256 * 1024 * 1024
DEFAULT_ROW_GROUP_ROWS = 8_192
# Row groups of about this much data, at most DEFAULT_ROW_GROUP_ROWS rows: a shuffled read
# enters a file only where its row groups start (8,192 rows of 10 KiB images were 80 MB, read
# front to back over the epoch), and one row group is what a reader holds at once.
ROW_GROUP_BYTES = 8 * 1024 * 1024
_MIN_ROW_GROUP_ROWS = 16
_SAMPLE_ROWS = 256


class SyncResult(BaseModel):
    """What a sync did: files it wrote now, and the rows and bytes of the whole split."""

    model_config = ConfigDict(frozen=True)

    files_uploaded: int
    rows_total: int
    bytes_total: int
    bucket: str | None
    prefix: str | None
    dest: str | None = None
    split: str
    files: list[str]


def sync_from_hf(
    dataset_id: str | os.PathLike[str],
    split: str,
    bucket: str | None = None,
    prefix: str | None = None,
    max_samples: int | None = None,
    s3_endpoint_url: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    *,
    dest: str | os.PathLike[str] | None = None,
    target_file_bytes: int = DEFAULT_FILE_BYTES,
    row_group_rows: int | None = None,
    rows_per_file: int | None = None,
    progress: bool | None = None,
    s3_region: str | None = None,
    catalog: LakehouseCatalog | None = None,
    table: str | None = None,
    key: str | None = None,
) -> SyncResult:
    """Stream split ``split`` of ``dataset_id`` into ``<prefix>/<split>-NNNNNN.parquet``.

    ``dataset_id`` is a Hub id (loaded with ``datasets.load_dataset(..., streaming=True)``, so a
    dataset larger than memory works), a local folder of data files, or a dataset saved with
    ``save_to_disk``. The destination is ``s3://bucket/prefix`` or the local folder ``dest``.
    ``max_samples`` keeps the first N rows. Files hold about ``target_file_bytes`` (or exactly
    ``rows_per_file`` rows) in row groups of ``row_group_rows`` (default: about 8 MiB of rows,
    from the split's first rows, at most 8,192), with the schema the dataset's features declare.

    With ``catalog`` and ``table`` the synced rows are then appended to that DuckLake table
    (created on first use), skipping rows whose ``key`` it already holds, so reruns and
    overlapping syncs add each row once.
    """
    if (table is None) != (catalog is None) or (table is not None and key is None):
        raise ConfigurationError("appending to a lake table needs catalog=, table= and key= together")
    if (bucket is None) == (dest is None):
        raise ConfigurationError("give exactly one destination: bucket= (with prefix=) or dest=")
    if max_samples is not None and max_samples < 0:
        raise ConfigurationError(f"max_samples must be non-negative, found {max_samples}")
    if (
        (row_group_rows is not None and row_group_rows < 1)
        or (rows_per_file is not None and rows_per_file < 1)
        or target_file_bytes < 1
    ):
        raise ConfigurationError("row_group_rows, rows_per_file and target_file_bytes must be positive")
    destination: Destination
    if bucket is not None:
        s3 = S3Settings.resolve(s3_endpoint_url, s3_access_key, s3_secret_key, region=s3_region)
        destination = S3Destination(bucket, prefix or "", s3)
    else:
        assert dest is not None
        destination = LocalDestination(dest)
    destination.check_writable()

    manifest_name = f"_duckstream_manifest-{split}.json"
    identity = {"dataset_id": os.fspath(dataset_id), "split": split, "max_samples": max_samples}
    manifest = _read_manifest(destination, manifest_name, identity)
    uploaded = 0
    if not manifest["complete"]:
        uploaded = _copy(
            destination,
            manifest,
            manifest_name,
            dataset_id,
            split,
            max_samples,
            rows_per_file=rows_per_file,
            target_file_bytes=target_file_bytes,
            row_group_rows=row_group_rows,
            progress=progress,
        )
    result = _result(uploaded, manifest, destination, bucket, prefix, dest, split)
    if catalog is not None and table is not None and key is not None:
        _append(catalog, table, key, result.files)
    return result


def _copy(
    destination: Destination,
    manifest: dict[str, Any],
    manifest_name: str,
    dataset_id: str | os.PathLike[str],
    split: str,
    max_samples: int | None,
    *,
    rows_per_file: int | None,
    target_file_bytes: int,
    row_group_rows: int | None,
    progress: bool | None,
) -> int:
    """Write the files the manifest does not list yet; return how many."""
    from tqdm.auto import tqdm

    stream, schema = _open(dataset_id, split, max_samples)
    # A rerun keeps the row groups the first run sized.
    row_group_rows = row_group_rows or manifest.get("row_group_rows") or _sized_groups(stream, schema)
    manifest["row_group_rows"] = row_group_rows
    rows_done = sum(f["rows"] for f in manifest["files"])
    if rows_done:
        stream = stream.skip(rows_done)
    per_file: int | None = manifest.get("rows_per_file") or rows_per_file
    bar = tqdm(
        total=max_samples if max_samples is not None else _split_rows(stream),
        initial=rows_done,
        unit="rows",
        desc=f"sync {split}",
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    uploaded = 0
    held: list[pa.Table] = []
    held_rows = 0
    with tempfile.TemporaryDirectory(prefix="duckstream-sync-") as scratch, bar:

        def write(rows: pa.Table, size: int) -> None:
            _write(destination, manifest, manifest_name, rows, split, row_group_rows, scratch, size)

        for batch in _arrow_batches(stream, schema, row_group_rows):
            if per_file is None:
                per_file = _rows_per_file(batch, target_file_bytes, row_group_rows)
            held.append(batch)
            held_rows += batch.num_rows
            bar.update(batch.num_rows)
            while held_rows >= per_file:
                whole = pa.concat_tables(held)
                write(whole.slice(0, per_file), per_file)
                uploaded += 1
                rest = whole.slice(per_file)
                held, held_rows = [rest], rest.num_rows
        if held_rows:
            write(pa.concat_tables(held), per_file or held_rows)
            uploaded += 1
    manifest["complete"] = True
    manifest["rows_per_file"] = per_file
    destination.write_text(manifest_name, json.dumps(manifest, indent=1))
    return uploaded


# Where each appended row sits in the synced files: its file's place in the list, its row in it.
_FILE, _ROW = "duckstream_file_index", "file_row_number"


def _append(catalog: LakehouseCatalog, table: str, key: str, files: list[str]) -> None:
    """Add the rows of ``files`` to lake table ``table`` unless their ``key`` is there already."""
    # A connection of its own: threads that share the catalog must not read each other's results.
    # It is not the catalog's `USE`d one, so names carry the catalog's alias.
    with catalog.con.cursor() as con:
        name, column = f"{catalog.alias}.{quote_name(table)}", quote_name(key)
        listed = f"[{', '.join(sql_literal(f) for f in files)}]"
        scan = f"read_parquet({listed})"
        # Named apart from any column of the data (COCO rows have a `filename`).
        ordered = f"(SELECT *, file_index AS {_FILE} FROM read_parquet({listed}, file_row_number = true))"
        catalog.write("create the table", f"CREATE TABLE IF NOT EXISTS {name} AS FROM {scan} LIMIT 0", on=con)
        # Only one append reads the table and inserts at a time: two that overlapped would both
        # add the keys neither saw.
        with catalog.exclusive_append(table):
            catalog.write(
                "append the rows",
                # BY NAME: a table that gained columns since (schema evolution) still takes the rows.
                # ORDER BY the rows' place in the files: the table keeps the dataset's order.
                f"INSERT INTO {name} BY NAME SELECT s.* EXCLUDE ({_FILE}, {_ROW}) FROM {ordered} s "
                f"ANTI JOIN {name} t ON t.{column} = s.{column} ORDER BY s.{_FILE}, s.{_ROW}",
                on=con,
            )


def _read_manifest(destination: Destination, name: str, identity: dict[str, Any]) -> dict[str, Any]:
    text = destination.read_text(name)
    if text is None:
        return {
            "version": MANIFEST_VERSION,
            **identity,
            "files": [],
            "complete": False,
            "rows_per_file": None,
        }
    manifest: dict[str, Any] = json.loads(text)
    found = {k: manifest.get(k) for k in identity}
    if found != identity:
        raise SyncError(
            f"{destination.uri(name)} records a sync of {found}, not {identity}: use another prefix "
            "or folder, or remove the old files"
        )
    return manifest


def _open(dataset_id: str | os.PathLike[str], split: str, max_samples: int | None) -> tuple[Any, pa.Schema]:
    """The split as a streaming ``datasets.IterableDataset``, and its declared Arrow schema."""
    datasets = require("datasets")
    source = os.fspath(dataset_id)
    try:
        if Path(source).is_dir() and any(
            (Path(source) / n).exists() for n in ("dataset_info.json", "dataset_dict.json")
        ):
            saved = datasets.load_from_disk(source)
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise SyncError(f"{source} has no split {split!r}; its splits are {sorted(saved)}")
                saved = saved[split]
            stream = saved.to_iterable_dataset()
        else:
            stream = datasets.load_dataset(source, split=split, streaming=True)
    except SyncError:
        raise
    except ValueError as exc:
        raise SyncError(f"cannot load split {split!r} of {source}: {redact(str(exc))}") from None
    except Exception as exc:  # datasets raises many kinds: missing repo, network, bad files
        raise SyncError(f"cannot load dataset {source!r}: {type(exc).__name__}: {redact(str(exc))}") from None
    if max_samples is not None:
        stream = stream.take(max_samples)
    features = stream.features
    schema = features.arrow_schema if features is not None else None
    return stream, schema


def _split_rows(stream: Any) -> int | None:
    info = getattr(stream, "info", None)
    splits = getattr(info, "splits", None) or {}
    split = getattr(stream, "split", None)
    entry = splits.get(str(split)) if split is not None else None
    rows = getattr(entry, "num_examples", None)
    return int(rows) if rows else None


def _arrow_batches(stream: Any, schema: pa.Schema | None, rows: int) -> Iterator[pa.Table]:
    for table in stream.with_format("arrow").iter(batch_size=rows):
        yield table if schema is None else table.cast(schema)


def _sized_groups(stream: Any, schema: pa.Schema | None) -> int:
    """Rows a row group holds: about ``ROW_GROUP_BYTES`` of the split's first rows."""
    sample = next(_arrow_batches(stream.take(_SAMPLE_ROWS), schema, _SAMPLE_ROWS), None)
    if sample is None or not sample.num_rows:
        return DEFAULT_ROW_GROUP_ROWS
    row_bytes = max(1, int(sample.nbytes) // int(sample.num_rows))
    return max(_MIN_ROW_GROUP_ROWS, min(DEFAULT_ROW_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))


def _rows_per_file(sample: pa.Table, target_bytes: int, row_group_rows: int) -> int:
    row_bytes = max(1, int(sample.nbytes) // max(1, int(sample.num_rows)))
    groups = max(1, target_bytes // (row_bytes * row_group_rows))
    return groups * row_group_rows


def _write(
    destination: Destination,
    manifest: dict[str, Any],
    manifest_name: str,
    table: pa.Table,
    split: str,
    row_group_rows: int,
    scratch: str,
    per_file: int,
) -> None:
    name = f"{split}-{len(manifest['files']):06d}.parquet"
    local = Path(scratch) / name
    pq.write_table(table, local, row_group_size=row_group_rows)
    size = local.stat().st_size
    destination.put_file(name, local)
    local.unlink()
    # The manifest names a file only after the file is whole at its destination.
    manifest["files"].append({"name": name, "rows": table.num_rows, "bytes": size})
    manifest["rows_per_file"] = per_file
    destination.write_text(manifest_name, json.dumps(manifest, indent=1))
    log.info("wrote %s (%d rows)", destination.uri(name), table.num_rows)


def _result(
    uploaded: int,
    manifest: dict[str, Any],
    destination: Destination,
    bucket: str | None,
    prefix: str | None,
    dest: str | os.PathLike[str] | None,
    split: str,
) -> SyncResult:
    files = manifest["files"]
    return SyncResult(
        files_uploaded=uploaded,
        rows_total=sum(f["rows"] for f in files),
        bytes_total=sum(f["bytes"] for f in files),
        bucket=bucket,
        prefix=prefix,
        dest=None if dest is None else str(Path(dest).expanduser().resolve()),
        split=split,
        files=[destination.uri(f["name"]) for f in files],
    )
