"""DuckStreamMix through the real DuckStreamLoader: proportions, exactly-once, len, resume."""

from __future__ import annotations

import math
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

from duckstream.errors import ConfigurationError, SourceError, StateError
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, DuckStreamMix
from tests.adapters.resume_check import as_rank, ids_in, run_world
from tests.conftest import numbers_table

# One table cut by two WHEREs (ids 0..239: multiples of 3, the rest) and a second Parquet
# tier (ids 1000..1089): three sources, every id in exactly one.
TABLE_ROWS, TIER_ROWS = 240, 90
ALL_IDS = set(range(TABLE_ROWS)) | set(range(1000, 1000 + TIER_ROWS))
SQL_A = "SELECT id, value FROM source WHERE id % 3 = 0"
SQL_B = "SELECT id, value FROM source WHERE id % 3 <> 0"
SQL_TIER = "SELECT id, value FROM source"


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    table, tier = tmp_path / "table", tmp_path / "tier"
    table.mkdir()
    tier.mkdir()
    pq.write_table(numbers_table(0, 120), table / "part-0.parquet", row_group_size=40)
    pq.write_table(numbers_table(120, TABLE_ROWS), table / "part-1.parquet", row_group_size=40)
    pq.write_table(numbers_table(1000, 1000 + TIER_ROWS), tier / "part-0.parquet", row_group_size=30)
    return table, tier


def mixer(
    paths: tuple[Path, Path],
    *,
    batch_size: int | None = None,
    shuffle: bool = True,
    weights: list[float] | None = None,
    **options: Any,
) -> Callable[[], DuckStreamMix]:
    table, tier = paths

    def make() -> DuckStreamMix:
        datasets = [
            DuckStreamDataset(table, SQL_A, batch_size=batch_size, shuffle=shuffle, seed=1),
            DuckStreamDataset(table, SQL_B, batch_size=batch_size, shuffle=shuffle, seed=2),
            DuckStreamDataset(tier, SQL_TIER, batch_size=batch_size, shuffle=shuffle, seed=3),
        ]
        return DuckStreamMix(datasets, weights, seed=11, names=["a", "b", "tier"], **options)

    return make


def assert_once(ids: list[int], padded_stretches: int) -> None:
    seen = Counter(ids)
    assert set(seen) == ALL_IDS, f"lost {sorted(ALL_IDS - set(seen))[:10]}"
    # only padding repeats rows: fewer than a world's worth per source and stretch
    assert sum(seen.values()) - len(ALL_IDS) <= padded_stretches


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (2, 0), (3, 2), (2, 3)])
def test_each_source_once_per_epoch_with_equal_ranks(
    sources: tuple[Path, Path], world_size: int, num_workers: int
) -> None:
    make = mixer(sources, batch_size=4)
    per_rank, state = run_world(make, world_size, num_workers, take=None)
    assert_once([i for ids in per_rank for i in ids], 3 * (world_size - 1) * 4)
    with as_rank(0, world_size):
        expected = len(DuckStreamLoader(make(), num_workers=num_workers))
    counts = []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            counts.append(sum(1 for _ in DuckStreamLoader(make(), num_workers=num_workers)))
    assert counts == [expected] * world_size
    assert state["epoch"] == 1
    assert state["stages"] == []


def test_first_exhausted_stops_at_the_same_count_on_every_rank(sources: tuple[Path, Path]) -> None:
    make = mixer(sources, stopping="first_exhausted", weights=[1.0, 1.0, 1.0])
    per_rank, _ = run_world(make, 2, 2, take=None)
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    with as_rank(0, 2):
        assert len(DuckStreamLoader(make(), num_workers=2)) == len(per_rank[0])
    every = [i for ids in per_rank for i in ids]
    assert len(set(every)) == len(every)  # nothing twice
    assert len(every) < len(ALL_IDS)  # the other sources were cut short


def test_realised_proportions_follow_the_weights(sources: tuple[Path, Path]) -> None:
    make = mixer(sources, weights=[0.5, 0.3, 0.2], num_items=6_000)
    loader = DuckStreamLoader(make())
    ids = [i for item in loader for i in ids_in(item)]
    assert len(ids) == 6_000
    n = len(ids)
    shares = [
        sum(1 for i in ids if i < 1000 and i % 3 == 0) / n,
        sum(1 for i in ids if i < 1000 and i % 3 != 0) / n,
        sum(1 for i in ids if i >= 1000) / n,
    ]
    for share, weight in zip(shares, [0.5, 0.3, 0.2], strict=True):
        assert abs(share - weight) <= 5 * math.sqrt(weight * (1 - weight) / n)
    assert loader.source_items() == {
        "a": round(shares[0] * n),
        "b": round(shares[1] * n),
        "tier": round(shares[2] * n),
    }


