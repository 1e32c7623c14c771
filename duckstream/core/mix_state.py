"""A mix's state: a small versioned dict of plain values, restored strictly.

::

    {"version": 1, "order": 4, "kind": "mix", "fingerprint": "<hash of the mix>", "seed": 0,
     "epoch": 3, "stages": [{"world_size": 2, "num_workers": 4, "consumed": 120, "chunk": 1}],
     "sources": ["<plan fingerprint>", ...]}

The fingerprint covers every source's plan and reading settings, the weights, the stopping
rule, ``num_items`` and the seed; ``sources`` lets a refusal name the source that changed.
``stages`` grows with the number of resumptions, never with the data. ``order``: as in a
dataset's state (:data:`duckstream.core.state.ORDER_REVISION`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from duckstream.core.mix import MixSpec, MixStage
from duckstream.core.state import ORDER_REVISION, check_order, read_count
from duckstream.errors import StateError

__all__ = ["MIX_STATE_VERSION", "is_mix_state", "make_mix_state", "mix_fingerprint", "read_mix_state"]

MIX_STATE_VERSION = 1
_KEYS = ("version", "kind", "fingerprint", "seed", "epoch", "stages", "sources")
_OPTIONAL_KEYS = ("order",)
_STAGE_KEYS = tuple(f.name for f in fields(MixStage))
_MAX_SLOTS = 1 << 16


def mix_fingerprint(spec: MixSpec, plan_fingerprints: Sequence[str]) -> str:
    """A hash of everything a mix's order depends on."""
    described = {
        "plans": list(plan_fingerprints),
        "sources": [
            [s.rows, s.item_rows, s.drop_last, s.buffer, s.streams, s.seed, s.shuffle, s.even]
            for s in spec.sources
        ],
        "weights": [repr(w) for w in spec.weights],
        "seed": spec.seed,
        "stopping": spec.stopping,
        "num_items": spec.num_items,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def make_mix_state(
    *, fingerprint: str, seed: int, epoch: int, stages: Sequence[MixStage], sources: Sequence[str]
) -> dict[str, Any]:
    return {
        "version": MIX_STATE_VERSION,
        "order": ORDER_REVISION,
        "kind": "mix",
        "fingerprint": fingerprint,
        "seed": seed,
        "epoch": epoch,
        "stages": [asdict(s) for s in stages if s.consumed > 0],
        "sources": list(sources),
    }


def is_mix_state(state: Any) -> bool:
    return isinstance(state, Mapping) and state.get("kind") == "mix"


def read_mix_state(
    state: Mapping[str, Any], *, fingerprint: str, seed: int, sources: Sequence[str], shuffled: bool = True
) -> tuple[int, list[MixStage]]:
    """``(epoch, stages)`` from ``state``, refusing one made for another mix (or, where a source
    is ``shuffled``, saved mid-epoch under another read order)."""
    if not isinstance(state, Mapping):
        raise StateError(f"expected the state to be a dict, found {type(state).__name__}")
    if not is_mix_state(state):
        raise StateError(
            "expected a DuckStreamMix state (state['kind'] == 'mix'); this one is a single "
            "dataset's: load it into that dataset"
        )
    missing = [k for k in _KEYS if k not in state]
    unexpected = [k for k in state if k not in _KEYS and k not in _OPTIONAL_KEYS]
    if missing or unexpected:
        raise StateError(
            f"expected the state to hold the keys {list(_KEYS)}: missing {missing}, unexpected {unexpected}"
        )
    if state["version"] != MIX_STATE_VERSION:
        raise StateError(f"expected state['version'] == {MIX_STATE_VERSION}, found {state['version']!r}")
    saved = state["sources"]
    if not isinstance(saved, list) or len(saved) != len(sources):
        found = len(saved) if isinstance(saved, list) else repr(saved)
        raise StateError(
            f"state does not fit this mix: saved for {found} sources, this mix has {len(sources)}"
        )
    for index, (was, now) in enumerate(zip(saved, sources, strict=True)):
        if was != now:
            raise StateError(
                f"state does not fit this mix: source {index} changed "
                f"(its plan fingerprint was {was!r}, now {now!r})"
            )
    if state["seed"] != seed:
        raise StateError(f"state does not fit this mix: expected seed={seed}, found {state['seed']!r}")
    if state["fingerprint"] != fingerprint:
        raise StateError(
            "state does not fit this mix: its weights, stopping, num_items or a source's reading "
            f"settings changed (fingerprint {state['fingerprint']!r}, now {fingerprint!r})"
        )
    epoch = read_count(state["epoch"], "state['epoch']")
    raw = state["stages"]
    if not isinstance(raw, list):
        raise StateError(f"expected state['stages'] to be a list, found {type(raw).__name__}")
    stages = []
    for index, item in enumerate(raw):
        where = f"state['stages'][{index}]"
        if not isinstance(item, Mapping) or sorted(item) != sorted(_STAGE_KEYS):
            raise StateError(f"expected {where} to hold the keys {list(_STAGE_KEYS)}, found {item!r}")
        values = {
            k: read_count(item[k], f"{where}[{k!r}]", least=0 if k == "consumed" else 1) for k in _STAGE_KEYS
        }
        stage = MixStage(**values)
        if stage.world_size * stage.num_workers > _MAX_SLOTS:
            raise StateError(f"expected at most {_MAX_SLOTS:,} reading slots in {where}, found {stage}")
        stages.append(stage)
    if shuffled:
        check_order(state, epoch, mid_epoch=any(s.consumed for s in stages))
    return epoch, stages
