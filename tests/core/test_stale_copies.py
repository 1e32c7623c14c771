"""Copies the cache folder no longer needs are removed: those of files gone, those unused."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.core import stale_copies
from duckstream.core.recut import local_copy
from duckstream.core.stale_copies import UNUSED_COPY_SECONDS, lock_of, prune
from duckstream.stream import stream_batches

DAY = 86_400


def source_file(path: Path, rows: int = 1_000) -> Path:
    pq.write_table(pa.table({"id": np.arange(rows)}), path)
    return path


def copied(source: Path, cache: Path) -> Path:
    made = local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], [100] * 10, cache)
    assert made is not None
    return Path(made)


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_a_copy_names_its_file(tmp_path: Path) -> None:
    source = source_file(tmp_path / "a.parquet")
    copy = copied(source, tmp_path / "cache")
    assert pq.read_schema(copy).metadata[stale_copies.COPY_OF] == str(source).encode()
    assert pq.read_table(copy).column("id").to_pylist() == list(range(1_000))


def test_copies_of_files_gone_are_removed_once_the_folder_is_looked_over(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kept_source = source_file(tmp_path / "kept.parquet")
    gone_source = source_file(tmp_path / "gone.parquet")
    kept, gone = copied(kept_source, cache), copied(gone_source, cache)
    gone_source.unlink()
    # Looked over when the first copy was made: not again within the hour.
    assert prune(cache) == 0
    assert gone.exists()
    assert prune(cache, now=time.time() + 3_601) == 1
    assert not gone.exists()
    assert not lock_of(gone).exists()
    assert kept.exists()
    assert lock_of(kept).exists()


def test_copies_no_read_used_for_a_month_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = copied(source_file(tmp_path / "old.parquet"), cache)
    used = copied(source_file(tmp_path / "used.parquet"), cache)
    # Both written 40 days ago; one used since (its lock file's time), the other not.
    for path in (old, lock_of(old), used):
        age(path, 40)
    age(lock_of(used), UNUSED_COPY_SECONDS / DAY - 1)
    assert prune(cache, now=time.time() + 3_601) == 1
    assert not old.exists()
    assert used.exists()


def test_a_copy_of_an_object_or_of_no_named_file_is_kept_until_unused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    table = pa.table({"id": np.arange(10)})
    of_object = cache / "recut-a-b-c.parquet"
    pq.write_table(table.replace_schema_metadata({stale_copies.COPY_OF: "s3://bucket/x.parquet"}), of_object)
    unnamed = cache / "recut-d-e-f.parquet"
    pq.write_table(table, unnamed)
    assert prune(cache) == 0
    assert of_object.exists()
    assert unnamed.exists()
    for path in (of_object, unnamed):
        age(path, 31)
    assert prune(cache, now=time.time() + 3_601) == 2


def test_a_read_marks_its_copy_used_and_makes_it_again_when_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that first finds a copy another made marks it used; a copy removed under a
    # process that already used it is made again at its next read.
    cache = tmp_path / "cache"
    source = source_file(tmp_path / "a.parquet")
    copy = copied(source, cache)
    age(lock_of(copy), 40)
    monkeypatch.setattr("duckstream.core.recut._made", {})
    assert copied(source, cache) == copy
    assert time.time() - lock_of(copy).stat().st_mtime < DAY
    copy.unlink()
    assert copied(source, cache) == copy
    assert copy.exists()


def test_a_shuffled_read_removes_the_copy_of_a_dataset_written_anew_elsewhere(tmp_path: Path) -> None:
    # A file of one 20 MB row group is read from a copy in the cache folder; once the
    # dataset is written anew under another folder and the old one removed, the next
    # shuffled read (past the hour) leaves only the new file's copy.
    cache = tmp_path / "cache"

    def epoch_of(folder: Path) -> list[int]:
        folder.mkdir()
        blobs = pa.array([i.to_bytes(4, "little") * 2_048 for i in range(2_500)], pa.binary())
        pq.write_table(pa.table({"id": np.arange(2_500), "blob": blobs}), folder / "part-0.parquet")
        batches = stream_batches(folder, shuffle=True, seed=0, shuffle_buffer=1_000, cache_dir=cache)
        return sorted(i for batch in batches for i in batch.column("id").to_pylist())

    assert epoch_of(tmp_path / "v1") == list(range(2_500))
    (first,) = cache.glob("recut-*.parquet")
    shutil.rmtree(tmp_path / "v1")
    age(cache / ".recut-looked-over", 1 / 12)
    assert epoch_of(tmp_path / "v2") == list(range(2_500))
    (second,) = cache.glob("recut-*.parquet")
    assert second != first


def test_files_of_one_relative_path_in_two_folders_are_two_copies_both_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `data/a.parquet` read from two projects' folders: each copy names its file by its
    # absolute path, neither is taken for an older version of the other, and a folder looked
    # over from a third place keeps both.
    cache = tmp_path / "cache"
    made: list[str | None] = []
    for project in ("one", "two"):
        (tmp_path / project / "data").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / project)
        pq.write_table(pa.table({"id": np.arange(1_000) + len(made)}), "data/a.parquet")
        made.append(
            local_copy("data/a.parquet", lambda: pq.ParquetFile("data/a.parquet"), ["id"], [500, 500], cache)
        )
    monkeypatch.chdir(tmp_path)
    assert prune(cache, now=time.time() + 3_601) == 0
    assert sorted(cache.glob("recut-*.parquet")) == sorted(Path(str(copy)) for copy in made)
    assert {pq.read_schema(str(copy)).metadata[stale_copies.COPY_OF] for copy in made} == {
        str(tmp_path / project / "data" / "a.parquet").encode() for project in ("one", "two")
    }
