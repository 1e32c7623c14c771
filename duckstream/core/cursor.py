"""An epoch's progress over one plan, without torch: the one place a stream's position lives.

The cursor knows which epoch is read, the stretches of it already read (*stages*, one per
resume under another setup), and how many items the current stretch handed out. It saves and
restores that progress in every form a loader keeps it (the dataset's or DuckStreamLoader's
state, one DataLoader worker's state, torchdata's StatefulDataLoader state, and the count of
rows a Hugging Face examples iterable keeps), and it opens one slot's read of an epoch, which
``stream_batches``, ``as_iterable_dataset`` and ``DuckStreamDataset`` all go through. The
adapters add only their framework's glue (worker info, shared memory, transport).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from duckstream.core.layout_warning import warn_if_ordered
from duckstream.core.next_epoch import StartedRead
from duckstream.core.options import ReadOptions
from duckstream.core.pipeline import SlotStart, locate_slot, read_slot, read_streams
from duckstream.core.planning import StreamPlan
from duckstream.core.resume import Stage, even_window, fold, handed_out_whole_epoch
from duckstream.core.state import (
    ORDER_REVISION,
    STATE_VERSION,
    check_order,
    is_slot_state,
    make_state,
    read_count,
    read_slot_state,
    read_state,
    slot_state,
)
from duckstream.core.torchdata_state import is_stateful_loader_state, merge_stateful_loader_state
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, StateError

__all__ = ["EpochCursor", "SlotRead", "SlotResume"]


@dataclass(frozen=True)
class SlotResume:
    """One DataLoader worker's saved progress: it continues exactly its ``role``."""

    epoch: int
    prior: tuple[Stage, ...]  # the stages of the epoch before the worker's own
    stage: Stage  # the worker's stage; ``consumed`` is the items that worker yielded
    role: int


@dataclass(frozen=True)
class SlotRead:
    """One slot's read of an epoch: the setup it reads under, where it starts, its batches."""

    stage: Stage
    start: SlotStart
    batches: Iterator[pa.RecordBatch]

    @property
    def epoch(self) -> int:
        return self.start.epoch


