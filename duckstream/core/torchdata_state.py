"""torchdata's StatefulDataLoader: read its state dict as a duckstream state (no torch needed).

A StatefulDataLoader over a DuckStreamDataset asks each worker's copy of the dataset for its
state and keeps them in its own layout. Merged, they are the state DuckStreamLoader would have
saved at the same point, so either loader's state loads into the dataset or either loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from duckstream.core.state import merge_slot_states, read_count
from duckstream.errors import StateError

__all__ = ["is_stateful_loader_state", "merge_stateful_loader_state"]

# Keys of torchdata.stateful_dataloader's state layout (torchdata 0.10, 0.11).
_SNAPSHOT = "_snapshot"
_WORKER_SNAPSHOTS = "_worker_snapshots"
_STEPS_SINCE_SNAPSHOT = "_steps_since_snapshot"
_DATASET_STATE = "dataset_state"
_NUM_YIELDED = "_num_yielded"


def is_stateful_loader_state(state: Mapping[str, Any]) -> bool:
    """A StatefulDataLoader state, with workers (snapshots) or without (one dataset state)."""
    return isinstance(state, Mapping) and (
        _SNAPSHOT in state or (_NUM_YIELDED in state and _DATASET_STATE in state)
    )


def merge_stateful_loader_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The duckstream state inside a StatefulDataLoader state."""
    if _SNAPSHOT not in state:
        inner = state.get(_DATASET_STATE)
        if not isinstance(inner, Mapping):
            raise StateError(
                f"this StatefulDataLoader state holds no dataset state: state[{_DATASET_STATE!r}] "
                f"is {type(inner).__name__}"
            )
        return dict(inner)
    snapshot = state[_SNAPSHOT]
    workers = snapshot.get(_WORKER_SNAPSHOTS) if isinstance(snapshot, Mapping) else None
    where = f"state[{_SNAPSHOT!r}][{_WORKER_SNAPSHOTS!r}]"
    if not isinstance(workers, Mapping) or not workers:
        raise StateError(f"this StatefulDataLoader state holds no worker snapshots at {where}")
    slots = []
    names = []
    for key in sorted(workers, key=str):
        inner = workers[key].get(_DATASET_STATE) if isinstance(workers[key], Mapping) else None
        name = f"{where}[{key!r}][{_DATASET_STATE!r}]"
        if not isinstance(inner, Mapping):
            raise StateError(f"StatefulDataLoader snapshot {key!r} holds no dataset state at {name}")
        slots.append(inner)
        names.append(name)
    extra = read_count(state.get(_STEPS_SINCE_SNAPSHOT, 0), f"state[{_STEPS_SINCE_SNAPSHOT!r}]")
    return merge_slot_states(slots, extra_items=extra, names=names)
