"""Loader state: a small versioned dict of plain values, restored strictly.

::

    {"version": 1, "fingerprint": "<plan hash>", "seed": 0, "shuffle": true, "even": "pad",
     "epoch": 3, "stages": [{"world_size": 2, "num_workers": 4, "batch_size": 32,
                             "drop_last": false, "shuffle_buffer": 8192, "consumed": 120}]}

``stages`` lists the stretches of the current epoch read so far (one per resume), so its size
grows with the number of resumptions, never with the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from duckstream.core.resume import Stage
from duckstream.errors import StateError

__all__ = ["STATE_VERSION", "make_state", "read_state"]

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
    stages = []
    for raw in state["stages"]:
        if not isinstance(raw, Mapping) or set(raw) != set(_STAGE_KEYS):
            raise StateError(f"expected stage keys {list(_STAGE_KEYS)}, found {raw!r}")
        stage = Stage(**{k: raw[k] for k in _STAGE_KEYS})
        if (
            min(stage.world_size, stage.num_workers, stage.batch_size, stage.shuffle_buffer) < 1
            or stage.consumed < 0
        ):
            raise StateError(f"stage {raw!r} holds impossible values")
        stages.append(stage)
    epoch = state["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise StateError(f"expected a non-negative integer epoch, found {epoch!r}")
    return epoch, stages
