"""A DuckStreamMix as a real ``datasets.IterableDataset`` of rows.

As for one source (:mod:`duckstream.adapters.hf`), datasets asks for shard ``index`` of
``num_shards`` (node, then worker) and gets duckstream's exact slot of that world: each source
split exactly (``even="split"``), interleaved by the mix's schedule. The state counts the rows
yielded; a resume skips exactly those (the schedule and the reads being deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from copy import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import DatasetInfo, Features, IterableDataset
from datasets.iterable_dataset import _BaseExamplesIterable

from duckstream.adapters.hf import ADVERTISED_SHARDS
from duckstream.adapters.mix import DuckStreamMix
from duckstream.core.mix import MixSpec, SourceRead, open_slot
from duckstream.core.mix_state import mix_fingerprint
from duckstream.core.options import ReadOptions
from duckstream.core.pipeline import read_streams
from duckstream.core.planning import StreamPlan
from duckstream.core.state import read_count
from duckstream.core.world import World
from duckstream.errors import StateError

__all__ = ["MixExamplesIterable", "mix_iterable_dataset"]


class MixExamplesIterable(_BaseExamplesIterable):  # type: ignore[misc]
    """Rows of one share of a mix, in its deterministic order.

    ``splits`` are the (num_shards, index) requests applied so far; ``key`` is the epoch the
    mix reads (0 until datasets shuffles, then one drawn per epoch).
    """

    def __init__(
        self,
        spec: MixSpec,
        plans: Sequence[StreamPlan],
        options: Sequence[ReadOptions],
        *,
        key: int | None,
        splits: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__()
        self._sleep_on_threads_shutdown = False  # no background threads to wait for
        self.spec = spec
        self.plans = tuple(plans)
        self.options = tuple(options)
        self.key = key
        self.splits = splits
        self.fingerprint = mix_fingerprint(spec, [p.fingerprint for p in self.plans])

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
    def features(self) -> Features:
        return Features.from_arrow_schema(self.plans[0].schema)

    @property
    def is_typed(self) -> bool:
        return True

    def _rows(self) -> Iterator[dict[str, Any]]:
        done = self._rows_done()
        read = open_slot(
            self.spec, self.plans, self.options, epoch=self.key or 0, stages=[], world=self.world
        )
        rows = [_rows_of(batches) for batches in read.batches]
        schedule = read.schedule
        if done > len(schedule):
            raise StateError(
                f"the state's 'rows' says {done} rows of this share were read, but it holds only "
                f"{len(schedule)}: the state was saved for other data or another split"
            )
        try:
            for position, source in enumerate(schedule.tolist()):
                row = next(rows[source])
                if position >= done:
                    yield row
        finally:
            for batches in read.batches:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

    def _rows_done(self) -> int:
        if not self._state_dict:
            return 0
        kind = self._state_dict.get("type")
        if kind != type(self).__name__:
            raise StateError(
                f"expected the state's examples iterable to be {type(self).__name__!r}, found {kind!r}"
            )
        if self._state_dict.get("fingerprint") != self.fingerprint:
            raise StateError(
                "state does not fit this mix: it was saved for other sources, weights or settings "
                f"(fingerprint {self._state_dict.get('fingerprint')!r}, now {self.fingerprint!r})"
            )
        return read_count(self._state_dict.get("rows"), "the state's 'rows'")

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        slot = self.world.rank
        for index, row in enumerate(self._rows(), start=self._rows_done()):
            if self._state_dict:
                self._state_dict["rows"] += 1
            yield f"{slot}_{index}", row

    def shuffle_data_sources(self, generator: np.random.Generator) -> MixExamplesIterable:
        shuffled = copy(self)
        shuffled.key = int(generator.integers(0, 2**62))
        return shuffled

    def shard_data_sources(self, num_shards: int, index: int, contiguous: bool = True) -> MixExamplesIterable:
        shard = copy(self)
        shard.splits = (*self.splits, (num_shards, index))
        return shard

    def reshard_data_sources(self) -> MixExamplesIterable:
        return self

    def _init_state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"type": type(self).__name__, "fingerprint": self.fingerprint, "rows": 0}
        self._state_dict = state
        return state


def _rows_of(batches: Iterator[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield from batch.to_pylist()


def mix_iterable_dataset(mix: DuckStreamMix) -> IterableDataset:
    """``mix`` as a ``datasets.IterableDataset`` of rows (its sources read row by row)."""
    options = [
        replace(d.cursor.options, even="split", batch_size=None, drop_last=False) for d in mix.datasets
    ]
    plans = [d.plan for d in mix.datasets]
    sources = tuple(
        SourceRead.of(plan, opts, read_streams(plan)) for plan, opts in zip(plans, options, strict=True)
    )
    spec = replace(mix.spec, sources=sources)
    examples = MixExamplesIterable(spec, plans, options, key=None)
    return IterableDataset(examples, info=DatasetInfo(features=examples.features))
