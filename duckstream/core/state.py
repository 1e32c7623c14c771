"""Loader state: a small versioned dict of plain values, restored strictly.

::

    {"version": 1, "order": 5, "fingerprint": "<plan hash>", "seed": 0, "shuffle": true, "even": "pad",
     "epoch": 3, "stages": [{"world_size": 2, "num_workers": 4, "batch_size": 32,
                             "drop_last": false, "shuffle_buffer": 8192, "consumed": 120,
                             "chunk": 4, "streams": 16, "staggered": true}],
     "plan": {"files": 8, "first_file": "...", "last_file": "...", "files_digest": "...",
              "rows": 123287, "sql": null, "table": null}}

``plan`` (absent from states saved before it was added) says what the fingerprint covers, so
that a state refused for another plan can say what changed. ``order`` is the revision of the
shuffled read order the state was saved under (absent: 1); a state saved mid-epoch resumes only
under the same one, since the rows its stages handed out are found by replaying that order.

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
from numbers import Integral
from typing import Any

from duckstream.core.resume import Stage
from duckstream.errors import StateError

__all__ = [
    "ORDER_REVISION",
    "STATE_VERSION",
    "check_order",
    "is_slot_state",
    "make_state",
    "merge_slot_states",
    "read_count",
    "read_slot_state",
    "read_state",
    "slot_state",
]

STATE_VERSION = 1
# The revision of a shuffled epoch's read order: raise it whenever a change reorders the rows
# of some layout (the partition, the shuffle, the pieces read side by side, their rotations).
# 2: large row groups rotated where few are read side by side, the order depending on the
# workers a rank's loop interleaves. 3: also row groups whose first rows a read can hold,
# where the loop would see more than interleave.HELD_KEPT_ORDER. 4: small shards cut to fill
# a slot's streams into no more pieces than streams. 5: files of few large row groups read
# from a local copy in small ones (see duckstream.core.recut). 6: such files read through a
# filter or a snapshot's deletes copied too. 7: outsize pieces read over the whole slot
# beside the groups, a group's pieces given times spread over the storage, and few small
# pieces over a slot longer than a window cut to fill the streams. 8: such an outsize piece
# read front to back rotated where it keeps more than interleave.SPREAD_LEFT on its own.
# 9: four stripes of each stream a window (interleave.STRIPES_A_WINDOW), not one, those of
# a window read in one run; outsize pieces left to the groups cut into parts. 10: a slot of
# two windows reads its largest pieces over both and balances its two groups on where their
# pieces lie; a piece of most of a slot of few cut past the streams; outsize pieces take the
# parts they want before smaller ones take a stream; large row groups copied from about 30%
# of a rank's rows, not a third.
# States without one: 1.
ORDER_REVISION = 10
_KEYS = ("version", "fingerprint", "seed", "shuffle", "even", "epoch", "stages")
_OPTIONAL_KEYS = ("plan", "order")
_STAGE_KEYS = tuple(f.name for f in fields(Stage))
# Counts beyond this are no progress a real run made: the largest integer every JSON reader
# keeps exact, far inside the int64 that tensors and numpy hold them in.
_LARGEST = 2**53
# A resume replays each reading slot of each stage, in time that grows with their square:
# more than this is beyond any real run, and a damaged count would never finish replaying.
_MAX_SLOTS = 1 << 16


def make_state(
    *,
    fingerprint: str,
    seed: int,
    shuffle: bool,
    even: str,
    epoch: int,
    stages: Sequence[Stage],
    plan: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The state as JSON-serialisable plain values; ``plan`` is the plan's summary."""
    state = {
        "version": STATE_VERSION,
        "order": ORDER_REVISION,
        "fingerprint": fingerprint,
        "seed": seed,
        "shuffle": shuffle,
        "even": even,
        "epoch": epoch,
        "stages": [_stage_dict(s) for s in stages if s.consumed > 0],
    }
    if plan is not None:
        state["plan"] = dict(plan)
    return state


def read_state(
    state: Mapping[str, Any],
    *,
    fingerprint: str,
    seed: int,
    shuffle: bool,
    even: str,
    plan: Mapping[str, Any] | None = None,
) -> tuple[int, list[Stage]]:
    """``(epoch, stages)`` from ``state``, refusing one made for another plan or settings.

    Every value is checked for its type and range, so a damaged or hand-edited state is
    refused with the key at fault named, instead of failing somewhere in the replay. ``plan``
    (this plan's summary) lets a refusal say what changed.
    """
    where = "state"
    _check_keys(_mapping(state, where), _KEYS, where, optional=_OPTIONAL_KEYS)
    version = state["version"]
    if not _is_int(version) or version != STATE_VERSION:
        raise StateError(f"expected {where}['version'] == {STATE_VERSION}, found {_shown(version)}")
    expected = {"fingerprint": fingerprint, "seed": seed, "shuffle": shuffle, "even": even}
    for key, value in expected.items():
        found = state[key]
        if not _same_kind(found, value) or found != value:
            if key == "fingerprint":
                raise StateError(
                    "state does not fit this dataset: it was saved for another plan "
                    f"(fingerprint {_clip(repr(found))}, now {value!r}): "
                    f"{_what_changed(state.get('plan'), plan)}"
                )
            what = "the dataset was built with other settings"
            raise StateError(
                f"state does not fit this dataset: expected {key}={value!r}, found {_shown(found)} ({what})"
            )
    stages = _read_stages(state["stages"], f"{where}['stages']")
    epoch = read_count(state["epoch"], f"{where}['epoch']")
    return epoch, stages


