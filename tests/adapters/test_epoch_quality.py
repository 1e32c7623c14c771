"""Shuffle quality as the training loop receives it: DuckStreamLoader's items per rank, the
workers' interleaved, over layouts that used to keep storage order (one file, one row group;
a few uneven files; a buffer far smaller than the data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.distributed import split_dataset_by_node
from duckstream.benchmarks import layouts
from duckstream.benchmarks.shuffle_quality import neighbours_kept, spearman

from duckstream.catalog import LakehouseCatalog
from duckstream.core.interleave import order_left
from duckstream.core.world import World
from duckstream.services import S3Service
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, as_iterable_dataset, stream_batches
from tests.adapters.resume_check import assert_resumes, run_world
from tests.conftest import upload_dir

ROWS = 20_000
SEEDS = range(5)
WIDE_SQL = "SELECT id, blob FROM source"
# A filter counted per range of rows, 9 rows in 10: large row groups read through it are read
# from copies as unfiltered ones are (recut).
FILTERED_SQL = "SELECT id, blob FROM source WHERE id % 10 <> 0"
# The same filter nested in a WITH: counted per range like the plain one, and copied alike.
NESTED_SQL = "WITH kept AS (SELECT id, blob FROM source WHERE id % 10 <> 0) SELECT id, blob FROM kept"
# The same filter reading a float16 column (1.0 in every row), which cannot enter DuckDB from
# Arrow: DuckDB reads these files itself, so they are not copied, their large row groups stay
# in place, and are warned about.
IN_PLACE_SQL = "SELECT id, blob FROM source WHERE id % 10 <> 0 AND half = 1"


def write(folder: Path, sizes: list[int], width: int = 0) -> Path:
    """Files of one row group each, ids in storage order (files are read in name order), and
    with a ``width`` a column ``blob`` of that many random bytes a row."""
    folder.mkdir()
    start = 0
    for index, rows in enumerate(sizes):
        rng = np.random.default_rng(index)
        columns = {"id": np.arange(start, start + rows), "score": rng.random(rows)}
        if width:
            values = rng.integers(0, 256, size=(rows, width), dtype=np.uint8)
            columns["blob"] = pa.array([bytes(v) for v in values], pa.binary())
        pq.write_table(pa.table(columns), folder / f"part-{index:03d}.parquet", row_group_size=rows)
        start += rows
    return folder


LAYOUTS: dict[str, list[int]] = {
    "one file, one row group": [ROWS],
    "8 files": [ROWS // 8] * 8,
    "3 uneven files": [15_000, 3_000, 2_000],
    # More files than a read opens at once, one of them outsize: read in a group with fewer
    # others, it filled a quarter of the epoch (|rho| 0.16-0.2 for 3 seeds of 5, one process).
    "one file among 60 small": [250] * 30 + [5_000] + [250] * 30,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layout", "buffer", "world", "workers"),
    [
        ("one file, one row group", None, 1, 0),
        ("one file, one row group", 1_000, 2, 2),
        ("8 files", 1_000, 1, 0),
        ("8 files", 1_000, 2, 2),
        ("8 files", 1_000, 1, 3),
        ("3 uneven files", None, 1, 2),
        ("3 uneven files", 1_000, 2, 0),
        ("8 files", None, 4, 4),
        ("one file, one row group", None, 8, 1),
        ("one file, one row group", None, 8, 4),
        ("one file among 60 small", 1_000, 1, 0),
        ("one file among 60 small", 1_000, 1, 2),
        ("one file among 60 small", 1_000, 2, 1),
    ],
)
def test_every_rank_receives_a_near_uniform_permutation(
    tmp_path: Path, layout: str, buffer: int | None, world: int, workers: int
) -> None:
    source = write(tmp_path / "data", LAYOUTS[layout])

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: DuckStreamDataset(
            source, "SELECT id FROM source", batch_size=64, shuffle=True, seed=seed, shuffle_buffer=buffer
        )

    near_uniform(make, world, workers, list(range(ROWS)), f"{layout}, buffer {buffer}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "world", "workers"),
    [
        ("filter", 1, 0),
        ("expression", 1, 2),
        ("lake table", 1, 0),
        ("lake table through a filter", 2, 1),
        ("lake table with a column added since", 1, 0),
        ("lake table with a column added since", 2, 2),
        ("s3", 1, 0),
        ("s3", 1, 2),
    ],
)
def test_an_outsize_file_is_read_over_the_whole_share_on_every_path_a_user_takes(
    tmp_path: Path, request: pytest.FixtureRequest, path: str, world: int, workers: int
) -> None:
    # "One file among 60 small" through a filter (counted per row group, the file's pieces
    # thinned), an expression, a pinned lake table of one data file an INSERT (its files read
    # by DuckLake's own scan once a column was added since they were written), and files on
    # the S3 server: each plans the same pieces, and the outsize file is spread as it is read
    # from local files.
    sizes = LAYOUTS["one file among 60 small"]
    local = write(tmp_path / "data", sizes)
    filtered = "filter" in path
    sql = "SELECT id FROM source WHERE id % 10 <> 0" if filtered else "SELECT id FROM source"
    if path == "expression":
        sql = "SELECT id, score * 2 AS twice FROM source"
    source: object = local
    options: dict[str, object] = {}
    if path.startswith("lake table"):
        catalog = LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files")
        request.addfinalizer(catalog.close)
        catalog.con.execute("CREATE TABLE samples (id BIGINT, score DOUBLE)")
        for index in range(len(sizes)):
            catalog.con.execute(f"INSERT INTO samples FROM read_parquet('{local}/part-{index:03d}.parquet')")
        if "column added" in path:
            catalog.con.execute("ALTER TABLE samples ADD COLUMN extra DOUBLE")
        source = catalog.table("samples")
    elif path == "s3":
        s3: S3Service = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        upload_dir(s3.boto3_client(), bucket, "data", local)
        source = f"s3://{bucket}/data/"
        options = {"s3_endpoint": s3.endpoint, "s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: DuckStreamDataset(
            source,  # type: ignore[arg-type]
            sql,
            batch_size=64,
            shuffle=True,
            seed=seed,
            shuffle_buffer=1_000,
            **options,  # type: ignore[arg-type]
        )

    kept = [i for i in range(sum(sizes)) if not filtered or i % 10]
    if "column added" in path:
        # DuckDB reads the files, as many pieces at once as pyarrow would (one piece at a time
        # before: |Spearman| 0.14-0.53 over 90,000 such rows in 9 files, the default buffer).
        plan = make(0)().plan
        assert plan.lake is not None
        assert not any(plan.lake.direct)
    near_uniform(make, world, workers, kept, f"one file among 60 small, {path}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rows", "where", "copied"),
    [(5_000, "", False), (5_000, "WHERE id % 10 <> 0", False), (12_000, "", True)],
)
def test_a_large_row_group_among_small_files_is_rotated_or_copied_where_its_order_would_show(
    tmp_path: Path, rows: int, where: str, copied: bool
) -> None:
    # One file of one row group of 2 KiB rows, too large to enter anywhere, among 60 small
    # files of 333 rows; a 1,000-row buffer, one process. Read over the whole slot front to
    # back, 5,000 rows (a fifth) kept their share squared of the storage order: |rho| median
    # 0.041 over 5 seeds, 0.057 through a filter. It now starts in its first half. 12,000 rows
    # (3/8) would still leave 0.063 rotated, one standard deviation: counted as one of the
    # groups' pieces that was 0.035, never copied; it is copied into small row groups now.
    sizes = [333] * 30 + [rows] + [333] * 30
    source = write(tmp_path / "data", sizes, width=2_048)

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: wide_dataset(source, seed=seed, sql=f"SELECT id, blob FROM source {where}")

    dataset = make(0)()
    assert not dataset.plan.layout.anywhere[30]
    assert sorted(dataset.plan.copied_for(1)) == (list(range(61)) if copied else [])
    kept = [i for i in range(sum(sizes)) if not where or i % 10]
    near_uniform(make, 1, 0, kept, f"a row group of {rows} among 60 small files {where}")


@pytest.mark.slow
@pytest.mark.parametrize(("sizes", "batches"), [([3_100, 3_200, 3_940], 5), ([4_260, 4_346, 5_730], 7)])
def test_workers_of_few_batches_each_hand_them_over_so_that_none_comes_first(
    tmp_path: Path, sizes: list[int], batches: int
) -> None:
    # Over 8 ranks of 4 workers each worker's share is a few batches (one window): a
    # transfer chunk of half of them could not stagger 4 workers' first transfers, and
    # worker 0's rows (the first of the rank's share) led each round: |rho| median 0.145 at
    # 5 batches a worker (2 a chunk), 0.040 and at most 0.096 at 7 (3 a chunk). The chunk
    # that leaves the least lag: 4 batches at both, 0.03 and 0.007.
    source = write(tmp_path / "data", sizes)
    rows = sum(sizes)
    assert rows == 8 * 4 * 64 * batches
    rhos = []
    for seed in SEEDS:

        def make(seed: int = seed) -> DuckStreamDataset:
            return DuckStreamDataset(source, "SELECT id FROM source", batch_size=64, shuffle=True, seed=seed)

        per_rank, _ = run_world(make, 8, 4, take=None)
        assert sorted(i for ids in per_rank for i in ids) == list(range(rows))
        rhos += [spearman(ids) for ids in per_rank]
    print(f"{batches} batches a worker: |rho| median {np.median(rhos):.3f}, max {max(rhos):.3f}")
    assert np.median(rhos) < 0.05, rhos
    assert max(rhos) < 0.1, rhos


@pytest.mark.slow
def test_workers_of_few_batches_and_a_short_one_hand_them_over_so_that_none_comes_first(
    tmp_path: Path,
) -> None:
    # The layout benchmark's shape 94 at 4 workers: 40 files of 44-1,300 rows in 4 row
    # groups, 12,614 rows over 8 ranks, so 6 whole batches and one of 10 or 11 rows a worker.
    # Counted as 6 items, the chunk chosen was 3, which leaves little lag linear in the
    # worker's number but workers 1 and 2 late, 0 and 3 early; a worker's rows here are any
    # part of the storage, and one rank's epoch kept |rho| 0.110 (median 0.032). 4: 0.075.
    shape = replace(layouts.draw(94), workers=4)
    assert (shape.world_size, shape.rows) == (8, 12_614)
    source = layouts.write(shape, tmp_path / "data")
    rhos = [
        spearman(ids.tolist())
        for seed in SEEDS
        for ids in layouts.epoch_ids(source, shape, seed, tmp_path / "cache")
    ]
    print(f"shape 94 at 4 workers: |rho| median {np.median(rhos):.3f}, max {max(rhos):.3f}")
    assert np.median(rhos) < 0.05, rhos
    assert max(rhos) < 0.1, rhos


def near_uniform(
    make: Callable[[int], Callable[[], DuckStreamDataset]],
    world: int,
    workers: int,
    rows: list[int],
    what: str,
) -> None:
    """Every rank's epoch, for each seed, holds ``rows`` once and is near a uniform permutation."""
    rhos, kept = [], []
    for seed in SEEDS:
        per_rank, _ = run_world(make(seed), world, workers, take=None)
        assert sorted(i for ids in per_rank for i in ids) == rows
        for ids in per_rank:
            rhos.append(spearman(ids))
            kept.append(neighbours_kept(ids))
    print(
        f"{what}, world {world}, workers {workers}: |rho| median "
        f"{np.median(rhos):.3f}, max {max(rhos):.3f}; neighbours kept at most {max(kept):.4f}"
    )
    assert np.median(rhos) < 0.05, rhos
    assert max(rhos) < 0.1, rhos
    assert max(kept) < 0.01, kept


