"""Loader state: a small versioned dict of plain values, restored strictly.

::

    {"version": 1, "fingerprint": "<plan hash>", "seed": 0, "shuffle": true, "even": "pad",
     "epoch": 3, "stages": [{"world_size": 2, "num_workers": 4, "batch_size": 32,
                             "drop_last": false, "shuffle_buffer": 8192, "consumed": 120,
                             "chunk": 4}]}

``stages`` lists the stretches of the current epoch read so far (one per resume), so its size
grows with the number of resumptions, never with the data.

A DataLoader worker knows only its own progress. Its *slot state* is the state of the stages
before the current one plus ``"slot": {"worker": <role>, "stage": {... "consumed": <items this
worker yielded>}}``; the slot states of all workers merge into one state, since DataLoader's
round robin hands out their items in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

from duckstream.core.resume import Stage
from duckstream.errors import StateError

__all__ = [
    "STATE_VERSION",
    "is_slot_state",
    "make_state",
    "merge_slot_states",
    "read_slot_state",
    "read_state",
    "slot_state",
]

STATE_VERSION = 1
_KEYS = ("version", "fingerprint", "seed", "shuffle", "even", "epoch", "stages")
_STAGE_KEYS = tuple(f.name for f in fields(Stage))


def make_state(
    *, fingerprint: str, seed: int, shuffle: bool, even: str, epoch: int, stages: Sequence[Stage]
) -> dict[str, Any]:
    """The state as JSON-serialisable plain values."""
    return {
        "version": STATE_VERSION,
        "fingerprint": fingerprint,
        "seed": seed,
        "shuffle": shuffle,
        "even": even,
        "epoch": epoch,
        "stages": [asdict(s) for s in stages if s.consumed > 0],
    }


def read_state(
    state: Mapping[str, Any], *, fingerprint: str, seed: int, shuffle: bool, even: str
) -> tuple[int, list[Stage]]:
    """``(epoch, stages)`` from ``state``, refusing one made for another plan or settings."""
    if not isinstance(state, Mapping):
        raise StateError(f"expected a state dict, found {type(state).__name__}")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise StateError(f"state is missing {missing}; expected the keys {list(_KEYS)}")
    if state["version"] != STATE_VERSION:
        raise StateError(f"expected state version {STATE_VERSION}, found {state['version']!r}")
    expected = {"fingerprint": fingerprint, "seed": seed, "shuffle": shuffle, "even": even}
    for key, value in expected.items():
        if state[key] != value:
            what = (
                "the data or the SQL changed since it was saved"
                if key == "fingerprint"
                else "the dataset was built with other settings"
            )
            raise StateError(
                f"state does not fit this dataset: expected {key}={value!r}, found {state[key]!r} ({what})"
            )
    stages = [_stage(raw) for raw in state["stages"]]
    epoch = state["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise StateError(f"expected a non-negative integer epoch, found {epoch!r}")
    return epoch, stages


def _stage(raw: Any) -> Stage:
    # States saved before transfers were chunked have no "chunk": one batch a transfer.
    if isinstance(raw, Mapping) and "chunk" not in raw:
        raw = {**raw, "chunk": 1}
    if not isinstance(raw, Mapping) or set(raw) != set(_STAGE_KEYS):
        raise StateError(f"expected stage keys {list(_STAGE_KEYS)}, found {raw!r}")
    stage = Stage(**{k: raw[k] for k in _STAGE_KEYS})
    if (
        min(stage.world_size, stage.num_workers, stage.batch_size, stage.shuffle_buffer, stage.chunk) < 1
        or stage.consumed < 0
    ):
        raise StateError(f"stage {raw!r} holds impossible values")
    return stage


def slot_state(state: Mapping[str, Any], *, worker: int, stage: Stage) -> dict[str, Any]:
    """One worker's state: ``state`` (the stages before the current one) and its own progress."""
    return {**state, "slot": {"worker": worker, "stage": asdict(stage)}}


def is_slot_state(state: Mapping[str, Any]) -> bool:
    return isinstance(state, Mapping) and "slot" in state


def read_slot_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], int, Stage]:
    """``(state of the earlier stages, worker role, current stage with that worker's items)``."""
    slot = state.get("slot")
    if not isinstance(slot, Mapping) or set(slot) != {"worker", "stage"}:
        raise StateError(f"expected a worker's slot {{'worker': ..., 'stage': ...}}, found {slot!r}")
    stage = _stage(slot["stage"])
    worker = slot["worker"]
    if not isinstance(worker, int) or not 0 <= worker < stage.num_workers:
        raise StateError(f"worker {worker!r} is not one of the stage's {stage.num_workers} workers")
    return {k: v for k, v in state.items() if k != "slot"}, worker, stage


def merge_slot_states(states: Sequence[Mapping[str, Any]], *, extra_items: int = 0) -> dict[str, Any]:
    """The loader's state from every worker's slot state.

    ``extra_items`` are items the loader handed out after the workers last reported (DataLoader
    took them in turn, like the rest).
    """
    if not states:
        raise StateError("no worker states to merge")
    parts = [read_slot_state(s) for s in states]
    base, _, stage = parts[0]
    roles = sorted(worker for _, worker, _ in parts)
    if roles != list(range(stage.num_workers)):
        raise StateError(f"expected one state from each of {stage.num_workers} workers, found roles {roles}")
    for other, worker, other_stage in parts[1:]:
        if other != base or not other_stage.same_setup(stage):
            raise StateError(f"worker {worker}'s state is not from the same epoch and setup as worker 0's")
    consumed = sum(s.consumed for _, _, s in parts) + extra_items
    return {
        **base,
        "stages": [*base["stages"], *([asdict(replace(stage, consumed=consumed))] if consumed else [])],
    }
