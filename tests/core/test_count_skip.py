"""count="skip": a filtered source planned on its source rows, its SQL run on each batch.

Every passing row once per epoch, no failing row, ranks in lockstep with ``len()`` exact,
the rows of count="exact", exact resumption, no counting pass, and row-wise SQL only.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.catalog import LakehouseCatalog
from duckstream.core import planning
from duckstream.core.partition import Even
from duckstream.core.planning import prepare
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, StateError
from duckstream.storage import S3Settings
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, DuckStreamMix, stream_batches
from tests.adapters.resume_check import as_rank, run_world
from tests.conftest import numbers_table

S3 = S3Settings.resolve(None, None, None)

# Filters over `id` (0..n-1), each with the ids it keeps.
FILTERS: dict[str, Callable[[int], bool]] = {
    "id % 3 = 1": lambda i: i % 3 == 1,
    "id < 17": lambda i: i < 17,
    "id % 7 = 0 OR label LIKE 'odd-1%'": lambda i: i % 7 == 0 or (i % 2 == 1 and str(i).startswith("1")),
    "id < 0": lambda i: False,
    "id >= 0": lambda i: True,
}
# The last computes every column: DuckDB then reports positions for nothing it passes through.
PROJECTIONS = ["*", "id, value * 2 AS twice, vector", "id", "id + 0 AS id, value * 2 AS twice"]


def write_layout(directory: Path, files: list[list[int]]) -> int:
    """Files of consecutive ids, each with the given row-group sizes; the total row count."""
    start = 0
    for index, groups in enumerate(files):
        table = numbers_table(start, start + sum(groups))
        writer = pq.ParquetWriter(directory / f"part-{index:03d}.parquet", table.schema)
        offset = 0
        for rows in groups:
            writer.write_table(table.slice(offset, rows))
            offset += rows
        writer.close()
        start += sum(groups)
    return start


def slot_items(
    source: Path, sql: str, world_size: int, num_workers: int, **kw: Any
) -> list[list[pa.RecordBatch]]:
    """The batches each slot yields, slot by slot (rank-major)."""
    out = []
    for rank in range(world_size):
        for worker in range(num_workers):
            world = World(rank, world_size, worker, num_workers)
            out.append(list(stream_batches(source, sql, world=world, **kw)))
    return out


def ids(batches: list[pa.RecordBatch]) -> list[int]:
    return [i for b in batches for i in b.column("id").to_pylist()]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=3), min_size=1, max_size=3),
    where=st.sampled_from(sorted(FILTERS)),
    projection=st.sampled_from(PROJECTIONS),
    world_size=st.integers(1, 4),
    num_workers=st.integers(1, 2),
    batch_size=st.integers(1, 16),
    shuffle=st.booleans(),
    even=st.sampled_from(["split", "pad", "drop"]),
    seed=st.integers(0, 2**31),
)
def test_every_passing_row_once_in_lockstep_and_the_rows_of_an_exact_count(
    files: list[list[int]],
    where: str,
    projection: str,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
    even: Even,
    seed: int,
) -> None:
    sql = f"SELECT {projection} FROM source WHERE {where}"
    keep = FILTERS[where]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp)
        total = write_layout(source, files)
        kw: dict[str, Any] = {"batch_size": batch_size, "shuffle": shuffle, "even": even, "seed": seed}
        skipped = slot_items(source, sql, world_size, num_workers, count="skip", **kw)
        exact = slot_items(source, sql, 1, 1, count="exact", batch_size=64)
        dataset = DuckStreamDataset(source, sql, batch_size=batch_size, even=even, count="skip")
        lengths = []
        for rank in range(world_size):
            dataset.detect_ranks = lambda rank=rank: (rank, world_size)  # type: ignore[misc]
            lengths.append(len(DuckStreamLoader(dataset, num_workers=num_workers)))
    passing = [i for i in range(total) if keep(i)]
    batches = [b for slot in skipped for b in slot]
    seen = Counter(ids(batches))
    assert all(keep(i) for i in seen), "a row that fails the filter was yielded"
    if even == "split":
        assert seen == Counter(passing)  # every passing row exactly once
    elif even == "pad":
        assert set(seen) == set(passing)
        assert sum(seen.values()) - len(passing) < world_size  # only padding repeats rows
    else:
        assert max(seen.values(), default=1) == 1
    # Items are batches of source rows: each at most batch_size rows, as many per rank as
    # len() says, and every rank as many as the others (except under "split").
    assert all(b.num_rows <= batch_size for b in batches)
    per_rank = [
        sum(len(s) for s in skipped[r * num_workers : (r + 1) * num_workers]) for r in range(world_size)
    ]
    if even != "split":
        assert per_rank == lengths
        assert len(set(per_rank)) == 1
    # The same rows, columns and types as an exact count.
    exact_batches = [b for slot in exact for b in slot]
    schema = exact_batches[0].schema if exact_batches else None
    if schema is not None:
        assert all(b.schema == schema for b in batches)
    if even == "split":
        rows = sorted((tuple(r.items()) for b in batches for r in b.to_pylist()), key=str)
        want = sorted((tuple(r.items()) for b in exact_batches for r in b.to_pylist()), key=str)
        assert rows == want


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four files of 60 rows (ids 0..239), row groups of 13."""
    directory = tmp_path_factory.mktemp("skip")
    write_layout(directory, [[13, 13, 13, 13, 8]] * 4)
    return directory