@pytest.mark.slow
@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2)])
def test_a_filtered_read_enters_large_shards_where_their_row_groups_start(
    tmp_path: Path, world: int, workers: int
) -> None:
    # One file of 100 row groups, 1.2 KB a row: its one shard is too large to enter inside a
    # row group (that would decode rows only to drop them), so only the filter's count per
    # row group lets the read take its row groups side by side; read whole, front to back,
    # it kept the storage order.
    (tmp_path / "data").mkdir()
    rows = 100 * 250
    pad = np.random.default_rng(0).integers(0, 256, size=(rows, 1_200), dtype=np.uint8)
    table = pa.table({"id": np.arange(rows), "pad": pa.array([bytes(r) for r in pad], pa.binary())})
    pq.write_table(table, tmp_path / "data" / "one.parquet", row_group_size=250)
    sql = "SELECT id FROM source WHERE id % 5 <> 0"

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: DuckStreamDataset(
            tmp_path / "data", sql, batch_size=64, shuffle=True, seed=seed, shuffle_buffer=1_000
        )

    assert make(0)().plan.layout.anywhere.tolist() == [False]
    near_uniform(make, world, workers, [i for i in range(rows) if i % 5], "filtered, 100 row groups")


def write_wide(folder: Path, files: int, rows: int, width: int = 4_096) -> Path:
    """``files`` files of one row group each, ``rows`` rows in all, ``width`` bytes a row
    (``blob``), and ``half``, a float16 1.0 in every row."""
    folder.mkdir()
    per = rows // files
    values = np.random.default_rng(0).integers(0, 256, size=(per, width), dtype=np.uint8)
    blobs = pa.array([bytes(v) for v in values], pa.binary())
    halves = np.ones(per, dtype=np.float16)
    for index in range(files):
        table = pa.table({"id": np.arange(index * per, (index + 1) * per), "blob": blobs, "half": halves})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=per)
    return folder


