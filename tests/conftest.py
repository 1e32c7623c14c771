"""Shared fixtures: tiny Parquet datasets, and the real SeaweedFS S3 and PostgreSQL servers.

The servers start once per test session, only when a test asks for them, and are removed at
the end. They are never skipped: a missing binary fails the test with how to install it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.core.reader import ShardReader
from duckstream.core.shards import Shard
from duckstream.core.world import World
from duckstream.errors import ServiceError
from duckstream.services import PostgresCluster, PostgresService, S3Service, SeaweedFS


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Service]:
    server = SeaweedFS()
    try:
        service = server.start()
    except ServiceError as exc:
        pytest.fail(f"could not start the SeaweedFS S3 server the tests need: {exc}")
    yield service
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresService]:
    cluster = PostgresCluster()
    try:
        service = cluster.start()
    except ServiceError as exc:
        pytest.fail(f"could not start the PostgreSQL cluster the tests need: {exc}")
    yield service
    cluster.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Service) -> Iterator[str]:
    """A new, empty bucket for one test (names cannot contain '_')."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_server.boto3_client()
    client.create_bucket(Bucket=name)
    yield name
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


@pytest.fixture
def pg_database(postgres_server: PostgresService) -> str:
    """A new, empty PostgreSQL database for one test; returns its name."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    return name


def numbers_table(start: int, stop: int) -> pa.Table:
    """Rows ``start..stop-1`` with an id, a float, a label and a fixed-size vector."""
    ids = list(range(start, stop))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "value": pa.array([i * 0.5 for i in ids], pa.float64()),
            "label": pa.array([f"even-{i}" if i % 2 == 0 else f"odd-{i}" for i in ids], pa.string()),
            "vector": pa.array([[i, i + 1, i + 2] for i in ids], pa.list_(pa.float32(), 3)),
        }
    )


def write_wide_file(path: Path, start: int, rows: int) -> None:
    """Rows ``start..start+rows-1`` with a 20 KB blob each, in one row group: a read of it takes
    several read batches of about 4 MiB, more than a read-ahead queue of 2 holds."""
    blobs = pa.array([bytes(20_000)] * rows, pa.binary())
    table = pa.table({"id": pa.array(range(start, start + rows), pa.int64()), "blob": blobs})
    pq.write_table(table, path, use_dictionary=False)  # plain pages: 20 KB a row, uncompressed


def write_one_group_files(folder: Path, files: int, rows: int, width: int = 8_192) -> None:
    """``files`` Parquet files of one row group of ``rows`` rows each (ids counting up from 0),
    a ``width``-byte blob a row: files a shuffled read rotates (reads from a row group's
    middle) through a buffer far smaller than a file."""
    blobs = pa.array([bytes([i % 256]) * width for i in range(rows)], pa.binary())
    for index in range(files):
        table = pa.table({"id": pa.array(range(index * rows, (index + 1) * rows), pa.int64()), "blob": blobs})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=rows)


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    """Three Parquet files of 100 rows each (ids 0..299), row groups of 25, in ``tmp_path/data``."""
    directory = tmp_path / "data"
    directory.mkdir()
    for index in range(3):
        pq.write_table(
            numbers_table(index * 100, (index + 1) * 100),
            directory / f"part-{index}.parquet",
            row_group_size=25,
        )
    return directory


class ShardReads:
    """The rows (``lo, hi`` of a shard) of every read a ``ShardReader`` starts, in order, in
    this process and in the DataLoader workers it forks (each appends a line to one file)."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self.clear()

    def record(self, lo: int, hi: int) -> None:
        with self._log.open("a") as log:  # one short append: whole lines from any process
            log.write(f"{lo} {hi}\n")

    def clear(self) -> None:
        self._log.write_text("")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for line in self._log.read_text().splitlines():
            lo, hi = line.split()
            yield int(lo), int(hi)

    def __len__(self) -> int:
        return len(self._log.read_text().splitlines())


@pytest.fixture
def shard_reads(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> ShardReads:
    """Every read a ``ShardReader`` starts (see :class:`ShardReads`): a read that starts
    inside a row group decodes the rows before it again."""
    # Beside, not inside, the test's tmp_path: a folder read as a source lists its files.
    reads = ShardReads(tmp_path_factory.mktemp("shard-reads") / "reads.log")
    real = ShardReader.read

    def counted(self: ShardReader, shard: Shard, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
        reads.record(lo, hi)
        return real(self, shard, lo, hi)

    monkeypatch.setattr(ShardReader, "read", counted)
    return reads


def check_heads_kept(
    shard_reads: ShardReads,
    batches_of: Callable[[World], Iterable[pa.RecordBatch]],
    rows: int,
    files: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files of one rotated row group each (ids ``0..rows``), each read ``batches_of`` a world
    (shuffled through a buffer far smaller than a file): in one process each row group is read
    once an epoch, from its first row; two workers' worlds keep heads too (fewer reads than with
    no room to keep them); with no room, each head is read again. Every id once each time."""

    def reads_of_an_epoch(*worlds: World) -> int:
        shard_reads.clear()
        ids = [i for world in worlds for batch in batches_of(world) for i in batch.column("id").to_pylist()]
        assert sorted(ids) == list(range(rows))
        return len(shard_reads)

    workers = (World(num_workers=2, worker=0), World(num_workers=2, worker=1))
    assert reads_of_an_epoch(World()) == files
    assert {lo for lo, _ in shard_reads} == {0}
    shared = reads_of_an_epoch(*workers)
    monkeypatch.setattr("duckstream.core.pipeline.SHUFFLE_BUFFER_BYTES", 1)
    assert reads_of_an_epoch(World()) == 2 * files
    assert reads_of_an_epoch(*workers) > shared


def upload_dir(client: Any, bucket: str, prefix: str, directory: Path) -> list[str]:
    """Upload every file under ``directory`` to ``s3://bucket/prefix/``; return the URIs."""
    uris = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(directory).as_posix()}"
            client.upload_file(str(path), bucket, key)
            uris.append(f"s3://{bucket}/{key}")
    return uris