def test_num_items_is_split_equally_and_kept_across_a_resume(sources: tuple[Path, Path]) -> None:
    make = mixer(sources, batch_size=5, num_items=101)
    first, state = run_world(make, 2, 0, take=7)
    rest, after = run_world(make, 3, 2, take=None, state=state)
    assert [len(ids) for ids in first] == [35, 35]
    # 101 - 14 items owed to 3 ranks: 29 each; batches of 5 rows (the last of a source may be short)
    assert all(len(ids) <= 29 * 5 for ids in rest)
    assert after["epoch"] == 1
    with as_rank(0, 3):
        assert len(DuckStreamLoader(make(), num_workers=2)) == 34  # ceil(101 / 3), a fresh epoch


def test_in_process_state_resumes_in_a_loader(sources: tuple[Path, Path]) -> None:
    make = mixer(sources)
    mix = make()
    taken = [i for _, item in zip(range(50), mix, strict=False) for i in ids_in(item)]
    state = mix.state_dict()
    rest, _ = run_world(make, 2, 2, take=None, state=state)
    assert_once(taken + [i for ids in rest for i in ids], 3)


def test_epochs_differ_and_the_same_seed_repeats(sources: tuple[Path, Path]) -> None:
    make = mixer(sources)
    one, two = make(), make()
    first = [i for item in one for i in ids_in(item)]
    assert first == [i for item in two for i in ids_in(item)]
    one.set_epoch(1)
    assert [i for item in one for i in ids_in(item)] != first


def check_resume(
    sources: tuple[Path, Path],
    before: tuple[int, int],
    after: tuple[int, int],
    take: int,
    batch_size: int | None,
) -> None:
    make = mixer(sources, batch_size=batch_size)
    first, state = run_world(make, *before, take=take)
    rows = batch_size or 1
    if state["epoch"] == 1:  # the first run took the whole epoch: the next one starts afresh
        assert_once([i for ids in first for i in ids], 3 * rows * (before[0] - 1))
        return
    rest, end = run_world(make, *after, take=None, state=state)
    assert_once([i for ids in first + rest for i in ids], 3 * rows * (before[0] - 1 + after[0] - 1))
    assert end["epoch"] == 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.integers(1, 3),
    after=st.integers(1, 3),
    take=st.integers(0, 120),
    batch_size=st.sampled_from([None, 3]),
)
def test_resume_anywhere_under_another_world_reads_every_row_once(
    sources: tuple[Path, Path], before: int, after: int, take: int, batch_size: int | None
) -> None:
    check_resume(sources, (before, 0), (after, 0), take, batch_size)


@pytest.mark.parametrize(
    ("before", "after", "take"), [((2, 2), (3, 0), 17), ((1, 0), (1, 3), 100), ((2, 3), (2, 3), 9)]
)
def test_resume_with_workers_under_another_setup(
    sources: tuple[Path, Path], before: tuple[int, int], after: tuple[int, int], take: int
) -> None:
    check_resume(sources, before, after, take, None)


def test_two_resumes_and_an_epoch_boundary(sources: tuple[Path, Path]) -> None:
    make = mixer(sources)
    one, state = run_world(make, 2, 0, take=30)
    two, state = run_world(make, 3, 0, take=20, state=state)
    three, state = run_world(make, 1, 2, take=None, state=state)
    assert len(state["stages"]) == 0
    assert state["epoch"] == 1
    assert_once([i for ids in one + two + three for i in ids], 3 * (1 + 2))
    # at the boundary the state is the next epoch's start: a full epoch follows
    again, _ = run_world(make, 2, 0, take=None, state=state)
    assert_once([i for ids in again for i in ids], 3)


def test_a_state_of_another_mix_or_a_dataset_is_refused(sources: tuple[Path, Path]) -> None:
    _, state = run_world(mixer(sources), 1, 0, take=3)
    with pytest.raises(StateError, match="weights"):
        DuckStreamLoader(mixer(sources, weights=[1.0, 1.0, 1.0])()).load_state_dict(state)
    table, _ = sources
    single = DuckStreamDataset(table, SQL_A).state_dict()
    with pytest.raises(StateError, match="single dataset"):
        mixer(sources)().load_state_dict(single)


def test_sources_that_cannot_mix_are_refused_at_construction(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    table, tier = sources
    a = DuckStreamDataset(table, SQL_A)
    with pytest.raises(SourceError, match="has no rows"):
        DuckStreamMix([a, DuckStreamDataset(table, "SELECT id, value FROM source WHERE id < 0")])
    with pytest.raises(ConfigurationError, match=r"same columns.*\['id', 'value'\].*\['id', 'label'\]"):
        DuckStreamMix([a, DuckStreamDataset(tier, "SELECT id, label FROM source")])
    with pytest.raises(ConfigurationError, match="value: double vs float"):
        DuckStreamMix([a, DuckStreamDataset(tier, "SELECT id, value::FLOAT AS value FROM source")])
    with pytest.raises(ConfigurationError, match="share batch_size"):
        DuckStreamMix([a, DuckStreamDataset(tier, SQL_TIER, batch_size=4)])
    with pytest.raises(ConfigurationError, match="stopping"):
        DuckStreamMix([a], stopping="never")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="positive"):
        DuckStreamMix([a], [0.0])
    with pytest.raises(SourceError):  # a source that cannot be read fails before a mix exists
        DuckStreamMix([a, DuckStreamDataset(tmp_path / "missing" / "*.parquet")])


