"""DuckStreamDataset and DuckStreamLoader: items, epochs, workers, state and resume."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from duckstream.adapters import torch as torch_adapter
from duckstream.adapters.collate import Output
from duckstream.core.pipeline import read_slot
from duckstream.errors import ConfigurationError, StateError
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.adapters.resume_check import as_rank, assert_resumes, ids_in, run_world
from tests.conftest import numbers_table

ROWS = 840  # divisible by every world size up to 8: padding only appears after a resume


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("torch")
    for index in range(4):
        table = numbers_table(index * 210, (index + 1) * 210)
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=70)
    return directory


def make_dataset(source: Path, **kw: Any) -> DuckStreamDataset:
    options: dict[str, Any] = {"batch_size": 16, "shuffle": True, "seed": 5, "shuffle_buffer": 50}
    options.update(kw)
    return DuckStreamDataset(source, **options)


def test_it_is_a_torch_iterable_dataset_with_sizes(source: Path) -> None:
    dataset = make_dataset(source)
    assert isinstance(dataset, IterableDataset)
    assert dataset.num_rows == ROWS
    assert len(dataset) == -(-ROWS // 16)
    assert len(list(dataset)) == len(dataset)
    filtered = make_dataset(source, sql="SELECT id FROM source WHERE id < 100", batch_size=None)
    assert filtered.num_rows == 100
    assert len(filtered) == 100


def test_batch_items_are_tensors_and_lists(source: Path) -> None:
    item = next(iter(make_dataset(source, shuffle=False)))
    assert item["id"].tolist() == list(range(16))
    assert item["id"].dtype == torch.int64
    assert item["vector"].shape == (16, 3)
    assert item["vector"].dtype == torch.float32
    assert item["label"][:2] == ["even-0", "odd-1"]


def test_row_items_and_other_outputs(source: Path) -> None:
    row = next(iter(make_dataset(source, batch_size=None, shuffle=False)))
    assert row["id"].item() == 0
    assert row["vector"].tolist() == [0.0, 1.0, 2.0]
    assert row["label"] == "even-0"
    arrow = next(iter(make_dataset(source, output="arrow", shuffle=False)))
    assert isinstance(arrow, pa.RecordBatch)
    assert arrow.num_rows == 16
    numpy_item = next(iter(make_dataset(source, output="numpy", shuffle=False)))
    assert numpy_item["vector"].shape == (16, 3)
    python_item = next(iter(make_dataset(source, output="python", batch_size=None, shuffle=False)))
    assert python_item == {"id": 0, "value": 0.0, "label": "even-0", "vector": [0.0, 1.0, 2.0]}


class Summary(NamedTuple):
    """What the transform below makes of an item."""

    ids: list[int]
    doubled_values: float


def summarise(item: dict[str, Any]) -> Summary:
    return Summary(ids_in(item), 2 * float(item["value"].sum()))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    ("batch_size", "drop_last", "rows"), [(100, True, 800), (100, False, ROWS), (None, False, ROWS)]
)
def test_the_transform_makes_each_item_in_process_and_in_workers(
    source: Path, num_workers: int, batch_size: int | None, drop_last: bool, rows: int
) -> None:
    dataset = make_dataset(source, batch_size=batch_size, drop_last=drop_last, transform=summarise)
    items = list(DuckStreamLoader(dataset, num_workers=num_workers))
    assert len(items) == len(dataset)
    assert all(isinstance(item, Summary) for item in items)
    # Each summary is of the item it was given: the values of exactly those rows.
    assert all(item.doubled_values == sum(item.ids) for item in items)
    ids = Counter(i for item in items for i in item.ids)
    assert len(ids) == sum(ids.values()) == rows
    assert set(ids) <= set(range(ROWS))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_reads_every_row_once_per_epoch_and_reshuffles(source: Path, num_workers: int) -> None:
    loader = DuckStreamLoader(make_dataset(source), num_workers=num_workers)
    epochs = [[i for item in loader for i in ids_in(item)] for _ in range(2)]
    for ids in epochs:
        assert sorted(ids) == list(range(ROWS))
    assert epochs[0] != epochs[1]
    assert len(loader) == len(list(loader))


def test_loader_order_is_reproducible(source: Path) -> None:
    runs = [
        [i for item in DuckStreamLoader(make_dataset(source), num_workers=2) for i in ids_in(item)]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_loader_len_counts_partial_batches_of_each_worker(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source, batch_size=100), num_workers=2)
    # 420 rows per worker -> 5 batches each
    assert len(loader) == 10
    assert len(list(loader)) == 10


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((1, 0), (1, 0)),
        ((1, 2), (1, 2)),
        ((1, 2), (1, 3)),
        ((1, 0), (1, 2)),
        ((2, 2), (4, 1)),
        ((4, 1), (3, 2)),
        ((1, 1), (8, 0)),
    ],
)
@pytest.mark.parametrize("take", [1, 7])
def test_resume_mid_epoch_under_another_world(
    source: Path, before: tuple[int, int], after: tuple[int, int], take: int
) -> None:
    assert_resumes(lambda: make_dataset(source), ROWS, before=before, after=after, take=take)


def test_resume_from_the_start(source: Path) -> None:
    assert_resumes(lambda: make_dataset(source), ROWS, before=(2, 2), after=(1, 3), take=0)


def test_resume_at_end_of_data_closes_the_epoch(source: Path) -> None:
    # every item taken, but the pass not closed when the state was saved
    loader = DuckStreamLoader(make_dataset(source), num_workers=2)
    iterator = iter(loader)
    items = [next(iterator) for _ in range(len(loader))]
    state = loader.state_dict()
    assert state["epoch"] == 0
    resumed = DuckStreamLoader(make_dataset(source), num_workers=0)
    resumed.load_state_dict(state)
    assert list(resumed) == []  # the rest of epoch 0: nothing
    assert sorted(i for item in resumed for i in ids_in(item)) == list(range(ROWS))  # epoch 1
    assert sorted(i for item in items for i in ids_in(item)) == list(range(ROWS))


def test_state_at_epoch_boundary_starts_the_next_epoch(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source), num_workers=2)
    list(loader)
    second_epoch = [i for item in loader for i in ids_in(item)]
    boundary = DuckStreamLoader(make_dataset(source), num_workers=2)
    list(boundary)
    state = boundary.state_dict()
    assert (state["epoch"], state["stages"]) == (1, [])
    resumed = DuckStreamLoader(make_dataset(source), num_workers=2)
    resumed.load_state_dict(state)
    assert [i for item in resumed for i in ids_in(item)] == second_epoch


@pytest.mark.parametrize(("num_workers", "transfer"), [(0, 1), (2, 1), (3, 1), (2, 3), (3, 4)])
@pytest.mark.parametrize("take", [1, 9, 13, 26])
def test_unchanged_resume_continues_exactly_as_the_uninterrupted_run(
    source: Path, num_workers: int, transfer: int, take: int
) -> None:
    options: dict[str, Any] = {"batches_per_transfer": transfer}
    full, _ = run_world(lambda: make_dataset(source), 2, num_workers, take=None, **options)
    head, state = run_world(lambda: make_dataset(source), 2, num_workers, take=take, **options)
    tail, _ = run_world(lambda: make_dataset(source), 2, num_workers, take=None, state=state, **options)
    for rank in range(2):
        assert head[rank] + tail[rank] == full[rank]
    # and a second interruption folds into the same stage: the state does not grow
    _, state2 = run_world(lambda: make_dataset(source), 2, num_workers, take=1, state=state, **options)
    assert len(state2["stages"]) == 1


@pytest.mark.parametrize("take", [2, 7])
def test_resume_from_chunked_transfers_under_another_transfer_size(source: Path, take: int) -> None:
    head, state = run_world(lambda: make_dataset(source), 2, 2, take=take, batches_per_transfer=3)
    assert state["stages"][0]["chunk"] == 3
    rest, _ = run_world(lambda: make_dataset(source), 2, 3, take=None, state=state, batches_per_transfer=2)
    seen = Counter(i for ids in head + rest for i in ids)
    assert set(seen) == set(range(ROWS))
    assert sum(seen.values()) - ROWS <= 1  # padding of the second stretch only


@pytest.mark.parametrize(("take", "workers"), [(5, 2), (7, 3)])
def test_a_state_saved_with_every_transfer_a_chunk_resumes_each_row_once(
    source: Path, take: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """States saved before first transfers were staggered (no "staggered" in their stages)
    count their workers' items with every transfer a chunk."""
    from duckstream.core import resume

    with monkeypatch.context() as earlier:
        earlier.setattr(resume, "first_transfer", lambda chunk, workers, worker, staggered=True: chunk)
        head, state = run_world(lambda: make_dataset(source), 2, workers, take=take, batches_per_transfer=3)
    assert state["stages"][0].pop("staggered") is True
    rest, _ = run_world(
        lambda: make_dataset(source), 2, workers, take=None, state=state, batches_per_transfer=3
    )
    seen = Counter(i for ids in head + rest for i in ids)
    assert set(seen) == set(range(ROWS))
    assert sum(seen.values()) - ROWS <= 1  # padding of the second stretch only
    # Counted with staggered transfers instead, the same state repeats and skips rows.
    state["stages"][0]["staggered"] = True
    wrong, _ = run_world(
        lambda: make_dataset(source), 2, workers, take=None, state=state, batches_per_transfer=3
    )
    assert Counter(i for ids in head + wrong for i in ids) != seen


