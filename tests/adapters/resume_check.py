"""The one resume checker every stateful piece goes through.

Runs ``world_size`` ranks in lockstep (one after another, each under its own RANK/WORLD_SIZE),
each taking the same number of items, then resumes all ranks of another world from rank 0's
state and checks that together the two runs read every row, nothing twice beyond padding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from duckstream._environ import environment
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, DuckStreamMix


def as_rank(rank: int, world_size: int) -> AbstractContextManager[None]:
    return environment({"RANK": str(rank), "WORLD_SIZE": str(world_size)})


def ids_in(item: Any) -> list[int]:
    if isinstance(item, dict):
        value = item["id"]
        listed = value.tolist() if hasattr(value, "tolist") else value  # a 0-d tensor lists as a scalar
        return [int(v) for v in listed] if isinstance(listed, list) else [int(listed)]
    raise TypeError(type(item))


def run_world(
    make: Callable[[], DuckStreamDataset | DuckStreamMix],
    world_size: int,
    num_workers: int,
    *,
    take: int | None,
    state: dict[str, Any] | None = None,
    **loader_options: Any,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Every rank's ids (after taking ``take`` items, or all) and the rank-0 state."""
    per_rank, states = [], []
    for rank in range(world_size):
        with as_rank(rank, world_size):
            loader = DuckStreamLoader(make(), num_workers=num_workers, **loader_options)
            if state is not None:
                loader.load_state_dict(state)
            ids: list[int] = []
            iterator = iter(loader)
            for count, item in enumerate(iterator if take != 0 else ()):
                ids.extend(ids_in(item))
                if take is not None and count + 1 >= take:
                    break
            states.append(loader.state_dict())
            del iterator
        per_rank.append(ids)
    assert all(s == states[0] for s in states), "ranks in lockstep must hold the same state"
    return per_rank, states[0]


def assert_resumes(
    make: Callable[[], DuckStreamDataset],
    total_rows: int,
    *,
    before: tuple[int, int],
    after: tuple[int, int],
    take: int,
) -> None:
    """Stop after ``take`` items per rank under ``before`` (world, workers), resume under ``after``."""
    first, state = run_world(make, *before, take=take)
    rest, _ = run_world(make, *after, take=None, state=state)
    seen = Counter(i for ids in first + rest for i in ids)
    assert set(seen) == set(range(total_rows)), (
        f"lost rows: {sorted(set(range(total_rows)) - set(seen))[:10]}"
    )
    repeats = sum(seen.values()) - total_rows
    # only padding repeats rows: fewer than a world's worth per stretch
    assert repeats <= (before[0] - 1) + (after[0] - 1), f"{repeats} rows read twice"


def lockstep_epochs(loader: DuckStreamLoader, rank: int, world_size: int, out: str) -> None:
    """Two epochs in lockstep under an initialised gloo group (an all-reduce per step, as a
    gradient all-reduce would force: unequal counts would hang), the loader's state saved after
    four items of the first; rank 0 writes every rank's ids, states, ``len`` and items to ``out``."""
    import json
    from pathlib import Path

    import torch
    import torch.distributed as dist

    epochs, states, items = [], [], []
    for epoch in range(2):
        ids: list[int] = []
        step = -1
        for step, batch in enumerate(loader):
            dist.all_reduce(torch.ones(1))
            ids.extend(batch["id"].tolist())
            if epoch == 0 and step == 3:
                states.append(loader.state_dict())
        epochs.append(ids)
        items.append(step + 1)
    gathered: list[object] = [None] * world_size
    dist.all_gather_object(gathered, {"epochs": epochs, "states": states, "len": len(loader), "items": items})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
