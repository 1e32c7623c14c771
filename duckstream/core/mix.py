"""Mixing sources by weight, without torch: which source each item of a slot comes from.

A mix reads several plans at once. Each source is partitioned over the ``world_size *
num_workers`` reading slots exactly as it would be alone, and every slot interleaves its
shares of the sources by a *schedule*: the sequence of source indices of its items, a pure
function of ``(seed, epoch, stage, slot, the slot's item counts)``. So the items a source gave
after ``k`` mixed items are known without reading anything, and a resume replays them:

- without ``num_items`` (each source once): a slot's schedule holds each source's items once,
  interleaved as independent arrivals at rates proportional to the weights (a Poisson race:
  at each step a source not yet exhausted is drawn with probability proportional to its
  weight). ``"all_exhausted"`` runs until every share is read; ``"first_exhausted"`` stops at
  the first share that runs out. Schedules do not depend on the rank, and every rank's share
  of a source has the same size (``even="pad"``/``"drop"``), so every rank yields as many items.
- with ``num_items``: each slot draws its part of ``num_items`` by weight with replacement and
  reads each source's share cyclically, one pass after another (each pass a new, seeded
  epoch order of that source).

An epoch is read in *stages* (:class:`MixStage`, one per pass or resume), each ending after
every rank took ``consumed`` items. :func:`replay` turns the stages into what every source
still owes (positions, as a single dataset keeps them) and how many items each source gave.
A read under the setup of the last stage continues it exactly (:func:`open_slot`); under
another world size or worker count, the next stage partitions what is owed afresh.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pyarrow as pa

from duckstream.core.interleave import Layouts, layout_of
from duckstream.core.options import ReadOptions
from duckstream.core.partition import Even, SlotSpan, partition, worker_rows
from duckstream.core.pipeline import SlotStart, read_slot
from duckstream.core.planning import StreamPlan
from duckstream.core.ranges import as_ranges, merge_sorted
from duckstream.core.resume import Stage, items_per_worker, next_worker, slot_unread, worker_items
from duckstream.core.shuffle import window_key
from duckstream.core.world import World
from duckstream.errors import ConfigurationError

__all__ = [
    "MIX_STOPPING",
    "MixRead",
    "MixSpec",
    "MixStage",
    "Replayed",
    "SlotSchedule",
    "SourceRead",
    "Stopping",
    "draw_schedule",
    "fold",
    "fresh",
    "interleave_schedule",
    "open_slot",
    "pass_epoch",
    "rank_items",
    "replay",
    "same_setup",
    "slot_schedule",
    "weights_of",
]

Stopping = Literal["all_exhausted", "first_exhausted"]
MIX_STOPPING: tuple[Stopping, ...] = ("all_exhausted", "first_exhausted")

# Seed domains of the mix's random decisions, apart from those of core/order.py.
_SCHEDULE, _DRAW, _PASS = 0x6D0001, 0x6D0002, 0x6D0003


def _rng(domain: int, *key: int) -> np.random.Generator:
    """A generator seeded from a tuple of ints (never from a sum, which collides)."""
    return np.random.default_rng([domain, *key])


@dataclass(frozen=True)
class SourceRead:
    """What the schedule needs of one source: its rows and how they are read."""

    rows: int
    item_rows: int
    drop_last: bool
    buffer: int
    streams: int
    seed: int
    shuffle: bool
    even: Even
    layout: Layouts | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, plan: StreamPlan, options: ReadOptions, streams: int) -> SourceRead:
        """A source read from ``plan`` with (sized) ``options``."""
        return cls(
            plan.num_rows,
            options.item_rows,
            options.drops_last,
            options.buffer,
            streams,
            options.seed,
            options.shuffle,
            options.even,
            plan.layout_for,
        )

    def items(self, rows: int) -> int:
        return worker_items(rows, self.item_rows, self.drop_last)


@dataclass(frozen=True)
class MixSpec:
    """A mix: its sources, weights (positive, summing to 1), seed, stopping rule and size."""

    sources: tuple[SourceRead, ...]
    weights: tuple[float, ...]
    seed: int
    stopping: Stopping = "all_exhausted"
    num_items: int | None = None


@dataclass(frozen=True)
class MixStage:
    """One stretch of a mixed epoch under one setup; ``consumed`` items per rank."""

    world_size: int
    num_workers: int
    consumed: int
    chunk: int = 1


@dataclass(frozen=True)
class Replayed:
    """Where an epoch stands after some stages."""

    sequences: tuple[np.ndarray, ...]  # per source: positions still owed (each source once)
    taken: tuple[int, ...]  # per source: items all ranks together took
    owed: int | None  # with num_items: items still owed, all ranks together


def weights_of(weights: Sequence[float] | None, rows: Sequence[int]) -> tuple[float, ...]:
    """``weights`` normalised; None weighs sources by their rows (a uniform mix of rows)."""
    raw = [float(r) for r in rows] if weights is None else [float(w) for w in weights]
    if len(raw) != len(rows):
        raise ConfigurationError(f"expected {len(rows)} weights (one per dataset), found {len(raw)}")
    if any(not np.isfinite(w) or w <= 0 for w in raw):
        raise ConfigurationError(f"weights must be positive finite numbers, found {list(raw)}")
    total = sum(raw)
    return tuple(w / total for w in raw)


def interleave_schedule(
    counts: Sequence[int], weights: Sequence[float], key: Sequence[int], stopping: Stopping
) -> np.ndarray:
    """Each source ``s`` ``counts[s]`` times, interleaved by weight (see the module docs)."""
    arrivals: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for source, (count, weight) in enumerate(zip(counts, weights, strict=True)):
        gaps = _rng(_SCHEDULE, *key, source).exponential(1.0 / weight, count)
        arrivals.append(np.cumsum(gaps))
        owners.append(np.full(count, source, dtype=np.int64))
    if not arrivals:
        return np.empty(0, dtype=np.int64)
    times, who = np.concatenate(arrivals), np.concatenate(owners)
    order = np.argsort(times, kind="stable")
    schedule = who[order]
    if stopping == "first_exhausted":
        # The first source to run out ends the slot: nothing of a source with no items.
        if any(c == 0 for c in counts):
            return np.empty(0, dtype=np.int64)
        end = min(float(a[-1]) for a in arrivals)
        schedule = schedule[times[order] <= end]
    return schedule


def draw_schedule(items: int, weights: Sequence[float], key: Sequence[int]) -> np.ndarray:
    """``items`` sources drawn by ``weights`` with replacement."""
    p = np.asarray(weights, dtype=np.float64)
    if items == 0 or p.sum() <= 0:
        return np.empty(0, dtype=np.int64)
    return _rng(_DRAW, *key).choice(len(p), size=items, p=p / p.sum()).astype(np.int64)


def pass_epoch(spec: MixSpec, epoch: int, stage: int, source: int, number: int) -> int:
    """The epoch number a source's ``number``-th cyclic pass reads (with ``num_items``)."""
    return int(_rng(_PASS, spec.seed, epoch, stage, source, number).integers(2**62))