def check_order(
    state: Mapping[str, Any], epoch: int | None, *, mid_epoch: bool, where: str = "state"
) -> None:
    """Refuse a state saved mid-epoch under another read order (see :data:`ORDER_REVISION`):
    replaying its stages in this order would take other rows for the ones handed out.
    ``epoch``: the epoch it was saved in, where the state says."""
    order = read_count(state.get("order", 1), f"{where}['order']", least=1)
    if mid_epoch and order != ORDER_REVISION:
        which, start = (
            ("epoch", "that epoch over") if epoch is None else (f"epoch {epoch}", f"epoch {epoch} over")
        )
        how = "" if epoch is None else f" (set_epoch({epoch}) without loading the state)"
        raise StateError(
            f"state was saved in the middle of {which} by a build that shuffles in another "
            f"order (read order revision {order}, this build {ORDER_REVISION}): resumed here it "
            f"would repeat some rows and skip others. Start {start} instead{how}, or load a "
            "state saved at an epoch's end"
        )


def _read_stages(raw: Any, where: str) -> list[Stage]:
    """The stages listed at ``where`` of a state."""
    if not isinstance(raw, list | tuple):
        raise StateError(f"expected {where} to be a list of stages, found {_shown(raw)}")
    return [_stage(item, f"{where}[{index}]") for index, item in enumerate(raw)]


def read_count(value: Any, where: str, *, least: int = 0, most: int = _LARGEST) -> int:
    """``value`` as a count of ``least`` to ``most`` (an int, not a bool or a float)."""
    if not _is_int(value):
        raise StateError(f"expected {where} to be an integer, found {_shown(value)}")
    if not least <= value <= most:
        raise StateError(f"expected {where} between {least} and {most:,}, found {value!r}")
    return int(value)


def _stage_dict(stage: Stage) -> dict[str, Any]:
    """``stage`` as plain values; "staggered" only where set, so that a state whose transfers
    were all whole chunks reads as before, and one whose were not is refused by a build that
    would not know (its stage keys are checked strictly)."""
    values = asdict(stage)
    if not stage.staggered:
        del values["staggered"]
    return values


def _stage(raw: Any, where: str) -> Stage:
    # States saved before transfers were chunked have no "chunk" (one batch a transfer),
    # before shuffled reads interleaved pieces no "streams" (one piece after another), and
    # before first transfers were staggered no "staggered" (every transfer a chunk).
    if isinstance(raw, Mapping):
        raw = {"chunk": 1, "streams": 1, "staggered": False, **raw}
    _check_keys(_mapping(raw, where), _STAGE_KEYS, where)
    values: dict[str, Any] = {}
    for key in _STAGE_KEYS:
        at = f"{where}[{key!r}]"
        if key in ("drop_last", "staggered"):
            if not isinstance(raw[key], bool):
                raise StateError(f"expected {at} to be true or false, found {_shown(raw[key])}")
            values[key] = raw[key]
        else:
            values[key] = read_count(raw[key], at, least=0 if key == "consumed" else 1)
    stage = Stage(**values)
    if stage.world_size * stage.num_workers > _MAX_SLOTS:
        raise StateError(
            f"expected {where}['world_size'] * {where}['num_workers'] (reading slots) of at most "
            f"{_MAX_SLOTS:,}, found {stage.world_size:,} * {stage.num_workers:,}"
        )
    return stage


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StateError(f"expected {where} to be a dict, found {_shown(value)}")
    return value


