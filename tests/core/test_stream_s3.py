"""The stream over s3:// against the real SeaweedFS server."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.core import remote_files
from duckstream.core.planning import prepare
from duckstream.core.world import World
from duckstream.errors import S3AccessError, SourceError
from duckstream.services import S3Service
from duckstream.storage import S3Settings, pyarrow_s3
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, stream_batches
from tests.adapters.resume_check import ids_in
from tests.conftest import (
    ShardReads,
    check_heads_kept,
    numbers_table,
    upload_dir,
    write_one_group_files,
    write_wide_file,
)

pytestmark = pytest.mark.services

ROWS = 1_200


@pytest.fixture
def s3_source(s3_server: S3Service, s3_bucket: str, tmp_path: Path) -> str:
    for index in range(3):
        pq.write_table(
            numbers_table(index * 400, (index + 1) * 400),
            tmp_path / f"part-{index}.parquet",
            row_group_size=100,
        )
    upload_dir(s3_server.boto3_client(), s3_bucket, "data", tmp_path)
    return f"s3://{s3_bucket}/data"


def keys(s3: S3Service) -> dict[str, Any]:
    return {"s3_endpoint": s3.endpoint, "s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}


@pytest.mark.parametrize(
    "sql",
    [
        None,
        "SELECT id, label FROM source",
        "SELECT id FROM source WHERE id % 2 = 0",
        "SELECT id, value * 2 AS twice, label FROM source",  # read ahead by stream, SQL by window
    ],
)
def test_all_slots_together_read_every_row_once(
    s3_server: S3Service, s3_source: str, sql: str | None
) -> None:
    seen: Counter[int] = Counter()
    per_rank = []
    for rank in range(2):
        rows = 0
        for worker in range(2):
            for batch in stream_batches(
                s3_source, sql, world=World(rank, 2, worker, 2), shuffle=True, seed=4, **keys(s3_server)
            ):
                seen.update(batch.column("id").to_pylist())
                rows += batch.num_rows
                if "twice" in batch.schema.names:
                    assert batch.column("twice").to_pylist() == batch.column("id").to_pylist()
        per_rank.append(rows)
    expected = range(0, ROWS, 2) if sql and "WHERE" in sql else range(ROWS)
    assert seen == Counter(expected)
    assert per_rank[0] == per_rank[1]


def test_a_filter_planned_without_counting_reads_every_passing_row_once_on_s3(
    s3_server: S3Service, s3_source: str
) -> None:
    seen: Counter[int] = Counter()
    items = []
    for rank in range(2):
        batches: list[pa.RecordBatch] = []
        for worker in range(2):
            batches += stream_batches(
                s3_source,
                "SELECT id, value * 2 AS twice FROM source WHERE id % 3 = 0",
                world=World(rank, 2, worker, 2),
                shuffle=True,
                seed=4,
                batch_size=32,
                count="skip",
                **keys(s3_server),
            )
        items.append(len(batches))
        for batch in batches:
            seen.update(batch.column("id").to_pylist())
            assert batch.column("twice").to_pylist() == batch.column("id").to_pylist()
    assert seen == Counter(range(0, ROWS, 3))
    assert items[0] == items[1]  # batches of source rows: the ranks in lockstep


def test_globs_and_uri_spelled_sql_work_on_s3(s3_server: S3Service, s3_source: str) -> None:
    glob = f"{s3_source}/*.parquet"
    ids = [
        i
        for b in stream_batches(
            glob, f"SELECT id FROM read_parquet('{glob}') WHERE id < 5", **keys(s3_server)
        )
        for i in b.column("id").to_pylist()
    ]
    assert ids == [0, 1, 2, 3, 4]


def test_global_query_on_s3(s3_server: S3Service, s3_source: str, tmp_path: Path) -> None:
    batches = stream_batches(
        s3_source, "SELECT max(id) AS top FROM source", cache_dir=tmp_path, **keys(s3_server)
    )
    assert [b.to_pylist() for b in batches] == [[{"top": ROWS - 1}]]


def test_loader_with_workers_resumes_on_s3(s3_server: S3Service, s3_source: str) -> None:
    def make() -> DuckStreamDataset:
        return DuckStreamDataset(s3_source, batch_size=50, shuffle=True, seed=2, **keys(s3_server))

    loader = DuckStreamLoader(make(), num_workers=2)
    iterator = iter(loader)
    head = [i for _ in range(5) for i in ids_in(next(iterator))]
    state = loader.state_dict()
    del iterator
    resumed = DuckStreamLoader(make(), num_workers=2)
    resumed.load_state_dict(state)
    tail = [i for item in resumed for i in ids_in(item)]
    assert sorted(head + tail) == list(range(ROWS))


def test_wrong_keys_fail_in_the_main_process_without_secrets(s3_server: S3Service, s3_source: str) -> None:
    with pytest.raises(S3AccessError, match="refused the request") as raised:
        stream_batches(
            s3_source,
            s3_endpoint=s3_server.endpoint,
            s3_access_key="nobody-key",
            s3_secret_key="definitely-wrong-secret",
        )
    assert "definitely-wrong-secret" not in str(raised.value)
    assert "nobody-key" not in str(raised.value)


def test_missing_prefix_is_named(s3_server: S3Service, s3_bucket: str) -> None:
    with pytest.raises(SourceError, match=f"s3://{s3_bucket}/nothing"):
        stream_batches(f"s3://{s3_bucket}/nothing", **keys(s3_server))


def test_one_thread_still_reads_ahead_from_an_object_store(
    s3_server: S3Service, s3_bucket: str, tmp_path: Path
) -> None:
    for index in range(2):  # each file takes more read batches than the read-ahead queue holds
        write_wide_file(tmp_path / f"part-{index}.parquet", index * 600, 600)
    upload_dir(s3_server.boto3_client(), s3_bucket, "many", tmp_path)

    def read_ahead_threads() -> int:
        return sum(t.name == "duckstream-read-ahead" for t in threading.enumerate())

    stream = stream_batches(
        f"s3://{s3_bucket}/many", batch_size=10, shuffle_buffer=64, threads=1, **keys(s3_server)
    )
    ids = next(stream).column("id").to_pylist()
    # One lane a file (up to 4): their waits on the store overlap each other and the consumer.
    assert read_ahead_threads() == 2
    ids += [i for batch in stream for i in batch.column("id").to_pylist()]
    assert ids == list(range(1_200))
    assert read_ahead_threads() == 0


def _opened_anew(path: str, settings: S3Settings, parent: int, out: Any) -> None:
    out.put(id(remote_files.open_remote(path, pyarrow_s3(settings))) != parent)


def test_remote_files_open_once_per_process_with_the_footer_planning_read(
    s3_server: S3Service, s3_bucket: str, tmp_path: Path
) -> None:
    write_wide_file(tmp_path / "part-0.parquet", 0, 50)
    upload_dir(s3_server.boto3_client(), s3_bucket, "once", tmp_path)
    path = f"s3://{s3_bucket}/once/part-0.parquet"
    settings = s3_server.settings()
    prepare(path, None, s3=settings)
    assert remote_files.footer(path) is not None  # planning's footer, kept for the readers
    handle = remote_files.open_remote(path, pyarrow_s3(settings))
    assert remote_files.open_remote(path, pyarrow_s3(settings)) is handle
    # A forked worker must not use its parent's S3 client: it opens its own.
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_opened_anew, args=(path, settings, id(handle), out))
    child.start()
    child.join(timeout=60)
    assert out.get(timeout=10) is True
    assert [r["id"] for b in stream_batches(path, **keys(s3_server)) for r in b.to_pylist()] == list(
        range(50)
    )


def test_kept_and_checked_rows_are_remembered_for_objects_too(
    s3_server: S3Service, s3_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objects are read once each epoch like files: a second pass over the same plan runs no
    # filter in DuckDB and checks no decoded row again, and gives the same rows.
    from duckstream.core import batch_sql, checked_rows, kept_rows, reader

    kept_rows.forget()
    checked_rows.forget()
    runs: list[int] = []
    checks: list[int] = []
    run, check = batch_sql.BatchSQL._duckdb, reader._check_decoded

    def counted_run(self: batch_sql.BatchSQL, batch: pa.RecordBatch) -> pa.RecordBatch:
        runs.append(batch.num_rows)
        return run(self, batch)

    def counted_check(batch: pa.RecordBatch) -> None:
        checks.append(batch.num_rows)
        check(batch)

    monkeypatch.setattr(batch_sql.BatchSQL, "_duckdb", counted_run)
    monkeypatch.setattr(reader, "_check_decoded", counted_check)
    sql = "SELECT id, label FROM source WHERE id % 3 = 1"

    def epoch() -> list[int]:
        batches = stream_batches(s3_source, sql, shuffle=True, seed=2, shuffle_buffer=150, **keys(s3_server))
        return [i for b in batches for i in b.column("id").to_pylist()]

    try:
        first = epoch()
        assert sorted(first) == list(range(1, ROWS, 3))
        assert runs
        assert checks
        runs.clear()
        checks.clear()
        assert epoch() == first
        assert runs == []
        assert checks == []
    finally:
        kept_rows.forget()
        checked_rows.forget()


def test_a_folders_rotated_row_groups_on_s3_are_read_once_an_epoch(
    s3_server: S3Service,
    s3_bucket: str,
    tmp_path: Path,
    shard_reads: ShardReads,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Five objects of one 20 MB row group, shuffled through a 1,000-row buffer: each row
    # group is rotated and its first rows kept for their turn, so an epoch reads each from
    # the store once, from its first row, with the lanes' streams each reading ahead on its
    # own; with no room to keep them, each head is read again. Two workers' worlds share out
    # the pieces and still keep heads.
    rows, files = 2_500, 5
    write_one_group_files(tmp_path, files, rows)
    upload_dir(s3_server.boto3_client(), s3_bucket, "rotated", tmp_path)
    source = f"s3://{s3_bucket}/rotated"
    assert not prepare(source, None, s3=s3_server.settings()).copied_for(1)

    def batches_of(world: World) -> Iterator[pa.RecordBatch]:
        return stream_batches(
            source, shuffle=True, seed=2, shuffle_buffer=1_000, world=world, **keys(s3_server)
        )

    check_heads_kept(shard_reads, batches_of, files * rows, files, monkeypatch)