SQL = "SELECT id, vector FROM source WHERE id % 5 = 2"
PASSING = [i for i in range(240) if i % 5 == 2]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_size=st.integers(1, 12),
    shuffle=st.booleans(),
    take=st.integers(0, 30),
    seed=st.integers(0, 2**31),
    drop_last=st.booleans(),
)
def test_a_dataset_resumes_with_exactly_the_remaining_passing_rows(
    layout: Path, batch_size: int, shuffle: bool, take: int, seed: int, drop_last: bool
) -> None:
    def make() -> DuckStreamDataset:
        return DuckStreamDataset(
            layout, SQL, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, count="skip"
        )

    items = list(make())
    whole = [i for item in items for i in item["id"].tolist()]
    first = make()
    before: list[int] = []
    iterator = iter(first)
    for _ in range(min(take, len(items))):  # a pass run to its end saves the next epoch's start
        before.extend(next(iterator)["id"].tolist())
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    after = [i for item in second for i in item["id"].tolist()]
    assert before + after == whole  # the same epoch, continued exactly where it stopped
    if not drop_last:
        assert sorted(whole) == PASSING


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after", "take"),
    [((1, 2), (1, 2), 7), ((2, 2), (1, 0), 3), ((1, 0), (3, 2), 11)],
)
def test_a_loader_with_workers_resumes_with_the_remaining_passing_rows(
    layout: Path, before: tuple[int, int], after: tuple[int, int], take: int
) -> None:
    def make() -> DuckStreamDataset:
        return DuckStreamDataset(layout, SQL, batch_size=4, shuffle=True, seed=3, count="skip")

    first, state = run_world(make, *before, take=take)
    rest, _ = run_world(make, *after, take=None, state=state)
    seen = Counter(i for part in first + rest for i in part)
    assert set(seen) == set(PASSING)
    # Only padding repeats rows: fewer than a world's worth per stretch.
    assert sum(seen.values()) - len(PASSING) <= (before[0] - 1) + (after[0] - 1)