@pytest.mark.parametrize(("before", "after", "take"), [((2, 0), (3, 0), 11), ((3, 2), (1, 0), 5)])
def test_first_exhausted_resumes_without_repeating(
    sources: tuple[Path, Path], before: tuple[int, int], after: tuple[int, int], take: int
) -> None:
    make = mixer(sources, stopping="first_exhausted", weights=[1.0, 1.0, 1.0])
    first, state = run_world(make, *before, take=take)
    rest, end = run_world(make, *after, take=None, state=state)
    assert end["epoch"] == 1
    assert len({len(ids) for ids in rest}) == 1  # equal ranks after the resume too
    every = [i for ids in first + rest for i in ids]
    assert len(every) - len(set(every)) <= 3 * (before[0] - 1 + after[0] - 1)  # padding only


def test_stateful_dataloader_workers_are_refused(sources: tuple[Path, Path]) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    loader = stateful.StatefulDataLoader(mixer(sources)(), batch_size=None, num_workers=1)
    with pytest.raises(Exception, match="kept by DuckStreamLoader"):
        next(iter(loader))


def test_spawned_workers_read_every_row_once(sources: tuple[Path, Path]) -> None:
    loader = DuckStreamLoader(mixer(sources, batch_size=8)(), num_workers=2, multiprocessing_context="spawn")
    assert_once([i for item in loader for i in ids_in(item)], 0)


@pytest.mark.parametrize(
    ("options", "world", "take"),
    [
        ({}, (2, 2), 13),
        ({"batch_size": 4}, (1, 3), 7),
        ({"num_items": 500}, (2, 2), 101),
        ({"num_items": 500, "batch_size": 4}, (1, 0), 90),
        ({"stopping": "first_exhausted"}, (3, 0), 20),
    ],
)
def test_a_resume_under_the_same_setup_continues_the_very_same_order(
    sources: tuple[Path, Path], options: dict[str, Any], world: tuple[int, int], take: int
) -> None:
    make = mixer(sources, **options)
    whole, _ = run_world(make, *world, take=None)
    first, state = run_world(make, *world, take=take)
    assert len(state["stages"]) == 1
    rest, _ = run_world(make, *world, take=None, state=state)
    assert [a + b for a, b in zip(first, rest, strict=True)] == whole
    # and a second interruption folds into the same stage
    second, state = run_world(make, *world, take=5, state=state)
    assert len(state["stages"]) == 1
    third, _ = run_world(make, *world, take=None, state=state)
    assert [a + b + c for a, b, c in zip(first, second, third, strict=True)] == whole


@pytest.mark.slow
def test_a_source_read_from_a_copy_mixes_and_resumes_every_row_once(
    sources: tuple[Path, Path], tmp_path: Path
) -> None:
    # One source is a file of one 10 MB row group, read from a local copy in small row groups
    # (see duckstream.core.recut) whichever world reads it; a resume under another world and
    # worker count replays the first stretch under its own.
    _, tier = sources
    wide, rows = tmp_path / "wide", 2_600
    wide.mkdir()
    values = np.random.default_rng(0).integers(0, 256, size=(rows, 4_096), dtype=np.uint8)
    blobs = pa.array([bytes(v) for v in values], pa.binary())  # distinct: 10 MB as the footer counts
    table = pa.table({"id": np.arange(5_000, 5_000 + rows), "value": np.arange(rows) * 0.5, "blob": blobs})
    pq.write_table(table, wide / "part-0.parquet", row_group_size=rows)

    def make() -> DuckStreamMix:
        datasets = [
            DuckStreamDataset(wide, SQL_TIER, shuffle=True, seed=1, cache_dir=tmp_path / "cache"),
            DuckStreamDataset(tier, SQL_TIER, shuffle=True, seed=3),
        ]
        return DuckStreamMix(datasets, seed=11)

    assert list(DuckStreamDataset(wide, SQL_TIER, shuffle=True).plan.copied_for(1)) == [0]
    first, state = run_world(make, 1, 0, take=700)
    rest, _ = run_world(make, 2, 2, take=None, state=state)
    seen = Counter(i for ids in first + rest for i in ids)
    expected = set(range(5_000, 5_000 + rows)) | set(range(1000, 1000 + TIER_ROWS))
    assert set(seen) == expected
    assert sum(seen.values()) - len(expected) <= 2  # padding: a row a source for 2 ranks
    assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 1
