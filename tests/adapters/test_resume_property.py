"""Resume through the real DuckStreamDataset and DuckStreamLoader, as a property over the data's
shape, batching, balance policy, workers and world: what one epoch hands out, interrupted and
resumed under another (or the same) world, is every row once, up to what the policy allows."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.core.partition import Even
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.adapters.resume_check import as_rank, ids_in
from tests.conftest import numbers_table

Items = list[list[int]]  # the ids of each item one rank's loop received


def write_source(directory: Path, sizes: list[int], row_group: int) -> None:
    start = 0
    for index, rows in enumerate(sizes):
        table = numbers_table(start, start + rows).select(["id"])
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=row_group)
        start += rows


def run_ranks(
    options: dict[str, Any],
    world_size: int,
    num_workers: int,
    *,
    take: int | None,
    state: dict[str, Any] | None = None,
) -> tuple[list[Items], dict[str, Any], int]:
    """Each rank's items (after taking ``take`` of them, or all), rank 0's state and len()."""
    per_rank: list[Items] = []
    states, lengths = [], []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            loader = DuckStreamLoader(DuckStreamDataset(**options), num_workers=num_workers)
            if state is not None:
                loader.load_state_dict(state)
            lengths.append(len(loader))
            items: Items = []
            iterator = iter(loader)
            for item in iterator if take != 0 else ():
                items.append(ids_in(item))
                if take is not None and len(items) >= take:
                    break
            states.append(loader.state_dict())
            del iterator
        per_rank.append(items)
    assert all(s == states[0] for s in states), "ranks in lockstep hold the same state"
    assert len(set(lengths)) == 1, f"ranks disagree on len(): {lengths}"
    return per_rank, states[0], lengths[0]


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=3).filter(lambda s: sum(s) > 0),
    row_group=st.integers(1, 40),
    batch_size=st.one_of(st.none(), st.integers(1, 9)),
    drop_last=st.booleans(),
    even=st.sampled_from(["pad", "drop"]),
    shuffle=st.booleans(),
    before=st.tuples(st.integers(1, 4), st.integers(0, 3)),  # (world size, workers)
    change=st.sampled_from(["none", "world", "workers", "both"]),
    data=st.data(),
)
def test_an_interrupted_epoch_resumed_under_any_world_reads_every_row_once(
    sizes: list[int],
    row_group: int,
    batch_size: int | None,
    drop_last: bool,
    even: Even,
    shuffle: bool,
    before: tuple[int, int],
    change: str,
    data: st.DataObject,
) -> None:
    total = sum(sizes)
    world_size, num_workers = before
    if change in ("world", "both"):
        world_size = data.draw(st.integers(1, 4).filter(lambda w: w != before[0]), label="world")
    if change in ("workers", "both"):
        num_workers = data.draw(st.integers(0, 3).filter(lambda w: w != before[1]), label="workers")
    after = (world_size, num_workers)
    with tempfile.TemporaryDirectory() as tmp:
        write_source(Path(tmp), sizes, row_group)
        options: dict[str, Any] = {
            "source": tmp,
            "batch_size": batch_size,
            "drop_last": drop_last,
            "even": even,
            "shuffle": shuffle,
            "seed": 3,
            "shuffle_buffer": 11,
        }
        full, _, length = run_ranks(options, *before, take=None)
        take = data.draw(st.integers(0, length), label="take")
        head, state, _ = run_ranks(options, *before, take=take)
        rest, _, _ = run_ranks(options, *after, take=None, state=state)

    item_rows = batch_size or 1
    dropping = drop_last and batch_size is not None
    # The uninterrupted epoch: len() is what every rank yields. In every stretch batches are
    # full but the last of each worker (none under drop_last).
    assert [len(items) for items in full] == [length] * before[0]
    for ranks, workers in ((full, before[1]), (rest, after[1])):
        for items in ranks:
            partial = [ids for ids in items if len(ids) != item_rows]
            assert all(len(ids) < item_rows for ids in partial)
            assert len(partial) <= (0 if dropping else max(1, workers))
    # Resumed: every rank takes the same number of items, and the same as it would have.
    assert len({len(items) for items in rest}) == 1, "ranks of the resumed run differ"
    if after == before:
        for rank in range(before[0]):
            assert head[rank] + rest[rank] == full[rank], "a resume under the same setup diverged"
    seen = Counter(i for items in head + rest for ids in items for i in ids)
    assert set(seen) <= set(range(total))
    repeats = sum(seen.values()) - len(seen)
    lost = total - len(seen)
    stretches = (before[0] - 1) + (after[0] - 1)  # rows balance may pad or leave out per stretch
    if even == "drop":
        assert repeats == 0, f"{repeats} rows read twice"
    else:
        assert repeats <= stretches, f"{repeats} rows read twice"
    allowed = (stretches if even == "drop" else 0) + (
        after[0] * max(1, after[1]) * (item_rows - 1) if dropping else 0
    )
    assert lost <= allowed, f"{lost} rows lost, at most {allowed} allowed"