def test_transfers_hold_several_batches_yet_items_stay_batches(source: Path) -> None:
    plain = [ids_in(item) for item in DuckStreamLoader(make_dataset(source), num_workers=2)]
    chunked = DuckStreamLoader(make_dataset(source), num_workers=2, batches_per_transfer=4)
    items = [ids_in(item) for item in chunked]
    assert all(len(ids) <= 16 for ids in items)
    assert sorted(i for ids in items for i in ids) == list(range(ROWS))
    assert items != plain  # four batches of a worker, then four of the next
    assert len(items) == len(chunked)
    with pytest.raises(ConfigurationError, match="batches_per_transfer must be at least 1"):
        DuckStreamLoader(make_dataset(source), num_workers=2, batches_per_transfer=0)


def test_dataset_state_in_process_and_loader_state_agree(source: Path) -> None:
    dataset = make_dataset(source)
    iterator = iter(dataset)
    taken = [i for _ in range(5) for i in ids_in(next(iterator))]
    state = dataset.state_dict()
    loader = DuckStreamLoader(make_dataset(source), num_workers=2)
    loader.load_state_dict(state)
    rest = [i for item in loader for i in ids_in(item)]
    assert sorted(taken + rest) == list(range(ROWS))


def test_state_is_small_plain_and_json(source: Path) -> None:
    import json

    _, state = run_world(lambda: make_dataset(source), 2, 2, take=3)
    assert json.loads(json.dumps(state)) == state
    assert len(json.dumps(state)) < 1_000


