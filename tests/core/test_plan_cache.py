"""The plan cache: a plan is reused while the listed files are unchanged, and never after."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.core.plan_cache import PlanCache
from duckstream.core.planning import prepare
from duckstream.errors import SourceError
from duckstream.services import S3Service
from duckstream.storage import S3Settings
from duckstream.stream import stream_batches
from tests.conftest import numbers_table, upload_dir

LOCAL = S3Settings()
FILTER = "SELECT id, label FROM source WHERE id % 3 = 0"


def _write(directory: Path, index: int, start: int, stop: int) -> Path:
    path = directory / f"part-{index}.parquet"
    pq.write_table(numbers_table(start, stop), path, row_group_size=25)
    return path


def _junk_of_same_size(path: Path) -> None:
    """Overwrite ``path`` with as many bytes that are not Parquet, and put its modification time
    back: a change the listing cannot see, so a plan can only come from the cache."""
    before = path.stat()
    path.write_bytes(bytes(before.st_size))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("sql", [None, FILTER])
def test_a_kept_plan_is_reused_while_the_listing_is_unchanged(
    parquet_dir: Path, tmp_path: Path, sql: str | None
) -> None:
    cache = tmp_path / "cache"
    first = prepare(parquet_dir, sql, s3=LOCAL, cache_dir=cache)
    assert len(list(cache.glob("plan-*.pickle"))) == 1
    # Same listing, unreadable contents: the kept plan is used, no footer or row is read.
    _junk_of_same_size(parquet_dir / "part-0.parquet")
    again = prepare(parquet_dir, sql, s3=LOCAL, cache_dir=cache)
    assert again.fingerprint == first.fingerprint
    assert again.counts.tolist() == first.counts.tolist()
    assert (again.shards, again.files) == (first.shards, first.files)
    assert again.s3 == LOCAL
    with pytest.raises(SourceError):
        prepare(parquet_dir, sql, s3=LOCAL)  # without the cache, planning reads the footer


@pytest.mark.parametrize("sql", [None, FILTER])
def test_a_stale_plan_is_never_used(parquet_dir: Path, tmp_path: Path, sql: str | None) -> None:
    cache = tmp_path / "cache"
    prepare(parquet_dir, sql, s3=LOCAL, cache_dir=cache)
    # One file rewritten with more rows: its size and modification time change.
    _write(parquet_dir, 1, 100, 260)
    changed = prepare(parquet_dir, sql, s3=LOCAL, cache_dir=cache)
    fresh = prepare(parquet_dir, sql, s3=LOCAL)
    assert changed.fingerprint == fresh.fingerprint
    assert changed.counts.tolist() == fresh.counts.tolist()
    # A file added is a change too, and the entry replaced is the one reused next.
    _write(parquet_dir, 3, 1_000, 1_050)
    added = prepare(parquet_dir, sql, s3=LOCAL, cache_dir=cache)
    assert added.fingerprint == prepare(parquet_dir, sql, s3=LOCAL).fingerprint
    assert len(list(cache.glob("plan-*.pickle"))) == 1
    rows = [i for b in stream_batches(parquet_dir, sql, cache_dir=cache) for i in b.column("id").to_pylist()]
    assert sorted(rows) == sorted(
        i
        for i in [*range(100), *range(100, 260), *range(200, 300), *range(1_000, 1_050)]
        if sql is None or i % 3 == 0
    )


def test_a_damaged_entry_is_planned_again(parquet_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = prepare(parquet_dir, FILTER, s3=LOCAL, cache_dir=cache)
    (entry,) = cache.glob("plan-*.pickle")
    entry.write_bytes(entry.read_bytes()[:100])
    assert prepare(parquet_dir, FILTER, s3=LOCAL, cache_dir=cache).fingerprint == first.fingerprint
    assert entry.stat().st_size > 100  # replaced by a whole one


def test_a_cache_that_cannot_be_written_only_costs_the_next_start(
    parquet_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    plan = prepare(parquet_dir, FILTER, s3=LOCAL, cache_dir=blocked)
    assert plan.fingerprint == prepare(parquet_dir, FILTER, s3=LOCAL).fingerprint
    assert "cannot keep the plan" in caplog.text


def test_other_sql_or_shard_size_is_another_entry(parquet_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = prepare(parquet_dir, None, s3=LOCAL, cache_dir=cache)
    filtered = prepare(parquet_dir, FILTER, s3=LOCAL, cache_dir=cache)
    small = prepare(parquet_dir, None, s3=LOCAL, cache_dir=cache, shard_rows=10)
    assert len(list(cache.glob("plan-*.pickle"))) == 3
    assert filtered.num_rows == 100
    assert plain.num_rows == 300
    assert len(small.shards) > len(plain.shards)


def test_a_materialised_result_is_not_kept(parquet_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plan = prepare(
        parquet_dir, "SELECT label, count(*) AS n FROM source GROUP BY label", s3=LOCAL, cache_dir=cache
    )
    assert plan.num_rows == 300
    assert not list(cache.glob("plan-*.pickle"))  # the result file is local to this machine


@pytest.mark.services
def test_an_s3_cache_is_shared_and_checked_against_the_store(
    s3_server: S3Service, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for index in range(3):
        _write(data, index, index * 100, (index + 1) * 100)
    client = s3_server.boto3_client()
    upload_dir(client, s3_bucket, "data", data)
    s3 = S3Settings.resolve(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    source, cache = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/plans/"
    first = prepare(source, FILTER, s3=s3, cache_dir=cache)
    entries = client.list_objects_v2(Bucket=s3_bucket, Prefix="plans/")["Contents"]
    assert len(entries) == 1
    body = client.get_object(Bucket=s3_bucket, Key=entries[0]["Key"])["Body"].read()
    assert s3_server.secret_key.encode() not in body
    assert s3_server.access_key.encode() not in body
    # Another machine: it reads the kept plan, with its own keys.
    again = prepare(source, FILTER, s3=s3, cache_dir=cache)
    assert again.fingerprint == first.fingerprint
    assert again.s3 == s3
    listing = PlanCache(cache, s3).listing(list(first.files))
    assert [size for _, size, _ in listing] == [(data / f"part-{i}.parquet").stat().st_size for i in range(3)]
    # An object rewritten: stale, planned anew from the store.
    _write(data, 2, 200, 420)
    client.upload_file(str(data / "part-2.parquet"), s3_bucket, "data/part-2.parquet")
    changed = prepare(source, FILTER, s3=s3, cache_dir=cache)
    assert changed.num_rows == len([i for i in range(420) if i % 3 == 0])
    assert changed.fingerprint == prepare(source, FILTER, s3=s3).fingerprint


_entries = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 10**9), st.integers(0, 2**62)),
    min_size=1,
    max_size=8,
    unique_by=lambda e: e[0],
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=_entries, edit=st.sampled_from(["size", "mtime", "drop", "add", "swap"]), at=st.integers(0, 7))
def test_a_kept_plan_is_returned_for_its_own_listing_only(
    parquet_dir: Path, tmp_path: Path, kept: list[tuple[str, int, int]], edit: str, at: int
) -> None:
    plan = prepare(parquet_dir, None, s3=LOCAL)
    cache = PlanCache(tmp_path / "property", LOCAL)
    listing = tuple((f"/data/{name}.parquet", size, mtime) for name, size, mtime in kept)
    cache.store("k", listing, plan)
    assert cache.load("k", listing) == plan
    changed = list(listing)
    i = at % len(changed)
    path, size, mtime = changed[i]
    if edit == "size":
        changed[i] = (path, size + 1, mtime)
    elif edit == "mtime":
        changed[i] = (path, size, mtime + 1)
    elif edit == "drop":
        del changed[i]
    elif edit == "add":
        changed.append(("/data/z.parquet", size, mtime))
    elif len(changed) > 1:
        changed[0], changed[-1] = changed[-1], changed[0]  # the files' order is the plan's order
    else:
        changed[i] = (path + ".moved", size, mtime)
    assert cache.load("k", tuple(changed)) is None
