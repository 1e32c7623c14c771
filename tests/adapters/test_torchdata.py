"""torchdata's StatefulDataLoader over a DuckStreamDataset: its state resumes exactly, and its
state and DuckStreamLoader's load into each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from duckstream.core.resume import Stage
from duckstream.core.state import merge_slot_states, slot_state
from duckstream.errors import StateError
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.adapters.resume_check import ids_in
from tests.conftest import numbers_table
from tests.dev_install import require

stateful = require("torchdata.stateful_dataloader")
StatefulDataLoader = stateful.StatefulDataLoader

ROWS = 420


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("torchdata")
    for index in range(3):
        pq.write_table(
            numbers_table(index * 140, (index + 1) * 140),
            directory / f"part-{index}.parquet",
            row_group_size=35,
        )
    return directory


def make_dataset(source: Path, **kw: Any) -> DuckStreamDataset:
    options: dict[str, Any] = {"batch_size": 8, "shuffle": True, "seed": 3, "shuffle_buffer": 40}
    options.update(kw)
    return DuckStreamDataset(source, **options)


def take(loader: Any, count: int | None) -> list[int]:
    ids: list[int] = []
    for index, item in enumerate(loader if count != 0 else ()):
        ids.extend(ids_in(item))
        if count is not None and index + 1 >= count:
            break
    return ids


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize(("num_workers", "count", "every"), [(0, 7, 1), (2, 0, 1), (2, 9, 1), (3, 20, 4)])
def test_stateful_dataloader_resumes_exactly(source: Path, num_workers: int, count: int, every: int) -> None:
    def loader(dataset: DuckStreamDataset) -> Any:
        return StatefulDataLoader(
            dataset, batch_size=None, num_workers=num_workers, snapshot_every_n_steps=every
        )

    full = take(loader(make_dataset(source)), None)
    assert sorted(full) == list(range(ROWS))
    first = loader(make_dataset(source))
    head = take(first, count)
    state = roundtrip(first.state_dict())
    second = loader(make_dataset(source))
    second.load_state_dict(state)
    assert head + take(second, None) == full


@pytest.mark.slow
def test_stateful_dataloader_state_loads_into_duckstream_loader_with_other_workers(source: Path) -> None:
    first = StatefulDataLoader(make_dataset(source), batch_size=None, num_workers=2)
    head = take(first, 11)
    state = roundtrip(first.state_dict())
    resumed = DuckStreamLoader(make_dataset(source), num_workers=3)
    resumed.load_state_dict(state)
    rest = take(resumed, None)
    assert sorted(head + rest) == list(range(ROWS))
    # the merged state is DuckStreamLoader's own: 11 items of 8 rows under 2 workers
    dataset = make_dataset(source)
    dataset.load_state_dict(state)
    assert dataset.state_dict()["stages"] == [
        {
            "world_size": 1,
            "num_workers": 2,
            "batch_size": 8,
            "drop_last": False,
            "shuffle_buffer": 40,
            "consumed": 11,
            "chunk": 1,
            "streams": 16,
        }
    ]


@pytest.mark.slow
def test_duckstream_loader_state_resumes_under_stateful_dataloader(source: Path) -> None:
    # StatefulDataLoader hands over one batch at a time: the same order as a DuckStreamLoader
    # with one batch a transfer, which it then continues exactly.
    full = take(DuckStreamLoader(make_dataset(source), num_workers=2, batches_per_transfer=1), None)
    first = DuckStreamLoader(make_dataset(source), num_workers=2, batches_per_transfer=1)
    head = take(first, 5)
    dataset = make_dataset(source)
    dataset.load_state_dict(roundtrip(first.state_dict()))
    rest = take(StatefulDataLoader(dataset, batch_size=None, num_workers=2), None)
    assert head + rest == full
    # after several batches a transfer, the rest is still read exactly once
    chunked = DuckStreamLoader(make_dataset(source), num_workers=2, batches_per_transfer=4)
    head = take(chunked, 6)
    dataset = make_dataset(source)
    dataset.load_state_dict(roundtrip(chunked.state_dict()))
    rest = take(StatefulDataLoader(dataset, batch_size=None, num_workers=2), None)
    assert sorted(head + rest) == list(range(ROWS))


def test_one_workers_state_is_refused_outside_a_worker(source: Path) -> None:
    dataset = make_dataset(source)
    state = slot_state(dataset.state_dict(), worker=0, stage=Stage(1, 2, 8, False, 40, 3))
    with pytest.raises(StateError, match="one DataLoader worker's state"):
        dataset.load_state_dict(state)


def test_slot_states_merge_only_when_complete_and_alike(source: Path) -> None:
    base = make_dataset(source).state_dict()
    stage = Stage(1, 2, 8, False, 40, 0)
    one = slot_state(base, worker=0, stage=Stage(1, 2, 8, False, 40, 4))
    two = slot_state(base, worker=1, stage=Stage(1, 2, 8, False, 40, 3))
    assert merge_slot_states([one, two], extra_items=2)["stages"][-1]["consumed"] == 9
    with pytest.raises(StateError, match="one state from each of 2 workers"):
        merge_slot_states([one, one])
    other_epoch = slot_state({**base, "epoch": 1}, worker=1, stage=stage)
    with pytest.raises(StateError, match="same epoch and setup"):
        merge_slot_states([one, other_epoch])
    with pytest.raises(StateError, match="not one of the stage's 2 workers"):
        merge_slot_states([slot_state(base, worker=5, stage=stage)])


def without_order(state: Any) -> Any:
    """``state`` with every ``order`` key dropped, as builds before read-order revisions saved it."""
    if isinstance(state, dict):
        return {k: without_order(v) for k, v in state.items() if k != "order"}
    return state


@pytest.mark.slow
def test_a_stateful_dataloader_state_of_an_older_read_order_is_refused_in_the_middle_of_an_epoch(
    source: Path,
) -> None:
    # Its workers' rows are found by replaying the order they were read in; replayed in this
    # build's order, rows handed out would be taken for others. At the epoch's end it loads.
    first = StatefulDataLoader(make_dataset(source), batch_size=None, num_workers=2)
    take(first, 9)
    older = without_order(roundtrip(first.state_dict()))
    refusal = r"epoch 0 .*revision 1, .*set_epoch\(0\)"
    stateful_loader = StatefulDataLoader(make_dataset(source), batch_size=None, num_workers=2)
    stateful_loader.load_state_dict(older)  # kept for the workers, which load it
    with pytest.raises(StateError, match=refusal):
        take(stateful_loader, None)
    with pytest.raises(StateError, match=refusal):
        DuckStreamLoader(make_dataset(source), num_workers=2).load_state_dict(older)
    whole = StatefulDataLoader(make_dataset(source), batch_size=None, num_workers=2)
    full = take(whole, None)
    assert sorted(full) == list(range(ROWS))
    finished = without_order(roundtrip(whole.state_dict()))
    resumed = DuckStreamLoader(make_dataset(source), num_workers=2)
    resumed.load_state_dict(finished)
    assert take(resumed, None) == []  # the rest of epoch 0: nothing
    again = StatefulDataLoader(make_dataset(source), batch_size=None, num_workers=2)
    again.load_state_dict(finished)
    assert take(again, None) == full  # a finished state's next pass reads the epoch anew