def _what_changed(saved: Any, now: Mapping[str, Any] | None) -> str:
    """What differs between the plan a state was saved for and this one, in words."""
    if not isinstance(saved, Mapping) or now is None:
        return "the data or the SQL changed since it was saved"

    def shown(value: Any) -> str:
        # Whole paths and SQL: they are what the reader looks for.
        return "none (a plain column read)" if value is None else _clip(repr(value), 400)

    if saved.get("sql") != now["sql"]:
        return f"the SQL changed: saved for {shown(saved.get('sql'))}, now {shown(now['sql'])}"
    if saved.get("table") != now["table"]:
        return (
            f"the lake table or its snapshot changed: saved for {shown(saved.get('table'))}, "
            f"now {shown(now['table'])}"
        )
    if saved.get("files") != now["files"] or saved.get("files_digest") != now["files_digest"]:
        counted = f"{saved.get('files')!r} files when saved, {now['files']} now"
        for end in ("first_file", "last_file"):
            if saved.get(end) != now[end]:
                label = end.replace("_", " ")
                return (
                    f"the files changed ({counted}): the {label} was {shown(saved.get(end))}, "
                    f"now {shown(now[end])}"
                )
        return (
            f"the files changed ({counted}): one between {shown(now['first_file'])} and "
            f"{shown(now['last_file'])} was added, removed or renamed"
        )
    if saved.get("rows") != now["rows"]:
        return (
            f"the same files hold other rows: {saved.get('rows')!r} rows (after the SQL) when saved, "
            f"{now['rows']} now; a file was rewritten, or the filter reads other values"
        )
    return "the same files and rows, cut into other shards: a file was rewritten with other row groups"


def _check_keys(
    raw: Mapping[str, Any], expected: Sequence[str], where: str, *, optional: Sequence[str] = ()
) -> None:
    missing = [k for k in expected if k not in raw]
    unexpected = [k for k in raw if k not in expected and k not in optional]
    if missing or unexpected:
        found = "; ".join(
            part
            for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {_clip(repr(unexpected))}" if unexpected else "",
            )
            if part
        )
        raise StateError(f"expected {where} to hold the keys {list(expected)}: {found}")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _same_kind(found: Any, expected: Any) -> bool:
    # 1 == True and 3 == 3.0 in Python, but a state that says so was not written by this code.
    if isinstance(expected, bool):
        return isinstance(found, bool)
    if _is_int(expected):
        return _is_int(found)
    return isinstance(found, type(expected))


def _shown(value: Any) -> str:
    return f"{_clip(repr(value))} ({type(value).__name__})"


def _clip(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def slot_state(state: Mapping[str, Any], *, worker: int, stage: Stage) -> dict[str, Any]:
    """One worker's state: ``state`` (the stages before the current one) and its own progress."""
    return {**state, "slot": {"worker": worker, "stage": _stage_dict(stage)}}


def is_slot_state(state: Mapping[str, Any]) -> bool:
    return isinstance(state, Mapping) and "slot" in state


def read_slot_state(state: Mapping[str, Any], where: str = "state") -> tuple[dict[str, Any], int, Stage]:
    """``(state of the earlier stages, worker role, current stage with that worker's items)``.

    ``where`` names ``state`` in messages (a worker's snapshot inside a loader's state).
    """
    _mapping(state, where)
    at = f"{where}['slot']"
    slot = _mapping(state.get("slot"), at)
    _check_keys(slot, ("worker", "stage"), at)
    stage = _stage(slot["stage"], f"{at}['stage']")
    worker = read_count(slot["worker"], f"{at}['worker']")
    if worker >= stage.num_workers:
        raise StateError(f"{at}['worker'] = {worker} is not one of the stage's {stage.num_workers} workers")
    return {k: v for k, v in state.items() if k != "slot"}, worker, stage


def merge_slot_states(
    states: Sequence[Mapping[str, Any]],
    *,
    extra_items: int = 0,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The loader's state from every worker's slot state.

    ``extra_items`` are items the loader handed out after the workers last reported (DataLoader
    took them in turn, like the rest). ``names`` name the states in messages.
    """
    if not states:
        raise StateError("no worker states to merge")
    names = list(names) if names is not None else [f"worker state {i}" for i in range(len(states))]
    parts = [read_slot_state(s, where) for s, where in zip(states, names, strict=True)]
    prior = [
        _read_stages(base.get("stages"), f"{where}['stages']")
        for (base, _, _), where in zip(parts, names, strict=True)
    ]
    base, _, stage = parts[0]
    roles = sorted(worker for _, worker, _ in parts)
    if roles != list(range(stage.num_workers)):
        raise StateError(f"expected one state from each of {stage.num_workers} workers, found roles {roles}")
    for (other, _, other_stage), where in zip(parts[1:], names[1:], strict=True):
        if other != base:
            differ = sorted(str(k) for k in set(base) | set(other) if base.get(k) != other.get(k))
            raise StateError(f"{where} is not from the same epoch and setup as {names[0]}: see {differ}")
        if not other_stage.same_setup(stage):
            raise StateError(
                f"{where}['slot']['stage'] is not from the same epoch and setup as {names[0]}'s: "
                f"{other_stage} and {stage}"
            )
    consumed = sum(s.consumed for _, _, s in parts) + extra_items
    return {
        **base,
        "stages": [
            *(_stage_dict(s) for s in prior[0]),
            *([_stage_dict(replace(stage, consumed=consumed))] if consumed else []),
        ],
    }