def wide_dataset(
    source: Path,
    *,
    seed: int = 0,
    buffer: int = 1_000,
    shuffle: bool = True,
    sql: str = WIDE_SQL,
    cache_dir: Path | None = None,
) -> DuckStreamDataset:
    """A shuffled read of ``write_wide``'s files (every column), in batches of 64 rows."""
    return DuckStreamDataset(
        source,
        sql,
        cache_dir=cache_dir or source.parent / "cache",
        batch_size=64,
        shuffle=shuffle,
        seed=seed,
        shuffle_buffer=buffer,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world", "workers", "files", "width"), [(1, 0, 8, 4_096), (1, 2, 8, 4_096), (2, 1, 16, 8_192)]
)
def test_large_row_groups_start_anywhere_where_few_are_read_side_by_side(
    tmp_path: Path, world: int, workers: int, files: int, width: int
) -> None:
    # Files of one 10 MB row group each, a 1,000-row buffer: each row group is too large to cut
    # into parts, and read front to back, the 8 a rank reads kept an eighth of the storage
    # order (|rho| 0.13). Each now starts at a random row of its group's first half. (A rank
    # of 4 such row groups varies from seed to seed around 0.05: one in ten passes 0.1.)
    source = write_wide(tmp_path / "data", files, ROWS, width)

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: wide_dataset(source, seed=seed)

    assert not make(0)().plan.layout.anywhere.any()
    near_uniform(make, world, workers, list(range(ROWS)), f"{files} files of one wide row group")


