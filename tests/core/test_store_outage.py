"""An object store that stops answering mid-epoch: reads wait it out and hand on every row once,
or, past the retry deadline, fail with one documented error naming the object. The store is a
real SeaweedFS, stopped and started again on the same port and data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from duckstream.adapters.torch import DuckStreamDataset, DuckStreamLoader
from duckstream.catalog import LakehouseCatalog
from duckstream.core.planning import prepare
from duckstream.core.retry import Backoff, transient
from duckstream.errors import DuckstreamError, StoreUnavailableError
from duckstream.services import PostgresService, S3Service, SeaweedFS
from duckstream.storage import ENV_RETRY_SECONDS
from duckstream.stream import as_iterable_dataset, stream_batches
from tests.conftest import upload_dir, write_wide_file

FILES = 16
ROWS = 60


@pytest.fixture
def own_store(tmp_path: Path) -> Iterator[tuple[SeaweedFS, S3Service, str]]:
    """A SeaweedFS of this test's own (it is stopped mid-test), holding FILES files."""
    server = SeaweedFS(data_dir=tmp_path / "store")  # restarts on the ports of its first start
    service = server.start()
    try:
        client = service.boto3_client()
        client.create_bucket(Bucket="blink")
        local = tmp_path / "files"
        local.mkdir()
        for index in range(FILES):
            write_wide_file(local / f"part-{index:03d}.parquet", index * ROWS, ROWS)
        upload_dir(client, "blink", "data", local)
        yield server, service, "s3://blink/data"
    finally:
        server.stop()


def batch_ids(batch: Any) -> list[int]:
    """The ids of an Arrow batch, a batch of tensors or one row."""
    if isinstance(batch, dict):
        value = batch["id"]
        return [int(value)] if isinstance(value, int) else [int(i) for i in value.tolist()]
    return [int(i) for i in batch.column("id").to_pylist()]


def read_through_an_outage(server: SeaweedFS, stream: Iterator[Any]) -> list[int]:
    """The ids of ``stream``, the store stopped after the first item and back 3 s later."""
    ids = batch_ids(next(stream))
    server.stop()  # while the read-ahead lanes want the next files
    restart = threading.Timer(3.0, server.start)
    restart.start()
    try:
        ids += [i for batch in stream for i in batch_ids(batch)]
    finally:
        restart.join()
    return ids


def started_after_an_outage(server: SeaweedFS, start: Callable[[], Iterable[Any]]) -> list[int]:
    """The ids of what ``start()`` streams, called while the store is down for 3 s."""
    server.stop()
    restart = threading.Timer(3.0, server.start)
    restart.start()
    try:
        return [i for batch in start() for i in batch_ids(batch)]
    finally:
        restart.join()


def blink_lake(service: S3Service, postgres: PostgresService, database: str) -> LakehouseCatalog:
    """A lake on the test's own store (its files under s3://blink/lake), cataloged in PostgreSQL."""
    return LakehouseCatalog(
        postgres.dsn(database), "s3://blink/lake", service.endpoint, service.access_key, service.secret_key
    )


