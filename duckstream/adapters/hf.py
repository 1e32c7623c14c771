"""The stream as a real ``datasets.IterableDataset``.

datasets splits an iterable between nodes and DataLoader workers by asking its examples
iterable for shard ``index`` of ``num_shards``. This one answers with duckstream's own exact
partition for any count, so ``split_dataset_by_node`` and workers always get disjoint shares
that cover every row once, never the read-everything-keep-one-in-N fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import copy
from dataclasses import replace
from typing import Any, Self

import numpy as np
import pyarrow as pa
from datasets import Features, IterableDataset
from datasets.iterable_dataset import _BaseExamplesIterable

from duckstream.core.cursor import EpochCursor
from duckstream.core.options import ReadOptions
from duckstream.core.planning import StreamPlan
from duckstream.core.world import World
from duckstream.errors import StateError

__all__ = ["DuckExamplesIterable", "SlotExamplesIterable", "iterable_dataset"]

# What datasets is told the shard count is: divisible by every world size and worker count up
# to 16, so it always splits by shards; any (num_shards, index) is served exactly anyway.
ADVERTISED_SHARDS = 720_720


class SlotExamplesIterable(_BaseExamplesIterable):  # type: ignore[misc]
    """What every duckstream examples iterable shares: it serves duckstream's exact slot of the
    (num_shards, index) requests datasets makes, a new ``key`` (epoch) when datasets shuffles,
    and a state of its own type.

    ``splits`` are the (num_shards, index) requests applied so far (node, then worker); their
    product is one slot of duckstream's partition.
    """

    def __init__(self, *, key: int | None, splits: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self._sleep_on_threads_shutdown = False  # no background threads to wait for
        self.key = key
        self.splits = splits

    @property
    def world(self) -> World:
        total, index = 1, 0
        for count, part in self.splits:
            total, index = total * count, index * count + part
        return World(index, total)

    @property
    def num_shards(self) -> int:
        return ADVERTISED_SHARDS

    @property
    def is_typed(self) -> bool:
        return True

    def _loaded_state(self) -> dict[str, Any] | None:
        """The state to resume from, checked to be this iterable's kind; None when fresh."""
        # datasets merges a loaded state into the one _init_state_dict made, value by value,
        # so only the values can be wrong here, not the keys.
        if not self._state_dict:
            return None
        kind = self._state_dict.get("type")
        if kind != type(self).__name__:
            raise StateError(
                f"expected the state's examples iterable to be {type(self).__name__!r}, found {kind!r}"
            )
        state: dict[str, Any] = self._state_dict
        return state

    def shuffle_data_sources(self, generator: np.random.Generator) -> Self:
        # datasets passes a generator derived from (seed, epoch): a new order per epoch.
        shuffled = copy(self)
        shuffled.key = int(generator.integers(0, 2**62))
        return shuffled

    def shard_data_sources(self, num_shards: int, index: int, contiguous: bool = True) -> Self:
        shard = copy(self)
        shard.splits = (*self.splits, (num_shards, index))
        return shard

    def reshard_data_sources(self) -> Self:
        return self


class DuckExamplesIterable(SlotExamplesIterable):
    """Examples of one share of a :class:`StreamPlan`, in its deterministic order.

    ``key`` seeds the order (None: storage order). The state counts the rows yielded (see
    :meth:`EpochCursor.rows_state`), so a resume skips exactly those.
    """

    def __init__(
        self,
        plan: StreamPlan,
        options: ReadOptions,
        *,
        key: int | None,
        splits: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__(key=key, splits=splits)
        self.plan = plan
        self.options = options

    @property
    def cursor(self) -> EpochCursor:
        """A cursor over the plan, shuffled when a key is set."""
        return EpochCursor(
            self.plan, replace(self.options, shuffle=self.key is not None), ranks=self.world.world_size
        )

    @property
    def features(self) -> Features:
        return Features.from_arrow_schema(self.plan.schema)

    def _skipped(self, *, views: bool = False) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Batches after the rows the state says were yielded, with the index of their first row;
        ``views`` for rows made Python values (see :meth:`EpochCursor.open`)."""
        cursor = self.cursor
        done = self._rows_done(cursor)
        position = 0
        for batch in cursor.open(self.world, epoch=self.key or 0, views=views).batches:
            if position + batch.num_rows > done:
                offset = max(0, done - position)
                yield position + offset, batch.slice(offset)
            position += batch.num_rows
        if done > position:
            raise StateError(
                f"the state's 'rows' says {done} rows of this share were read, but it holds only "
                f"{position}: the state was saved for other data or another split"
            )

    def _rows_done(self, cursor: EpochCursor) -> int:
        state = self._loaded_state()
        return 0 if state is None else cursor.read_rows_state(state)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        slot = self.world.rank
        for first, batch in self._skipped(views=True):
            for offset, row in enumerate(batch.to_pylist()):
                if self._state_dict:
                    self._state_dict["rows"] += 1
                yield f"{slot}_{first + offset}", row

    @property
    def iter_arrow(self) -> Any:
        return self._iter_arrow

    def _iter_arrow(self) -> Iterator[tuple[str, pa.Table]]:
        slot = self.world.rank
        for first, batch in self._skipped():
            if self._state_dict:
                self._state_dict["rows"] += batch.num_rows
            yield f"{slot}_{first}", pa.Table.from_batches([batch])

    def _init_state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {**self.cursor.rows_state(0), "type": type(self).__name__}
        self._state_dict = state
        return state


def iterable_dataset(plan: StreamPlan, options: ReadOptions) -> IterableDataset:
    """A ``datasets.IterableDataset`` over ``plan``, with features from its Arrow schema."""
    examples = DuckExamplesIterable(
        plan,
        replace(options.sized(plan.row_bytes), even="split", batch_size=None),
        key=int(np.random.default_rng([options.seed]).integers(0, 2**62)) if options.shuffle else None,
    )
    from datasets import DatasetInfo

    return IterableDataset(examples, info=DatasetInfo(features=examples.features))