def test_state_from_another_seed_or_plan_is_refused(source: Path, tmp_path: Path) -> None:
    _, state = run_world(lambda: make_dataset(source), 1, 0, take=2)
    with pytest.raises(StateError, match="expected seed=6, found 5"):
        make_dataset(source, seed=6).load_state_dict(state)
    with pytest.raises(StateError, match=r"another plan.*SQL changed: saved for none .*now 'SELECT \* FROM"):
        make_dataset(source, sql="SELECT * FROM source WHERE id > 3").load_state_dict(state)
    with pytest.raises(StateError, match="missing"):
        make_dataset(source).load_state_dict({"version": 1})
    # The files changed: one added at the end, one removed, one rewritten with other rows.
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    state = make_dataset(changed).state_dict()
    pq.write_table(numbers_table(840, 850), changed / "part-9.parquet")
    with pytest.raises(
        StateError, match=r"4 files when saved, 5 now\): the last file was '.*part-3.parquet', now '.*part-9"
    ):
        make_dataset(changed).load_state_dict(state)
    (changed / "part-9.parquet").unlink()
    (changed / "part-2.parquet").unlink()
    with pytest.raises(
        StateError,
        match=r"4 files when saved, 3 now\): one between .*part-0.* and .*part-3.* was added, removed",
    ):
        make_dataset(changed).load_state_dict(state)
    pq.write_table(numbers_table(420, 500), changed / "part-2.parquet")
    with pytest.raises(StateError, match=r"the same files hold other rows: 840 rows .* when saved, 710 now"):
        make_dataset(changed).load_state_dict(state)
    # A state saved before plans were described still loads, and is refused in general words.
    pq.write_table(numbers_table(420, 630), changed / "part-2.parquet", row_group_size=70)
    older = {k: v for k, v in state.items() if k != "plan"}
    make_dataset(changed).load_state_dict(older)
    with pytest.raises(StateError, match="the data or the SQL changed"):
        make_dataset(source, sql="SELECT * FROM source WHERE id > 3").load_state_dict(older)