def test_a_few_large_row_groups_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One file of one 20 MB row group read by DuckDB itself (its filter reads a float16
    # column) cannot be mixed by a 1,000-row buffer at a bounded cost (read by pyarrow,
    # whole or through a filter, it is read from a copy in small row groups: the next
    # tests): the warning names the file and both remedies, once; eight files, or a buffer
    # holding every kept row, are mixed and not warned about.
    one = write_wide(tmp_path / "one", 1, 5_000)
    eight = write_wide(tmp_path / "eight", 8, ROWS)
    in_place = "SELECT id, blob FROM source WHERE id % 2 = 0 AND half = 1"
    with caplog.at_level("WARNING", logger="duckstream"):
        for _ in range(2):
            wide_dataset(one, sql=in_place)
        wide_dataset(one, buffer=2_500, sql=in_place)
        wide_dataset(one, shuffle=False, sql=in_place)
        wide_dataset(eight)
        wide_dataset(one, cache_dir=tmp_path / "cache")
        wide_dataset(one, sql="SELECT id, blob FROM source WHERE id % 2 = 0", cache_dir=tmp_path / "cache")
    warned = [r.getMessage() for r in caplog.records if "storage order" in r.getMessage()]
    assert len(warned) == 1, warned
    assert str(one / "part-0.parquet") in warned[0]
    assert "shuffle_buffer=2500" in warned[0]
    assert "row_group_size=" in warned[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "buffer", "world", "workers"),
    [
        ("", None, 1, 0),
        ("", 1_000, 1, 2),
        ("", None, 8, 1),
        ("", 1_000, 4, 2),
        ("WHERE id % 10 <> 0", None, 1, 0),
        ("WHERE id % 10 <> 0", 1_000, 4, 2),
        ("WHERE id % 10 <> 0", None, 8, 1),
    ],
)
def test_one_large_row_group_is_read_from_a_local_copy_near_a_uniform_permutation(
    tmp_path: Path, where: str, buffer: int | None, world: int, workers: int
) -> None:
    # One file of one 80 MB row group: read in place it is one piece, read in storage order
    # (|rho| 0.36 median for 10 KiB rows in one process; 0.45 through the filter). Copied once
    # into small row groups, it is read as a file of small row groups is. Through a filter the
    # plan counts what each part of the row group yields, and the copy's row groups, runs of
    # those parts, are entered where each begins.
    source = write_wide(tmp_path / "data", 1, ROWS)

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: DuckStreamDataset(
            source,
            f"SELECT id FROM source {where}",
            batch_size=64,
            shuffle=True,
            seed=seed,
            shuffle_buffer=buffer,
            cache_dir=tmp_path / "cache",
        )

    assert list(make(0)().plan.copied_for(world)) == [0]
    kept = [i for i in range(ROWS) if not where or i % 10]
    near_uniform(make, world, workers, kept, f"one wide row group {where}, buffer {buffer}")
    assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 1


