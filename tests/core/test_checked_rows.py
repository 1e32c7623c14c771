"""Decoded rows are checked once per process: merged ranges, and the checks a second epoch
leaves out, never for a file changed since."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duckstream.core import checked_rows, reader
from duckstream.errors import SourceError
from duckstream.stream import stream_batches


@pytest.fixture(autouse=True)
def nothing_checked() -> Iterator[None]:
    checked_rows.forget()
    yield
    checked_rows.forget()


@given(
    spans=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), max_size=12),
    asked=st.lists(st.tuples(st.integers(0, 70), st.integers(1, 12)), min_size=1, max_size=12),
)
def test_rows_are_checked_exactly_where_remembered_ranges_cover_them(
    spans: list[tuple[int, int]], asked: list[tuple[int, int]]
) -> None:
    checked_rows.forget()
    covered: set[int] = set()
    for first, rows in spans:
        checked_rows.remember("file", first, first + rows)
        covered.update(range(first, first + rows))
        # Sorted, disjoint and not touching: each range kept is one run of covered rows.
        kept = checked_rows._ranges.get("file", [])
        assert all(a[1] < b[0] for a, b in itertools.pairwise(kept))
        assert sum(b - a for a, b in kept) == len(covered)
    for first, rows in asked:
        assert checked_rows.checked("file", first, first + rows) == (
            set(range(first, first + rows)) <= covered
        )
    assert not checked_rows.checked("other", 0, 1)


def counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    check = reader._check_decoded

    def counting(batch: pa.RecordBatch) -> None:
        calls.append(batch.num_rows)
        check(batch)

    monkeypatch.setattr(reader, "_check_decoded", counting)
    return calls


def write(path: Path, rows: int = 3_000) -> None:
    table = pa.table({"id": list(range(rows)), "text": [f"row {i} " + "x" * 40 for i in range(rows)]})
    pq.write_table(table, path, compression="snappy", row_group_size=500)


def test_a_second_epoch_checks_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.parquet")
    calls = counted_checks(monkeypatch)
    ids = [b.column("id").to_pylist() for b in stream_batches(tmp_path, shuffle=True, shuffle_buffer=300)]
    assert sum(calls) == 3_000
    calls.clear()
    again = [b.column("id").to_pylist() for b in stream_batches(tmp_path, shuffle=True, shuffle_buffer=300)]
    assert again == ids
    assert calls == []
    # Other columns are other checks.
    list(stream_batches(tmp_path, "SELECT text FROM source", shuffle=True, shuffle_buffer=300))
    assert sum(calls) == 3_000


def test_a_file_changed_in_place_after_a_clean_epoch_is_checked_again(tmp_path: Path) -> None:
    # Plain, uncompressed strings: one byte made invalid UTF-8 decodes without error, and only
    # the check finds it. Same size, same row groups: only the file's time says it changed.
    bad = tmp_path / "part-000.parquet"
    table = pa.table({"id": list(range(3_000)), "text": [f"row {i:05d}" for i in range(3_000)]})
    pq.write_table(table, bad, compression="none", use_dictionary=False, row_group_size=500)
    assert len(list(stream_batches(tmp_path, shuffle=True, shuffle_buffer=300))) > 0
    data = bytearray(bad.read_bytes())
    at = data.index(b"row 01234")
    data[at + 4] = 0xFF
    bad.write_bytes(bytes(data))
    stat = bad.stat()
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a coarse clock
    with pytest.raises(SourceError, match=r"column 'text'.*damaged"):
        list(stream_batches(tmp_path, shuffle=True, shuffle_buffer=300))
