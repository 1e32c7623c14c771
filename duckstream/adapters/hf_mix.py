"""A DuckStreamMix as a real ``datasets.IterableDataset`` of rows.

As for one source (:mod:`duckstream.adapters.hf`), datasets asks for shard ``index`` of
``num_shards`` (node, then worker) and gets duckstream's exact slot of that world: each source
split exactly (``even="split"``), interleaved by the mix's schedule. The state counts the rows
yielded; a resume skips exactly those (the schedule and the reads being deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import DatasetInfo, Features, IterableDataset

from duckstream.adapters.hf import SlotExamplesIterable
from duckstream.adapters.mix import DuckStreamMix
from duckstream.core.mix import MixSpec, SourceRead, open_slot
from duckstream.core.mix_state import mix_fingerprint
from duckstream.core.options import ReadOptions
from duckstream.core.pipeline import read_streams
from duckstream.core.planning import StreamPlan
from duckstream.core.state import read_count
from duckstream.errors import StateError

__all__ = ["MixExamplesIterable", "mix_iterable_dataset"]


class MixExamplesIterable(SlotExamplesIterable):
    """Rows of one share of a mix, in its deterministic order.

    ``key`` is the epoch the mix reads (0 until datasets shuffles, then one drawn per epoch).
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
        super().__init__(key=key, splits=splits)
        self.spec = spec
        self.plans = tuple(plans)
        self.options = tuple(options)
        self.fingerprint = mix_fingerprint(spec, [p.fingerprint for p in self.plans])

    @property
    def features(self) -> Features:
        return Features.from_arrow_schema(self.plans[0].schema)

    def _rows(self) -> Iterator[dict[str, Any]]:
        done = self._rows_done()
        read = open_slot(
            self.spec, self.plans, self.options, epoch=self.key or 0, stages=[], world=self.world
        )
        schedule = read.schedule
        if done > len(schedule):
            raise StateError(
                f"the state's 'rows' says {done} rows of this share were read, but it holds only "
                f"{len(schedule)}: the state was saved for other data or another split"
            )
        # The rows each source gave before the resume point are skipped as batch slices, never
        # made into Python rows.
        given = np.bincount(schedule[:done], minlength=len(read.batches))
        rows = [_rows_of(batches, int(skip)) for batches, skip in zip(read.batches, given, strict=True)]
        try:
            for source in schedule[done:].tolist():
                yield next(rows[source])
        finally:
            for batches in read.batches:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

    def _rows_done(self) -> int:
        state = self._loaded_state()
        if state is None:
            return 0
        if state.get("fingerprint") != self.fingerprint:
            raise StateError(
                "state does not fit this mix: it was saved for other sources, weights or settings "
                f"(fingerprint {state.get('fingerprint')!r}, now {self.fingerprint!r})"
            )
        return read_count(state.get("rows"), "the state's 'rows'")

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        slot = self.world.rank
        for index, row in enumerate(self._rows(), start=self._rows_done()):
            if self._state_dict:
                self._state_dict["rows"] += 1
            yield f"{slot}_{index}", row

    def _init_state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"type": type(self).__name__, "fingerprint": self.fingerprint, "rows": 0}
        self._state_dict = state
        return state


def _rows_of(batches: Iterator[pa.RecordBatch], skip: int) -> Iterator[dict[str, Any]]:
    """The rows of ``batches`` after the first ``skip``."""
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield from batch.slice(skip).to_pylist()
        skip = 0


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