@pytest.mark.slow
def test_a_small_file_among_copied_ones_is_copied_too(tmp_path: Path) -> None:
    # Three files of one 9.4 MB row group and one of 7.8 MB, small enough to enter anywhere:
    # read whole among the copies' small pieces, the small file took a stretch of the epoch of
    # its own. Every file is copied.
    source = tmp_path / "data"
    source.mkdir()
    values = np.random.default_rng(0).integers(0, 256, size=(2_300, 4_096), dtype=np.uint8)
    blobs = pa.array([bytes(v) for v in values], pa.binary())
    start = 0
    for index, rows in enumerate([2_300, 2_300, 1_900, 2_300]):
        table = pa.table({"id": np.arange(start, start + rows), "blob": blobs.slice(0, rows)})
        pq.write_table(table, source / f"part-{index}.parquet", row_group_size=rows)
        start += rows

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: wide_dataset(source, seed=seed)

    dataset = make(0)()
    assert dataset.plan.layout.anywhere.tolist() == [False, False, True, False]
    assert sorted(dataset.plan.copied_for(1)) == [0, 1, 2, 3]
    near_uniform(make, 1, 0, list(range(start)), "a small file among copied ones")


def write_thinned(folder: Path, rows: int, dropped: Callable[[np.ndarray], np.ndarray]) -> Path:
    """One row group of ``rows`` rows of 4 KiB; a filter ``id >= 0`` keeps all but the rows
    ``dropped`` marks, numbered 0, 1, ... in storage order (-1: dropped)."""
    folder.mkdir()
    gone = dropped(np.arange(rows))
    ids = np.where(gone, -1, np.cumsum(~gone) - 1)
    values = np.random.default_rng(0).integers(0, 256, size=(rows, 4_096), dtype=np.uint8)
    table = pa.table({"id": ids, "blob": pa.array([bytes(v) for v in values], pa.binary())})
    pq.write_table(table, folder / "part-0.parquet", row_group_size=rows)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_filtered_copy_hands_every_kept_value_once_an_epoch(tmp_path: Path, workers: int) -> None:
    # Rows 2,000-4,499 all dropped: runs of the copy's row groups yield nothing, inside the
    # one row group the plan's shard is; every kept row still comes once, with its own value.
    source = write_thinned(tmp_path / "data", 6_000, lambda i: ((i >= 2_000) & (i < 4_500)) | (i % 7 == 3))
    stored = pq.read_table(source)
    expected = dict(zip(stored.column("id").to_pylist(), stored.column("blob").to_pylist(), strict=True))
    dataset = DuckStreamDataset(
        source,
        "SELECT id, blob FROM source WHERE id >= 0",
        batch_size=64,
        shuffle=True,
        output="arrow",
        cache_dir=tmp_path / "cache",
    )
    copy = dataset.plan.copied_for(1)[0]
    assert copy.yields is not None
    assert 0 in copy.yields
    loader = DuckStreamLoader(dataset, num_workers=workers, persistent_workers=workers > 0)
    for _ in range(2):
        ids = []
        for batch in loader:
            rows = batch.column("id").to_pylist()
            assert batch.column("blob").to_pylist() == [expected[row] for row in rows]
            ids += rows
        assert sorted(ids) == list(range(len(expected) - 1))
    assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_copied_file_hands_every_value_once_an_epoch_and_is_copied_once(
    tmp_path: Path, workers: int
) -> None:
    source = write_wide(tmp_path / "data", 1, 6_000)
    stored = pq.read_table(source)
    expected = dict(zip(stored.column("id").to_pylist(), stored.column("blob").to_pylist(), strict=True))
    cache = tmp_path / "cache"

    def epochs(cache_dir: Path, *, shuffle: bool = True) -> list[list[int]]:
        dataset = DuckStreamDataset(
            source,
            "SELECT id, blob FROM source",
            batch_size=64,
            shuffle=shuffle,
            output="arrow",
            cache_dir=cache_dir,
        )
        loader = DuckStreamLoader(dataset, num_workers=workers, persistent_workers=workers > 0)
        read = []
        for _ in range(2):
            ids = []
            for batch in loader:
                for row, blob in zip(
                    batch.column("id").to_pylist(), batch.column("blob").to_pylist(), strict=True
                ):
                    assert blob == expected[row]
                    ids.append(row)
            assert sorted(ids) == list(range(6_000))
            read.append(ids)
        return read

    first = epochs(cache)
    (copy,) = cache.glob("recut-*.parquet")
    written = copy.stat().st_mtime_ns
    assert epochs(cache) == first  # the same order from the copy made before, not made again
    assert copy.stat().st_mtime_ns == written
    assert list(cache.glob("recut-*.parquet")) == [copy]
    # An unshuffled read reads the file itself (in storage order, where one process reads).
    plain = epochs(tmp_path / "plain", shuffle=False)[0]
    if workers == 0:
        assert plain == list(range(6_000))
    assert not list((tmp_path / "plain").glob("recut-*"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_an_expression_over_a_copied_file_runs_on_every_row_once(tmp_path: Path, workers: int) -> None:
    # A query that keeps rows runs over the columns it reads, decoded from the copy.
    source = write_wide(tmp_path / "data", 1, 6_000)
    dataset = DuckStreamDataset(
        source,
        "SELECT id, octet_length(blob) AS n, id * 2 AS twice FROM source",
        batch_size=64,
        shuffle=True,
        output="arrow",
        cache_dir=tmp_path / "cache",
    )
    assert list(dataset.plan.copied_for(1)) == [0]
    rows = [row for batch in DuckStreamLoader(dataset, num_workers=workers) for row in batch.to_pylist()]
    assert sorted(r["id"] for r in rows) == list(range(6_000))
    assert all(r["n"] == 4_096 and r["twice"] == 2 * r["id"] for r in rows)
    assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 1


@pytest.mark.parametrize("sql", [WIDE_SQL, FILTERED_SQL])
def test_a_file_that_cannot_be_copied_is_read_in_place_in_the_same_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sql: str
) -> None:
    source = write_wide(tmp_path / "data", 1, 6_000)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def epochs(cache_dir: Path) -> list[list[int]]:
        dataset = wide_dataset(source, seed=3, sql=sql, cache_dir=cache_dir)
        assert list(dataset.plan.copied_for(1)) == [0]
        loader = DuckStreamLoader(dataset, num_workers=0)
        return [[i for batch in loader for i in batch["id"].tolist()] for _ in range(2)]

    copied = epochs(tmp_path / "cache")
    with caplog.at_level("WARNING", logger="duckstream"):
        in_place = epochs(blocker / "cache")
    assert in_place == copied
    assert any("cannot copy" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after", "where"),
    [((2, 2), (1, 3), ""), ((1, 0), (2, 1), ""), ((1, 2), (2, 1), "WHERE id >= 0")],
)
def test_a_copied_file_resumes_exactly_under_another_world_or_worker_count(
    tmp_path: Path, before: tuple[int, int], after: tuple[int, int], where: str
) -> None:
    # Through a filter, one row in 9 dropped: 6,000 rows kept of 6,750.
    source = write_thinned(tmp_path / "data", 6_750 if where else 6_000, lambda i: (i % 9 == 4) & bool(where))

    def make() -> DuckStreamDataset:
        return DuckStreamDataset(
            source,
            f"SELECT id FROM source {where}",
            batch_size=64,
            shuffle=True,
            seed=5,
            shuffle_buffer=1_000,
            cache_dir=tmp_path / "cache",
        )

    assert list(make().plan.copied_for(1)) == [0]
    assert_resumes(make, 6_000, before=before, after=after, take=13)


def test_row_groups_too_few_for_each_rank_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eight 10 MB row groups mix well on one rank (above); four ranks read two each, and every
    # rank would keep about 0.16 of its order (measured: the next tests). Read whole or through
    # a filter, plain or nested, they are copied into small row groups (the next tests); read
    # by DuckDB itself they cannot be, and are warned about. The buffer named holds a rank's
    # kept rows.
    eight = write_wide(tmp_path / "eight", 8, ROWS)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with caplog.at_level("WARNING", logger="duckstream"):
        assert sorted(wide_dataset(eight).plan.copied_for(4)) == list(range(8))
        assert sorted(wide_dataset(eight, sql=FILTERED_SQL).plan.copied_for(4)) == list(range(8))
        assert sorted(wide_dataset(eight, sql=NESTED_SQL).plan.copied_for(4)) == list(range(8))
        wide_dataset(eight, sql=IN_PLACE_SQL)
    warned = [r.getMessage() for r in caplog.records if "storage order" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "shared by 4 ranks" in warned[0]
    assert "shuffle_buffer=4500" in warned[0]


@pytest.mark.slow
@pytest.mark.parametrize(("world", "workers"), [(4, 0), (4, 2), (8, 1)])
def test_row_groups_too_few_for_each_rank_are_read_from_copies_near_a_uniform_permutation(
    tmp_path: Path, world: int, workers: int
) -> None:
    # Eight 10 MB row groups: two a rank over 4 ranks, one over 8 (|rho| about 0.16 and more,
    # read in place). Shared by that many ranks, each file is read from a copy in small row
    # groups; by one rank, in place (the files mix there).
    source = write_wide(tmp_path / "data", 8, ROWS)

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: wide_dataset(source, seed=seed)

    near_uniform(make, world, workers, list(range(ROWS)), f"8 wide row groups over {world} ranks")
    assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 8


def test_the_world_of_stream_batches_and_of_a_hugging_face_split_reaches_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The same eight row groups read by DuckDB itself, the ranks given by
    # stream_batches' world and by split_dataset_by_node instead of WORLD_SIZE; one rank
    # alone is not warned about.
    eight = write_wide(tmp_path / "eight", 8, ROWS)
    sql = IN_PLACE_SQL
    kept = ROWS * 9 // 10

    def warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "storage order" in r.getMessage()]
        caplog.clear()
        return found

    with caplog.at_level("WARNING", logger="duckstream"):
        alone = stream_batches(eight, sql, shuffle=True, shuffle_buffer=1_000, world=World(0, 1))
        assert sum(b.num_rows for b in alone) == kept
        assert warnings() == []
        shared = stream_batches(eight, sql, shuffle=True, shuffle_buffer=1_000, world=World(3, 4))
        assert sum(b.num_rows for b in shared) == kept // 4
        (message,) = warnings()
        assert "shared by 4 ranks" in message

        # Another copy of the files: a warning is given once per plan, buffer and world size.
        copy = write_wide(tmp_path / "copy", 8, ROWS)
        rows = as_iterable_dataset(copy, sql, shuffle=True, shuffle_buffer=1_000)
        node = split_dataset_by_node(rows, rank=1, world_size=4)
        assert sum(1 for _ in node) == kept // 4
        (message,) = warnings()
        assert "shared by 4 ranks" in message


@pytest.mark.slow
def test_the_order_left_that_a_warning_estimates_is_what_each_rank_receives(tmp_path: Path) -> None:
    # Eight 10 MB row groups read by DuckDB itself, through a filter (in place: not
    # copied) over 1, 2 and 4 ranks, 6 seeds: the estimate (one standard deviation of |rho|
    # over seeds and ranks) against the root mean square measured on what each rank's loop
    # receives.
    source = write_wide(tmp_path / "data", 8, ROWS)
    for world in (1, 2, 4):
        measured = []
        for seed in range(6):

            def make(seed: int = seed) -> DuckStreamDataset:
                return wide_dataset(source, seed=seed, sql=IN_PLACE_SQL)

            per_rank, _ = run_world(make, world, 0, take=None)
            assert sorted(i for ids in per_rank for i in ids) == [i for i in range(ROWS) if i % 10]
            measured += [spearman(ids) for ids in per_rank]
        dataset = make()
        estimate = order_left(dataset.plan.layout, 1_000, dataset.cursor.streams, world)
        root_mean_square = float(np.sqrt(np.mean(np.square(measured))))
        assert estimate / 2 < root_mean_square < estimate * 2, (world, estimate, measured)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_filter_over_few_large_row_groups_rotates_them_and_keeps_each_row_once(
    tmp_path: Path, workers: int
) -> None:
    # 8 large row groups (20 MB) through a WHERE: the filter's count per row group places the
    # rotated starts in the rows it keeps; every kept row comes once, near a uniform order.
    source = write_wide(tmp_path / "data", 8, ROWS, 8_192)
    sql = "SELECT id, blob FROM source WHERE id % 5 <> 0"

    def make(seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: DuckStreamDataset(
            source, sql, batch_size=64, shuffle=True, seed=seed, shuffle_buffer=1_000
        )

    assert not make(0)().plan.layout.anywhere.any()
    near_uniform(make, 1, workers, [i for i in range(ROWS) if i % 5], "8 wide row groups, filtered")


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [((2, 2), (1, 3)), ((1, 0), (2, 1)), ((1, 3), (1, 3))])
def test_rotated_large_row_groups_resume_exactly_under_another_world_or_worker_count(
    tmp_path: Path, before: tuple[int, int], after: tuple[int, int]
) -> None:
    # The rotations depend on the workers a rank's loop interleaves: a resume replays the
    # stretch read before under its own workers, then shares out the rest under the new ones.
    source = write_wide(tmp_path / "data", 8, ROWS)

    def make() -> DuckStreamDataset:
        return wide_dataset(source, seed=5)

    assert not make().plan.layout.anywhere.any()
    assert_resumes(make, ROWS, before=before, after=after, take=37)


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [((1, 2), (2, 1)), ((2, 0), (1, 3))])
def test_an_outsize_file_read_over_the_whole_share_resumes_exactly(
    tmp_path: Path, before: tuple[int, int], after: tuple[int, int]
) -> None:
    # The outsize file is read by a stream of its own beside the groups (in parts at one
    # rank): a resume replays the stretch read before, with that stream's rows where they fell.
    sizes = LAYOUTS["one file among 60 small"]
    source = write(tmp_path / "data", sizes)

    def make() -> DuckStreamDataset:
        return DuckStreamDataset(
            source, "SELECT id FROM source", batch_size=64, shuffle=True, seed=2, shuffle_buffer=1_000
        )

    assert_resumes(make, sum(sizes), before=before, after=after, take=41)