def keys(s3: S3Service) -> dict[str, Any]:
    return {"s3_endpoint": s3.endpoint, "s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}


@pytest.mark.slow
@pytest.mark.parametrize("sql", [None, "SELECT id, octet_length(blob) AS size, blob FROM source"])
def test_a_store_that_blinks_mid_epoch_is_waited_out_with_every_row_once(
    own_store: tuple[SeaweedFS, S3Service, str], sql: str | None
) -> None:
    server, service, source = own_store
    stream = stream_batches(source, sql, batch_size=20, threads=1, **keys(service))
    ids = read_through_an_outage(server, stream)
    assert ids == list(range(FILES * ROWS))


@pytest.mark.slow
def test_past_the_deadline_one_documented_error_names_the_object(
    own_store: tuple[SeaweedFS, S3Service, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, service, source = own_store
    monkeypatch.setenv(ENV_RETRY_SECONDS, "600")  # the keyword wins over the environment
    stream = stream_batches(source, batch_size=20, threads=1, s3_retry_seconds=2, **keys(service))
    next(stream)
    server.stop()
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailableError, match=r"s3://blink/data/part-\d+\.parquet .*retry deadline of 2 s"
    ):
        for _ in stream:
            pass
    assert time.monotonic() - started < 30
    assert issubclass(StoreUnavailableError, DuckstreamError)
    # Planning, with the environment's deadline: the source as the user named it.
    monkeypatch.setenv(ENV_RETRY_SECONDS, "1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"s3://blink/data/\*\*/\*\.parquet .*deadline of 1 s"):
        stream_batches(source, "SELECT id FROM source WHERE id > 3", **keys(service))
    assert time.monotonic() - started < 30


def test_backoff_doubles_and_gives_up_at_the_deadline() -> None:
    slept: list[float] = []
    backoff = Backoff(1.0, sleep=slept.append)
    error = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7")
    assert transient(error)
    assert transient(OSError("AWS Error UNKNOWN (HTTP status 500) during HeadObject operation"))
    assert not transient(OSError("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation"))
    assert not transient(OSError("AWS Error ACCESS_DENIED during HeadObject operation"))
    # DuckDB's HTTP client, and not a catalog server that refuses connections.
    assert transient(duckdb.IOException("IO Error: Could not connect to server error for HTTP HEAD"))
    assert transient(duckdb.HTTPException("HTTP Error: HTTP GET error on 'http://h/b/k' (HTTP 503)"))
    assert not transient(duckdb.HTTPException("HTTP Error: HTTP GET error on 'http://h/b/k' (HTTP 404)"))
    assert not transient(
        duckdb.IOException('connection to server at "127.0.0.1", port 5 failed: Connection refused')
    )
    for _ in range(4):
        backoff.wait(error, "s3://b/k")
    assert slept == [0.1, 0.2, 0.4, 0.8]
    backoff.progressed()  # progress gives the whole deadline back
    backoff.wait(error, "s3://b/k")
    assert slept[-1] == 0.1
    stuck = Backoff(0.0, sleep=slept.append)
    with pytest.raises(StoreUnavailableError, match="s3://b/k"):
        stuck.wait(error, "s3://b/k")


@pytest.mark.slow
def test_a_lake_table_with_deletes_on_a_blinking_store_is_waited_out(
    own_store: tuple[SeaweedFS, S3Service, str], postgres_server: PostgresService, pg_database: str
) -> None:
    server, service, source = own_store
    with blink_lake(service, postgres_server, pg_database) as catalog:
        catalog.con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{source}/part-000.parquet')")
        for index in range(1, FILES):  # a data file each, and a delete file each
            catalog.con.execute(
                f"INSERT INTO t SELECT * FROM read_parquet('{source}/part-{index:03d}.parquet')"
            )
        # Enough deletes a file to be written as delete files (a few are kept in the catalog).
        catalog.con.execute("DELETE FROM t WHERE id % 3 = 0")
        table = catalog.table("t")
        plan = prepare(table, "SELECT id FROM source", s3=table.s3)
        assert plan.lake is not None
        assert all(plan.lake.direct)  # pyarrow reads every file, and its delete file
        assert all(plan.lake.deletes)
        stream = stream_batches(table, "SELECT id FROM source", batch_size=20, threads=1, **keys(service))
        ids = read_through_an_outage(server, stream)
    assert ids == [i for i in range(FILES * ROWS) if i % 3]


@pytest.mark.slow
def test_planning_waits_out_a_store_that_is_down_when_the_stream_starts(
    own_store: tuple[SeaweedFS, S3Service, str],
) -> None:
    server, service, source = own_store
    # Listing, footers and counting the filter's rows all wait.
    sql = "SELECT id, blob FROM source WHERE id % 7 <> 3"
    ids = started_after_an_outage(
        server, lambda: stream_batches(source, sql, batch_size=50, threads=1, **keys(service))
    )
    assert ids == [i for i in range(FILES * ROWS) if i % 7 != 3]


@pytest.mark.slow
def test_workers_and_the_hugging_face_adapter_wait_out_the_store(
    own_store: tuple[SeaweedFS, S3Service, str],
) -> None:
    server, service, source = own_store
    dataset = DuckStreamDataset(source, "SELECT id FROM source", batch_size=20, shuffle=True, **keys(service))
    ids = read_through_an_outage(server, iter(DuckStreamLoader(dataset, num_workers=2)))
    assert sorted(ids) == list(range(FILES * ROWS))
    rows = as_iterable_dataset(source, "SELECT id FROM source", **keys(service))
    ids = read_through_an_outage(server, iter(rows))
    assert ids == list(range(FILES * ROWS))


@pytest.mark.slow
def test_a_lake_file_read_through_the_catalog_scan_waits_out_the_store(
    own_store: tuple[SeaweedFS, S3Service, str], postgres_server: PostgresService, pg_database: str
) -> None:
    server, service, source = own_store
    with blink_lake(service, postgres_server, pg_database) as catalog:
        for index in range(4):
            catalog.con.execute(
                f"{'CREATE TABLE t AS' if index == 0 else 'INSERT INTO t'} "
                f"SELECT * FROM read_parquet('{source}/part-{index:03d}.parquet')"
            )
        # Files written before a column was added are read through DuckDB, which fills it in.
        catalog.con.execute("ALTER TABLE t ADD COLUMN score DOUBLE DEFAULT 1.5")
        table = catalog.table("t")
        plan = prepare(table, "SELECT id, score FROM source", s3=table.s3)
        assert plan.lake is not None
        assert not any(plan.lake.direct)
        stream = stream_batches(
            table, "SELECT id, score FROM source", batch_size=20, threads=1, **keys(service)
        )
        ids = read_through_an_outage(server, stream)
    assert ids == list(range(4 * ROWS))