def test_planning_with_skip_runs_no_counting_pass(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            passes.append(name)
            return real(*args, **kwargs)  # counts for real

        return run

    for name in ("count_per_range", "count_rows"):
        monkeypatch.setattr(planning, name, counted(name, getattr(planning, name)))
    exact = prepare(layout, SQL, s3=S3)
    assert passes == ["count_per_range"]
    assert exact.num_rows == len(PASSING)
    passes.clear()
    skipped = prepare(layout, SQL, s3=S3, count="skip")
    assert passes == []
    assert skipped.late is not None
    assert skipped.num_rows == 240  # source rows, from the footers
    assert skipped.columns == ("id", "vector")  # the columns the SQL names
    assert skipped.schema == exact.schema
    assert skipped.fingerprint != exact.fingerprint


def test_without_a_filter_skip_changes_nothing(layout: Path) -> None:
    for sql in (None, "SELECT id, value * 2 AS twice FROM source"):
        skipped, exact = prepare(layout, sql, s3=S3, count="skip"), prepare(layout, sql, s3=S3)
        assert skipped.late is None
        assert skipped.fingerprint == exact.fingerprint
        assert (skipped.query, skipped.columns, skipped.schema) == (exact.query, exact.columns, exact.schema)
    dataset = DuckStreamDataset(layout, "SELECT id FROM source", count="skip")  # rows are fine
    assert dataset.num_rows == 240


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT count(*) AS n FROM source WHERE id > 3", "more than one row.*AGGREGATE"),
        ("SELECT DISTINCT label FROM source WHERE id > 3", "more than one row"),
        ("SELECT id FROM source WHERE id > 3 ORDER BY value", "more than one row"),
        ("SELECT id FROM source WHERE id > 3 LIMIT 5", "more than one row.*LIMIT"),
        ("SELECT id, row_number() OVER () AS n FROM source WHERE id > 3", "more than one row.*WINDOW"),
        ("SELECT a.id FROM source a JOIN source b ON a.id = b.id + 1 WHERE a.id > 3", "more than one row"),
        ("SELECT id FROM source WHERE id IN (SELECT max(id) FROM source)", "more than one row"),
        ("SELECT id, unnest(vector) AS x FROM source WHERE id > 3", "unnests"),
    ],
)
def test_sql_that_is_not_row_wise_is_refused_naming_it(layout: Path, sql: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as caught:
        prepare(layout, sql, s3=S3, count="skip")
    message = str(caught.value)
    assert "count='skip'" in message
    assert sql in message


def test_an_unknown_count_is_refused(layout: Path) -> None:
    with pytest.raises(ConfigurationError, match="count must be 'exact' or 'skip', found 'rough'"):
        prepare(layout, SQL, s3=S3, count="rough")  # type: ignore[arg-type]


def test_num_rows_is_refused_len_is_exact_and_rows_need_a_batch_size(layout: Path) -> None:
    dataset = DuckStreamDataset(layout, SQL, batch_size=7, count="skip")
    with pytest.raises(ConfigurationError, match=r"num_rows is not known.*count='skip'.*len\(\)"):
        _ = dataset.num_rows
    items = list(dataset)
    assert len(items) == len(dataset) == -(-240 // 7)
    assert "source_rows=240" in repr(dataset)
    with pytest.raises(ConfigurationError, match="count='skip' needs a batch_size"):
        DuckStreamDataset(layout, SQL, count="skip")


@pytest.mark.parametrize("output", ["torch", "numpy", "python", "arrow"])
def test_empty_and_short_batches_collate_to_every_output(tmp_path: Path, output: Any) -> None:
    # 0..19 pass in the first batches, nothing after: short, then empty batches.
    write_layout(tmp_path, [[40]])
    dataset = DuckStreamDataset(
        tmp_path,
        "SELECT id, vector, label FROM source WHERE id < 13",
        batch_size=8,
        output=output,
        count="skip",
    )
    items = list(DuckStreamLoader(dataset))
    assert len(items) == 5
    sizes = [len(item["id"]) if output != "arrow" else item.num_rows for item in items]
    assert sizes == [8, 5, 0, 0, 0]
    empty = items[-1]
    if output == "torch":
        assert tuple(empty["vector"].shape) == (0, 3)
        assert empty["label"] == []
    elif output == "numpy":
        assert isinstance(empty["vector"], np.ndarray)
        assert empty["vector"].shape == (0, 3)
    elif output == "arrow":
        assert empty.schema == items[0].schema
    else:
        assert empty == {"id": [], "vector": [], "label": []}


def test_lockstep_ranks_under_a_data_module_style_world(layout: Path) -> None:
    """Every rank yields len() items (some empty), read with the environment's rank."""
    counts = []
    for rank in range(3):
        with as_rank(rank, 3):
            dataset = DuckStreamDataset(layout, SQL, batch_size=5, shuffle=True, count="skip")
            counts.append((len(dataset), len(list(dataset))))
    assert len(set(counts)) == 1
    assert counts[0][0] == counts[0][1]


@pytest.mark.slow
def test_a_pinned_lake_table_with_a_filter_streams_the_catalogs_rows(tmp_path: Path) -> None:
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as cat:
        cat.con.register("numbers", numbers_table(0, 500).drop_columns(["vector"]))
        cat.con.execute("CREATE TABLE t AS SELECT * FROM numbers")
        cat.con.execute("INSERT INTO t SELECT id + 500, value, label FROM numbers WHERE id < 200")
        cat.con.execute("INSERT INTO t SELECT * FROM numbers WHERE id = 7")  # inlined in the catalog
        cat.con.execute("DELETE FROM t WHERE id % 11 = 0")
        table = cat.table("t")
        sql = "SELECT id, value * 2 AS twice FROM source WHERE id % 3 = 1"
        want = cat.con.execute(
            sql.replace("FROM source", f"FROM t AT (VERSION => {table.version})")
        ).fetchall()
        plan = prepare(table, sql, s3=table.s3, count="skip")
        assert plan.late is not None
        assert plan.lake is not None
        assert not all(plan.lake.direct)
        in_order = [
            tuple(r.values())
            for b in stream_batches(table, sql, batch_size=16, count="skip")
            for r in b.to_pylist()
        ]
        assert in_order == want
        shuffled = [
            tuple(r.values())
            for rank in range(2)
            for b in stream_batches(
                table, sql, batch_size=16, count="skip", shuffle=True, world=World(rank, 2), even="split"
            )
            for r in b.to_pylist()
        ]
        assert Counter(shuffled) == Counter(want)


def test_a_state_saved_under_one_count_is_refused_under_the_other(layout: Path) -> None:
    exact = DuckStreamDataset(layout, SQL, batch_size=4)
    iterator = iter(exact)
    next(iterator)
    state = exact.state_dict()
    skipped = DuckStreamDataset(layout, SQL, batch_size=4, count="skip")
    with pytest.raises(StateError, match="another plan"):
        skipped.load_state_dict(state)


@pytest.mark.parametrize("stop", [1, 20, len(PASSING) - 1])
def test_a_hugging_face_dataset_yields_the_passing_rows_and_resumes(layout: Path, stop: int) -> None:
    pytest.importorskip("datasets")
    from duckstream.stream import as_iterable_dataset

    dataset = as_iterable_dataset(layout, SQL, shuffle=True, seed=5, count="skip")
    full = [row["id"] for row in dataset]
    assert sorted(full) == PASSING
    iterator = iter(dataset)
    head = [next(iterator)["id"] for _ in range(stop)]
    state = dataset.state_dict()
    resumed = as_iterable_dataset(layout, SQL, shuffle=True, seed=5, count="skip")
    resumed.load_state_dict(state)
    assert head + [row["id"] for row in resumed] == full


def test_a_data_module_passes_count_to_its_datasets(layout: Path) -> None:
    pytest.importorskip("lightning")
    from duckstream.lightning import DuckStreamDataModule

    module = DuckStreamDataModule(layout, sql=SQL, batch_size=8, count="skip")
    dataset = module.dataset("train")
    assert isinstance(dataset, DuckStreamDataset)
    assert dataset.plan.late is not None
    assert sorted(i for item in DuckStreamLoader(dataset) for i in item["id"].tolist()) == PASSING


def test_a_mix_draws_a_skip_dataset_by_its_source_rows(layout: Path, tmp_path: Path) -> None:
    """Each source once per epoch: the skip dataset's passing rows and every row of the other."""
    write_layout(tmp_path, [[50]])
    skipped = DuckStreamDataset(layout, SQL, batch_size=8, shuffle=True, count="skip", output="arrow")
    plain = DuckStreamDataset(tmp_path, "SELECT id, vector FROM source", batch_size=8, output="arrow")
    mix = DuckStreamMix([skipped, plain], seed=3, names=["skip", "plain"])
    assert mix.weights == pytest.approx([240 / 290, 50 / 290])  # source rows, not passing rows
    with pytest.raises(ConfigurationError, match="count='skip'"):
        _ = mix.num_rows
    items = list(DuckStreamLoader(mix))
    assert len(items) == len(mix) == 30 + 7
    got = Counter(i for batch in items for i in batch.column("id").to_pylist())
    assert got == Counter(PASSING + list(range(50)))