def test_workers_under_spawn(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source), num_workers=2, multiprocessing_context="spawn")
    assert sorted(i for item in loader for i in ids_in(item)) == list(range(ROWS))


def test_plain_dataloader_with_workers_still_partitions(source: Path) -> None:
    loader = DataLoader(make_dataset(source), batch_size=None, num_workers=2)
    assert sorted(i for item in loader for i in ids_in(item)) == list(range(ROWS))


def test_ranks_from_environment_split_the_rows(source: Path) -> None:
    seen: Counter[int] = Counter()
    for rank in range(3):
        with as_rank(rank, 3):
            seen.update(i for item in DuckStreamLoader(make_dataset(source)) for i in ids_in(item))
    assert seen == Counter(range(ROWS))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"even": "all"}, "even"),
        ({"output": "jax"}, "output"),
        ({"seed": -1}, "seed"),
        ({"shuffle_buffer": 0}, "shuffle_buffer"),
    ],
)
def test_bad_settings_are_refused(source: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_dataset(source, **kwargs)


@pytest.mark.parametrize(("kwargs"), [{"batch_size": 4}, {"shuffle": True}, {"in_order": False}])
def test_loader_refuses_settings_that_belong_to_the_dataset(source: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        DuckStreamLoader(make_dataset(source), num_workers=1, **kwargs)


def test_persistent_workers_follow_the_epochs(source: Path) -> None:
    plain = DuckStreamLoader(make_dataset(source), num_workers=2)
    expected = [[i for item in plain for i in ids_in(item)] for _ in range(3)]
    persistent = DuckStreamLoader(make_dataset(source), num_workers=2, persistent_workers=True)
    epochs = [[i for item in persistent for i in ids_in(item)] for _ in range(3)]
    assert epochs == expected
    assert len({tuple(e) for e in epochs}) == 3


def test_persistent_workers_resume_then_move_on(source: Path) -> None:
    full = DuckStreamLoader(make_dataset(source), num_workers=2)
    first, second = ([i for item in full for i in ids_in(item)] for _ in range(2))
    head, state = run_world(lambda: make_dataset(source), 1, 2, take=5)
    resumed = DuckStreamLoader(make_dataset(source), num_workers=2, persistent_workers=True)
    resumed.load_state_dict(state)
    rest = [i for item in resumed for i in ids_in(item)]
    assert head[0] + rest == first
    assert [i for item in resumed for i in ids_in(item)] == second  # stale stages not reapplied
    with pytest.raises(ConfigurationError, match="persistent workers are already running"):
        resumed.load_state_dict(state)


@pytest.mark.parametrize("output", ["arrow", "torch", "numpy", "python"])
def test_batches_from_workers_stay_intact_while_the_loop_holds_them(
    source: Path, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    # Workers hand batches over through a shared ring that they reuse: holding every batch of
    # the epoch must not let later ones overwrite earlier ones, whether the batch was copied out
    # (Arrow) or collated where it lay. A ring of a few batches wraps around within the epoch.
    monkeypatch.setattr(torch_adapter, "ring_capacity", lambda transfer_bytes: 8 * 1024)
    loader = DuckStreamLoader(make_dataset(source, output=output, shuffle_buffer=60), num_workers=2)
    held = list(loader)  # every item of the epoch, looked at only once all have arrived
    columns = [
        item.to_pydict()
        if output == "arrow"
        else {name: list(item[name]) for name in ("id", "value", "label")}
        for item in held
    ]
    ids = [int(i) for column in columns for i in column["id"]]
    assert sorted(ids) == list(range(ROWS))
    for column in columns:  # every row still carries its own values
        row_ids = [int(i) for i in column["id"]]
        assert [float(v) for v in column["value"]] == [i * 0.5 for i in row_ids]
        assert column["label"] == [f"even-{i}" if i % 2 == 0 else f"odd-{i}" for i in row_ids]


def test_without_room_for_rings_workers_send_batches_the_plain_way(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_adapter, "ring_fits", lambda workers, capacity: False)
    dataset = make_dataset(source)
    assert sorted(i for item in DuckStreamLoader(dataset, num_workers=2) for i in ids_in(item)) == list(
        range(ROWS)
    )
    assert dataset.transport.ring is None


@pytest.mark.parametrize("persistent", [False, True])
def test_a_pass_left_early_still_moves_to_the_next_epoch(source: Path, persistent: bool) -> None:
    plain = DuckStreamLoader(make_dataset(source), num_workers=2)
    expected = [[i for item in plain for i in ids_in(item)] for _ in range(3)]
    loader = DuckStreamLoader(make_dataset(source), num_workers=2, persistent_workers=persistent)
    for count, _ in enumerate(loader):
        if count == 2:
            break
    epochs = [[i for item in loader for i in ids_in(item)] for _ in range(2)]
    assert epochs == expected[1:]


class OpenedEpochs:
    """The epoch of every read a cursor opens (early ones included), logged to a file: worker
    processes forked from the test log there too."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self) -> list[int]:
        return [int(epoch) for epoch in self.log.read_text().split()] if self.log.exists() else []

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> OpenedEpochs:
    epochs = OpenedEpochs(tmp_path_factory.mktemp("opened") / "epochs")
    real = read_slot

    def counted(plan: Any, options: Any, start: Any, **kw: Any) -> Any:
        with epochs.log.open("a") as log:
            log.write(f"{start.epoch}\n")
        return real(plan, options, start, **kw)

    monkeypatch.setattr("duckstream.core.cursor.read_slot", counted)
    return epochs


def test_in_process_the_next_epoch_is_read_during_the_last_windows_of_this_one(
    source: Path, opened: OpenedEpochs
) -> None:
    def alone(epoch: int) -> list[int]:
        dataset = make_dataset(source)
        dataset.set_epoch(epoch)
        return [i for item in dataset for i in ids_in(item)]

    expected = {epoch: alone(epoch) for epoch in (0, 1, 2, 6)}
    opened.clear()
    loader = DuckStreamLoader(make_dataset(source), num_workers=0)
    epochs = [[i for item in loader for i in ids_in(item)] for _ in range(3)]
    # Each pass began the next epoch's read, and the next pass took it.
    assert opened() == [0, 1, 2, 3]
    assert epochs == [expected[0], expected[1], expected[2]]
    # The loop chose another epoch: that one is read, not the one begun.
    loader.set_epoch(6)
    assert [i for item in loader for i in ids_in(item)] == expected[6]
    assert opened() == [0, 1, 2, 3, 6, 7]
    # A state loaded between passes is read as it says.
    state = loader.state_dict()
    loader.load_state_dict({**state, "epoch": 2})
    assert [i for item in loader for i in ids_in(item)] == expected[2]


@pytest.mark.parametrize("sql", [None, "SELECT id, value * 2 AS twice FROM source WHERE id % 3 <> 1"])
def test_persistent_workers_read_the_next_epoch_during_the_last_windows_of_this_one(
    source: Path, opened: OpenedEpochs, sql: str | None
) -> None:
    def fresh_workers(epoch: int) -> list[int]:
        loader = DuckStreamLoader(make_dataset(source, sql=sql), num_workers=2)
        loader.set_epoch(epoch)
        return [i for item in loader for i in ids_in(item)]

    expected = {epoch: fresh_workers(epoch) for epoch in (0, 1, 2, 6)}
    opened.clear()
    loader = DuckStreamLoader(make_dataset(source, sql=sql), num_workers=2, persistent_workers=True)
    epochs = [[i for item in loader for i in ids_in(item)] for _ in range(3)]
    # Each worker began the next epoch's read during each pass, and took it on the next one.
    assert Counter(opened()) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert epochs == [expected[0], expected[1], expected[2]]
    # The loop chose another epoch: the workers read that one, not the one they began.
    loader.set_epoch(6)
    assert [i for item in loader for i in ids_in(item)] == expected[6]
    assert Counter(opened()) == {0: 2, 1: 2, 2: 2, 3: 2, 6: 2, 7: 2}
    # Workers that last one pass begin nothing.
    opened.clear()
    plain = DuckStreamLoader(make_dataset(source, sql=sql), num_workers=2)
    assert [i for item in plain for i in ids_in(item)] == expected[0]
    assert Counter(opened()) == {0: 2}


@pytest.mark.skipif(torch.accelerator.is_available(), reason="an accelerator pins without a warning")
def test_pin_memory_without_an_accelerator_still_reads_everything(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source), num_workers=2, pin_memory=True)
    with pytest.warns(UserWarning, match="pin_memory"):
        ids = [i for batch in loader for i in ids_in(batch)]
    assert sorted(ids) == list(range(ROWS))


@pytest.mark.skipif(not torch.accelerator.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_pins_the_tensors_collated_from_workers(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source), num_workers=2, pin_memory=True)
    batches = list(loader)
    assert all(b["id"].is_pinned() and b["vector"].is_pinned() for b in batches)
    assert sorted(int(i) for b in batches for i in b["id"]) == list(range(ROWS))


def test_a_new_pass_writes_to_a_ring_of_its_own_while_an_earlier_one_runs(source: Path) -> None:
    plain = DuckStreamLoader(make_dataset(source), num_workers=2)
    expected = [[i for item in plain for i in ids_in(item)] for _ in range(2)]
    loader = DuckStreamLoader(make_dataset(source), num_workers=2)
    earlier = iter(loader)
    next(earlier)  # its workers stay alive, with batches in flight, as long as it is held
    earlier_ring = loader.duck_dataset.transport.ring
    assert [i for item in loader for i in ids_in(item)] == expected[1]
    assert loader.duck_dataset.transport.ring is not earlier_ring
    del earlier


@pytest.mark.parametrize(("num_workers", "transfer"), [(2, 1), (2, 7), (3, 50), (2, None)])
@pytest.mark.parametrize("take", [1, 101])
def test_rows_from_workers_resume_exactly_as_the_uninterrupted_run(
    source: Path, num_workers: int, transfer: int | None, take: int
) -> None:
    # Rows travel between processes as Arrow batches of `transfer` rows, made into rows by the loader.
    def make() -> DuckStreamDataset:
        return make_dataset(source, batch_size=None)

    options: dict[str, Any] = {"batches_per_transfer": transfer}
    full, _ = run_world(make, 2, num_workers, take=None, **options)
    head, state = run_world(make, 2, num_workers, take=take, **options)
    # By default a shuffled pass hands over a 16th of a worker's rows at once (210 rows here),
    # rounded down to a whole number of rounds of the workers, the first transfers staggered.
    chunk = transfer or 210 // 16 - 210 // 16 % num_workers
    assert state["stages"][0]["chunk"] == chunk
    assert state["stages"][0].get("staggered", False) == (chunk > 1)
    tail, _ = run_world(make, 2, num_workers, take=None, state=state, **options)
    for rank in range(2):
        assert head[rank] + tail[rank] == full[rank]
    assert sorted(i for ids in full for i in ids) == list(range(ROWS))


@pytest.mark.parametrize("output", ["torch", "numpy", "python", "arrow"])
def test_rows_from_workers_are_the_rows_read_in_process(source: Path, output: str) -> None:
    def rows(num_workers: int) -> dict[int, Any]:
        loader = DuckStreamLoader(
            make_dataset(source, batch_size=None, output=output), num_workers=num_workers
        )
        items = list(loader)
        if output == "arrow":
            items = [item.to_pylist()[0] for item in items]
        return {int(item["id"]): item for item in items}

    in_process, from_workers = rows(0), rows(2)
    assert sorted(from_workers) == list(range(ROWS))
    for key, row in from_workers.items():
        expected = in_process[key]
        assert type(row["id"]) is type(expected["id"])
        assert float(row["value"]) == key * 0.5 == float(expected["value"])
        assert row["label"] == expected["label"]
        assert (
            [float(x) for x in row["vector"]]
            == [float(x) for x in expected["vector"]]
            == [key, key + 1, key + 2]
        )


@pytest.mark.skipif(not torch.accelerator.is_available(), reason="pinned memory needs an accelerator")
@pytest.mark.parametrize("batch_size", [16, None])
def test_pin_memory_pins_what_is_read_in_process(source: Path, batch_size: int | None) -> None:
    loader = DuckStreamLoader(make_dataset(source, batch_size=batch_size), num_workers=0, pin_memory=True)
    items = list(loader)
    assert all(item["id"].is_pinned() for item in items)


def _as_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    return {"id": torch.tensor(batch["id"]), "label": batch["label"]}


def _as_arrays(batch: dict[str, Any]) -> dict[str, Any]:
    ids = np.array(batch["id"], dtype=np.int64)
    return {
        "id": torch.from_numpy(ids),
        "vector": torch.tensor(batch["vector"], dtype=torch.float32).T,  # not contiguous
        "doubled": ids * 2,  # a NumPy array
        "label": batch["label"],
    }


def _as_pair(batch: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    return torch.tensor(batch["id"]), batch["label"]


@pytest.mark.parametrize("persistent", [False, True])
def test_a_transforms_arrays_travel_through_the_ring_as_read_in_process(
    source: Path, persistent: bool
) -> None:
    def rows(num_workers: int) -> dict[int, tuple[Any, ...]]:
        dataset = make_dataset(source, output="python", transform=_as_arrays)
        loader = DuckStreamLoader(
            dataset, num_workers=num_workers, persistent_workers=persistent and num_workers > 0
        )
        read: dict[int, tuple[Any, ...]] = {}
        for _ in range(2):  # a second epoch: the same ring, or a new one with new workers
            read = {}
            for item in loader:
                assert list(item) == ["id", "vector", "doubled", "label"]
                assert isinstance(item["id"], torch.Tensor)
                assert isinstance(item["doubled"], np.ndarray)
                for j, key in enumerate(item["id"].tolist()):
                    vector = item["vector"][:, j].tolist()
                    read[key] = (vector, int(item["doubled"][j]), item["label"][j])
        if num_workers:
            ring = loader._ring
            assert ring is not None
            assert int(ring.positions[:, 0].sum()) > 0  # written there
        return read

    in_process, from_workers = rows(0), rows(2)
    assert sorted(from_workers) == list(range(ROWS))
    assert from_workers == in_process
    assert from_workers[5] == ([5.0, 6.0, 7.0], 10, "odd-5")
    loader = DuckStreamLoader(make_dataset(source, output="python", transform=_as_pair), num_workers=2)
    pairs = list(loader)
    assert all(type(pair) is tuple and len(pair) == 2 for pair in pairs)
    assert sorted(i for ids, _ in pairs for i in ids.tolist()) == list(range(ROWS))


@pytest.mark.parametrize("transfer", [5, None])
@pytest.mark.parametrize("take", [1, 7])
def test_a_transforms_items_travel_several_at_once_and_resume_exactly(
    source: Path, transfer: int | None, take: int
) -> None:
    # Each transfer is a message through DataLoader's queue; a transform's small items share one.
    def make() -> DuckStreamDataset:
        return make_dataset(source, output="python", transform=_as_tensors)

    options: dict[str, Any] = {"batches_per_transfer": transfer}
    full, _ = run_world(make, 2, 2, take=None, **options)
    head, state = run_world(make, 2, 2, take=take, **options)
    # By default a worker with few items (13 here, 210 rows) hands over as many at once as
    # there are workers, the first transfers staggered: the round robin's lag cancels out.
    assert state["stages"][0]["chunk"] == (transfer or 2)
    tail, _ = run_world(make, 2, 2, take=None, state=state, **options)
    for rank in range(2):
        assert head[rank] + tail[rank] == full[rank]
    assert sorted(i for ids in full for i in ids) == list(range(ROWS))


@pytest.mark.skipif(not torch.accelerator.is_available(), reason="pinned memory needs an accelerator")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pin_memory_pins_what_a_transform_returns(source: Path, num_workers: int) -> None:
    # Python rows made into tensors by a transform, as a training loop's decoding step does.
    dataset = make_dataset(source, output="python", transform=_as_tensors)
    loader = DuckStreamLoader(dataset, num_workers=num_workers, pin_memory=True)
    items = list(loader)
    assert all(item["id"].is_pinned() for item in items)
    assert sorted(i for item in items for i in item["id"].tolist()) == list(range(ROWS))


def test_pin_memory_in_process_without_an_accelerator_still_reads_everything(source: Path) -> None:
    loader = DuckStreamLoader(make_dataset(source, batch_size=None), num_workers=0, pin_memory=True)
    assert sorted(i for item in loader for i in ids_in(item)) == list(range(ROWS))


@pytest.mark.parametrize(
    ("workers", "sql"),
    [
        (0, None),
        (2, None),
        (0, "SELECT id, blob, text FROM source WHERE id % 3 <> 0"),
        (0, "SELECT id, blob, lower(text) AS text FROM source"),
    ],
)
def test_wide_values_reach_every_output_as_the_values_stored(
    tmp_path: Path, workers: int, sql: str | None
) -> None:
    # Wide values are gathered as views into the read batches; collated (here, or in workers
    # running a transform) they become the same bytes and strings, and Arrow handed on holds
    # the declared types. Items of one seed are the same rows whatever the output.
    rows = 600
    blobs = [bytes([i % 251]) * (600 + i % 7) for i in range(rows)]
    table = pa.table({"id": np.arange(rows), "blob": blobs, "text": [b.hex()[:700] for b in blobs]})
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=200)

    def items(output: Output, transform: Any = None) -> list[Any]:
        dataset = DuckStreamDataset(
            tmp_path,
            sql,
            batch_size=32,
            shuffle=True,
            seed=3,
            shuffle_buffer=150,
            output=output,
            transform=transform,
        )
        return list(DuckStreamLoader(dataset, num_workers=workers))

    arrow = items("arrow")
    assert {(b.schema.field("blob").type, b.schema.field("text").type) for b in arrow} == {
        (pa.binary(), pa.string())
    }
    expected = [b.to_pydict() for b in arrow]
    stored = {i: (blobs[i], blobs[i].hex()[:700]) for i in range(rows)}
    # A filter keeps two rows in three; an expression (lower of lowercase hex) the same values.
    kept = [i for i in range(rows) if sql is None or "WHERE" not in sql or i % 3]
    assert sorted(i for item in expected for i in item["id"]) == kept
    for item in expected:
        assert [stored[i] for i in item["id"]] == list(zip(item["blob"], item["text"], strict=True))
    collated_outputs: tuple[Output, ...] = ("torch", "numpy", "python")
    for output in collated_outputs:
        collated = items(output, transform=(lambda item: item) if workers else None)
        assert [
            {"id": list(map(int, item["id"])), "blob": item["blob"], "text": item["text"]}
            for item in collated
        ] == expected, output