class EpochCursor:
    """Progress through the epochs of ``plan`` read with ``options``.

    ``epoch``: the epoch read next (or being read); ``done``: stretches of it read before the
    current one; ``consumed``: items the current in-process stretch handed out; ``finished``:
    the current in-process pass came to its end.
    """

    def __init__(self, plan: StreamPlan, options: ReadOptions, *, ranks: int = 1) -> None:
        self.plan = plan
        self.options = options.sized(plan.row_bytes)
        self.streams = read_streams(plan)
        if self.options.shuffle:
            # ``ranks``: the world the reads are expected in, for the warning's estimate only.
            warn_if_ordered(plan, self.options.buffer, self.streams, ranks=ranks)
        self._summary = plan.summary()
        self.epoch = 0
        self.done: list[Stage] = []
        self.consumed = 0
        self.finished = False
        self._started: StartedRead | None = None

    # -- epochs and progress ---------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next; a resumed epoch keeps its progress when set again."""
        if epoch < 0:
            raise ConfigurationError(f"epoch must be non-negative, found {epoch}")
        if epoch != self.epoch or self.finished:
            self._restart(epoch)

    def _restart(self, epoch: int, done: Sequence[Stage] = ()) -> None:
        self.epoch, self.done, self.consumed, self.finished = epoch, list(done), 0, False

    def stage(self, *, world_size: int, num_workers: int = 1, chunk: int = 1, consumed: int = 0) -> Stage:
        """The stage a read under this world and loader setup makes."""
        return Stage(
            world_size,
            num_workers,
            self.options.item_rows,
            self.options.drops_last,
            self.options.buffer,
            consumed,
            chunk,
            self.streams,
            staggered=chunk > 1 and num_workers > 1,
        )

    def begin_pass(self, world_size: int) -> None:
        """An in-process pass starts: after a finished one the epoch starts over; otherwise
        the items the last pass handed out become a stage done."""
        if self.finished:
            self._restart(self.epoch)
        elif self.consumed:
            self.done = fold(self.done, self.stage(world_size=world_size, consumed=self.consumed))
            self.consumed = 0

    def advance(self, items: int = 1) -> None:
        """The in-process pass handed out ``items`` more."""
        self.consumed += items

    def finish(self) -> None:
        """The in-process pass came to its end: the next state is the next epoch's start."""
        self.finished = True

    def drop_stretch(self) -> None:
        """Forget the items of the current stretch (a loader counts them itself)."""
        self.consumed = 0

    # -- state -----------------------------------------------------------------------------

    def state(self, stages: Sequence[Stage], *, epoch: int | None = None) -> dict[str, Any]:
        """The state of ``epoch`` (default: the cursor's) after ``stages``."""
        return make_state(
            fingerprint=self.plan.fingerprint,
            seed=self.options.seed,
            shuffle=self.options.shuffle,
            even=self.options.even,
            epoch=self.epoch if epoch is None else epoch,
            stages=list(stages),
            plan=self._summary,
        )

    def state_dict(self, current: Stage) -> dict[str, Any]:
        """The progress so far, the current stretch read under ``current`` (its ``consumed``
        the items the training loop took)."""
        if self.finished:
            return self.state([], epoch=self.epoch + 1)
        return self.state(fold(self.done, current))

    def load_state_dict(self, state: Mapping[str, Any]) -> SlotResume | None:
        """Continue where ``state`` left off: a dataset or DuckStreamLoader state, or a
        StatefulDataLoader's. One worker's own state is returned, not applied: only that
        worker's next read continues it."""
        if is_stateful_loader_state(state):
            state = merge_stateful_loader_state(state)
        elif is_slot_state(state):
            prior_state, role, stage = read_slot_state(state)
            epoch, prior = self._read(prior_state, worker=(role, stage))
            return SlotResume(epoch, tuple(prior), stage, role)
        epoch, stages = self._read(state)
        self._restart(epoch, stages)
        return None

    def _read(
        self, state: Mapping[str, Any], worker: tuple[int, Stage] | None = None
    ) -> tuple[int, list[Stage]]:
        """``state``'s epoch and stages; ``worker``: one worker's role and its own stage, for a
        state that holds the stages before that one."""
        epoch, stages = read_state(
            state,
            fingerprint=self.plan.fingerprint,
            seed=self.options.seed,
            shuffle=self.options.shuffle,
            even=self.options.even,
            plan=self._summary,
        )
        if self.options.shuffle:
            check_order(state, epoch, mid_epoch=self._mid_epoch(stages, worker))
        return epoch, stages

    def _mid_epoch(self, stages: Sequence[Stage], worker: tuple[int, Stage] | None) -> bool:
        """Whether ``stages`` (and ``worker``'s own stage) leave rows of the epoch unread.

        A stretch that handed out every item of the epoch (what a StatefulDataLoader saves at
        an epoch's end) owes nothing, in any read order. Rows owed after several stretches are
        counted in the order they were read in, so those count as the middle of an epoch.
        """
        read = [*stages, worker[1]] if worker is not None else list(stages)
        if not any(stage.consumed for stage in read):
            return False
        if len(read) > 1:
            return True
        role = worker[0] if worker is not None else None
        return not handed_out_whole_epoch(self.plan.num_rows, read[0], self.options.even, role)

    def slot_state_dict(self, read: SlotRead, items: int) -> dict[str, Any]:
        """One worker's own state after it yielded ``items`` of ``read``."""
        return slot_state(
            self.state(read.start.prior, epoch=read.epoch),
            worker=read.start.world.worker,
            stage=replace(read.stage, consumed=read.start.items + items),
        )

    def rows_state(self, rows: int) -> dict[str, Any]:
        """A count of rows read from one slot's share (what a Hugging Face examples iterable
        keeps), versioned and tied to this plan."""
        return {
            "version": STATE_VERSION,
            "order": ORDER_REVISION,
            "fingerprint": self.plan.fingerprint,
            "rows": rows,
        }

    def read_rows_state(self, state: Mapping[str, Any]) -> int:
        """The rows a :meth:`rows_state` counted; states saved before it held a version and
        fingerprint hold only the count."""
        if "version" in state and state["version"] != STATE_VERSION:
            raise StateError(f"expected state['version'] == {STATE_VERSION}, found {state['version']!r}")
        if "fingerprint" in state and state["fingerprint"] != self.plan.fingerprint:
            raise StateError(
                "state does not fit this dataset: it was saved for another plan "
                f"(fingerprint {state['fingerprint']!r}, now {self.plan.fingerprint!r})"
            )
        rows = read_count(state.get("rows"), "the state's 'rows'")
        if self.options.shuffle:
            # The rows counted are the first of the slot's order: of this order only.
            check_order(state, None, mid_epoch=rows > 0)
        return rows

    # -- reading ---------------------------------------------------------------------------

    def open(
        self,
        world: World,
        *,
        epoch: int | None = None,
        done: Sequence[Stage] | None = None,
        chunk: int = 1,
        resume: SlotResume | None = None,
        then: int | None = None,
        views: bool = False,
    ) -> SlotRead:
        """``world``'s slot of ``epoch`` (default: the cursor's) after the stages ``done``
        (default: the cursor's), or continuing one worker's ``resume``; ``chunk`` items per
        DataLoader transfer; ``views``: for a caller that makes Python values of the batches
        (see :func:`~duckstream.core.pipeline.read_slot`).

        ``then``: the epoch the next pass reads, when the caller knows it. A shuffled read
        then begins that epoch's read (from its start, same world) while its own last two
        windows go out (:mod:`duckstream.core.next_epoch`); the next ``open`` takes it if it asks for
        exactly that read, and drops it otherwise.
        """
        epoch = self.epoch if epoch is None else epoch
        done = list(self.done if done is None else done)
        slot_items: tuple[int, int] | None = None
        if resume is not None:
            epoch, done = resume.epoch, [*resume.prior, resume.stage]
            slot_items = (resume.role, resume.stage.consumed)
        current = self.stage(world_size=world.world_size, num_workers=world.num_workers, chunk=chunk)
        started, self._started = self._started, None
        key = _read_key(epoch, done, world, chunk, slot_items, views)
        batches: Iterator[pa.RecordBatch]
        if started is not None and started.usable and started.key == key:
            start, batches = started.start, started.take()
        else:
            if started is not None and started.usable:
                started.drop()
            start = locate_slot(
                self.plan,
                self.options,
                world=world,
                epoch=epoch,
                done=done,
                current=current,
                slot_items=slot_items,
            )
            batches = read_slot(self.plan, self.options, start, views=views)
        if then is not None and self.options.shuffle and self.plan.late is None:
            batches = self._then(batches, start, current, world, chunk, then, views)
        return SlotRead(current, start, batches)

    def _then(
        self,
        batches: Iterator[pa.RecordBatch],
        start: SlotStart,
        current: Stage,
        world: World,
        chunk: int,
        epoch: int,
        views: bool,
    ) -> Iterator[pa.RecordBatch]:
        """``batches``, beginning ``epoch``'s read once fewer than two windows are left: the
        read threads have then decoded this pass's last window, or nearly."""
        left = start.span.rows - start.emitted
        window = even_window(start.span.rows, self.options.buffer)
        for batch in batches:
            yield batch
            left -= batch.num_rows
            if left < 2 * window and self._started is None:
                following = locate_slot(
                    self.plan, self.options, world=world, epoch=epoch, done=[], current=current
                )
                self._started = StartedRead(
                    _read_key(epoch, [], world, chunk, None, views),
                    following,
                    read_slot(self.plan, self.options, following, views=views),
                    owner=self,
                )

    def __getstate__(self) -> dict[str, Any]:
        # A read begun early stays with the process that began it.
        return {**self.__dict__, "_started": None}


def _read_key(
    epoch: int,
    done: Sequence[Stage],
    world: World,
    chunk: int,
    slot_items: tuple[int, int] | None,
    views: bool,
) -> tuple[object, ...]:
    """What tells one slot's read from another: the same key, the same batches."""
    return (epoch, tuple(done), world, chunk, slot_items, views)