def _full(rows: int) -> np.ndarray:
    return as_ranges([(0, rows)])


@dataclass(frozen=True)
class SlotSchedule:
    """One slot's part of a stage: each source's span and the schedule of its items."""

    spans: tuple[SlotSpan, ...]
    schedule: np.ndarray


def slot_schedule(spec: MixSpec, epoch: int, stage: int, world: World, state: Replayed) -> SlotSchedule:
    """What ``world``'s slot reads in stage number ``stage`` of ``epoch`` after ``state``."""
    if spec.num_items is None:
        spans = tuple(
            partition(seq, world, src.even) for seq, src in zip(state.sequences, spec.sources, strict=True)
        )
        counts = [src.items(span.rows) for src, span in zip(spec.sources, spans, strict=True)]
        key: tuple[int, ...] = (spec.seed, epoch, stage, world.num_workers, world.worker)
        return SlotSchedule(spans, interleave_schedule(counts, spec.weights, key, spec.stopping))
    spans = tuple(partition(_full(src.rows), world, src.even) for src in spec.sources)
    owed = state.owed or 0
    per_rank = -(-owed // world.world_size)
    items = worker_rows(per_rank, world.num_workers)[world.worker]
    # A source with no share in this slot (fewer rows than slots) is not drawn here.
    weights = [
        w if src.items(span.rows) > 0 else 0.0
        for w, src, span in zip(spec.weights, spec.sources, spans, strict=True)
    ]
    key = (spec.seed, epoch, stage, world.world_size, world.rank, world.num_workers, world.worker)
    return SlotSchedule(spans, draw_schedule(items, weights, key))


def fresh(spec: MixSpec) -> Replayed:
    """An epoch before any stage."""
    sequences = tuple(_full(src.rows) for src in spec.sources)
    return Replayed(sequences, (0,) * len(spec.sources), spec.num_items)


def replay(spec: MixSpec, epoch: int, stages: Sequence[MixStage]) -> Replayed:
    """Where ``epoch`` stands after ``stages``: what each source owes, what each gave."""
    state = fresh(spec)
    for index, stage in enumerate(stages):
        state = _after(spec, epoch, index, stage, state)
    return state


def _after(spec: MixSpec, epoch: int, index: int, stage: MixStage, state: Replayed) -> Replayed:
    parts: list[list[np.ndarray]] = [[] for _ in spec.sources]
    taken = list(state.taken)
    for rank in range(stage.world_size):
        worlds = [World(rank, stage.world_size, w, stage.num_workers) for w in range(stage.num_workers)]
        slots = [slot_schedule(spec, epoch, index, world, state) for world in worlds]
        took = items_per_worker(stage.consumed, [len(s.schedule) for s in slots], stage.chunk)
        for world, slot, items in zip(worlds, slots, took, strict=True):
            given = np.bincount(slot.schedule[:items], minlength=len(spec.sources))
            for source, src in enumerate(spec.sources):
                taken[source] += int(given[source])
                if spec.num_items is None:
                    emitted = min(int(given[source]) * src.item_rows, slot.spans[source].rows)
                    parts[source].extend(_owed(src, epoch, index, world, state.sequences[source], emitted))
    if spec.num_items is not None:
        owed = max(0, (state.owed or 0) - stage.consumed * stage.world_size)
        return Replayed(state.sequences, tuple(taken), owed)
    return Replayed(tuple(merge_sorted(p) for p in parts), tuple(taken), None)


def _owed(
    src: SourceRead, epoch: int, index: int, world: World, sequence: np.ndarray, emitted: int
) -> list[np.ndarray]:
    """The positions of ``sequence`` that ``world``'s slot still owes after ``emitted`` rows."""
    return slot_unread(
        partition(sequence, world, src.even),
        emitted,
        key=window_key(src.seed, epoch, index, world),
        seed=src.seed,
        epoch=epoch,
        shuffle=src.shuffle,
        streams=src.streams,
        buffer=src.buffer,
        layout=layout_of(src.layout, world.world_size),
        workers=world.num_workers,
    )


@dataclass(frozen=True)
class MixRead:
    """One slot's read of a stage: the schedule and each source's batches (lazily opened)."""

    schedule: np.ndarray
    batches: tuple[Iterator[pa.RecordBatch], ...]


def same_setup(stage: MixStage, world: World) -> bool:
    """Whether ``world``'s read continues ``stage`` (same world size and workers, one item a
    transfer): DataLoader's round robin then goes on where it stopped, roles rotated."""
    return (stage.world_size, stage.num_workers, stage.chunk) == (world.world_size, world.num_workers, 1)


def fold(done: Sequence[MixStage], current: MixStage) -> list[MixStage]:
    """The stages after ``current``: it extends the last one when their setup is the same."""
    last = done[-1] if done else None
    if last is not None and (last.world_size, last.num_workers, last.chunk) == (
        current.world_size,
        current.num_workers,
        current.chunk,
    ):
        return [*done[:-1], replace(last, consumed=last.consumed + current.consumed)]
    return [*done, current] if current.consumed else list(done)


def open_slot(
    spec: MixSpec,
    plans: Sequence[StreamPlan],
    options: Sequence[ReadOptions],
    *,
    epoch: int,
    stages: Sequence[MixStage],
    world: World,
) -> MixRead:
    """``world``'s slot of ``epoch`` after ``stages``.

    When the last stage had this setup the read continues it exactly, as if never interrupted:
    DataLoader serves worker 0 first, and the interrupted pass would have served
    :func:`next_worker` next, so the workers' roles rotate by that much. Otherwise what each
    source owes is partitioned afresh, a new stage.
    """
    continuing = bool(stages) and same_setup(stages[-1], world)
    index = len(stages) - 1 if continuing else len(stages)
    state = replay(spec, epoch, stages[:index])
    given = np.zeros(len(spec.sources), dtype=np.int64)
    if continuing:
        worlds = [World(world.rank, world.world_size, w, world.num_workers) for w in range(world.num_workers)]
        slots = [slot_schedule(spec, epoch, index, w, state) for w in worlds]
        lengths = [len(s.schedule) for s in slots]
        consumed = stages[-1].consumed
        role = (world.worker + next_worker(consumed, lengths)) % world.num_workers
        taken = items_per_worker(consumed, lengths)[role]
        world, slot = worlds[role], slots[role]
        given = np.bincount(slot.schedule[:taken], minlength=len(spec.sources))
        schedule = slot.schedule[taken:]
    else:
        slot = slot_schedule(spec, epoch, index, world, state)
        schedule = slot.schedule
    # SlotStart counts stages only to seed the shuffle windows of the stage.
    prior = tuple(Stage(1, 1, 1, False, 1) for _ in range(index))
    reads: list[Iterator[pa.RecordBatch]] = []
    for source, (src, plan, opts) in enumerate(zip(spec.sources, plans, options, strict=True)):
        items = int(given[source])
        if spec.num_items is None:
            emitted = min(items * src.item_rows, slot.spans[source].rows)
            begin = SlotStart(epoch, slot.spans[source], prior, world, emitted, items, src.streams)
            reads.append(read_slot(plan, opts, begin))
        else:
            share = src.items(slot.spans[source].rows)
            reads.append(_cyclic(spec, plan, opts, epoch, index, source, world, skip=(items, share)))
    return MixRead(schedule, tuple(reads))


def _cyclic(
    spec: MixSpec,
    plan: StreamPlan,
    options: ReadOptions,
    epoch: int,
    stage: int,
    source: int,
    world: World,
    *,
    skip: tuple[int, int] = (0, 0),
) -> Iterator[pa.RecordBatch]:
    """One source's share of ``world``'s slot, pass after pass, each a new seeded epoch;
    ``skip``: (items already taken, items a pass holds)."""
    src = spec.sources[source]
    taken, share = skip
    number, items = divmod(taken, share) if share else (0, 0)
    while True:
        span = partition(_full(src.rows), world, src.even)
        emitted = min(items * src.item_rows, span.rows)
        read_epoch = pass_epoch(spec, epoch, stage, source, number)
        begin = SlotStart(read_epoch, span, (), world, emitted, items, src.streams)
        yield from read_slot(plan, options, begin)
        number, items = number + 1, 0


def rank_items(spec: MixSpec, epoch: int, stages: Sequence[MixStage], world: World) -> int:
    """Items ``world``'s rank yields in the next stage (every rank as many)."""
    state = replay(spec, epoch, stages)
    index = len(stages)
    return sum(
        len(
            slot_schedule(
                spec, epoch, index, World(world.rank, world.world_size, w, world.num_workers), state
            ).schedule
        )
        for w in range(world.num_workers)
    )
