"""DuckStreamMix: several DuckStreamDatasets mixed by weight into one torch IterableDataset.

The schedule (which source each item comes from) and the replay of a saved state live in
:mod:`duckstream.core.mix`; this module adds torch's glue (worker info, shared memory, the
loader's passes) and collates each source's batches as that source would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from duckstream.adapters.collate import collate_batch, collate_rows
from duckstream.adapters.torch import DuckStreamDataset, detect_ranks
from duckstream.core.mix import (
    MIX_STOPPING,
    MixSpec,
    MixStage,
    SourceRead,
    Stopping,
    fold,
    open_slot,
    rank_items,
    replay,
    weights_of,
)
from duckstream.core.mix_state import make_mix_state, mix_fingerprint, read_mix_state
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, SourceError, StateError

__all__ = ["DuckStreamMix", "MixPasses"]


class DuckStreamMix(IterableDataset[Any]):
    """One stream from several :class:`DuckStreamDataset` s, mixed by ``weights``.

    Without ``num_items`` an epoch reads each source once, interleaved by weight, until every
    source is exhausted (``stopping="all_exhausted"``) or the first one is
    (``"first_exhausted"``, in each reading slot); with ``num_items`` an epoch is that many
    items drawn by weight with replacement (sources read again, in a new order, as needed).
    ``weights=None`` weighs the sources by their rows. The order is a function of
    ``(seed, epoch)`` and the world, the same on every machine; every rank yields as many items.

    The datasets must yield alike: one ``batch_size``, one ``output`` and one schema (checked
    here, naming the columns that differ); ``even="pad"`` or ``"drop"``. An item is one
    source's (a batch holds rows of one source), with that source's ``transform``. ``names``
    name the sources in loader statistics (default ``source0``, ``source1``, ...).
    """

    def __init__(
        self,
        datasets: Sequence[DuckStreamDataset],
        weights: Sequence[float] | None = None,
        *,
        seed: int = 0,
        stopping: Stopping = "all_exhausted",
        num_items: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        datasets = tuple(datasets)
        _check_datasets(datasets)
        if stopping not in MIX_STOPPING:
            raise ConfigurationError(f"stopping must be one of {list(MIX_STOPPING)}, found {stopping!r}")
        if num_items is not None and (isinstance(num_items, bool) or num_items < 1):
            raise ConfigurationError(f"num_items must be None or a positive integer, found {num_items!r}")
        if seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, found {seed}")
        self.names = tuple(names) if names is not None else tuple(f"source{i}" for i in range(len(datasets)))
        if len(self.names) != len(datasets) or len(set(self.names)) != len(self.names):
            raise ConfigurationError(f"expected {len(datasets)} distinct names, found {list(self.names)}")
        self.datasets = datasets
        # Rows each source's items count (source rows where a filter's rows are not counted).
        self.weights = weights_of(weights, [d.plan.num_rows for d in datasets])
        self.spec = MixSpec(
            tuple(SourceRead.of(d.plan, d.cursor.options, d.cursor.streams) for d in datasets),
            self.weights,
            seed,
            stopping,
            num_items,
        )
        self.sources = tuple(d.plan.fingerprint for d in datasets)
        self.fingerprint = mix_fingerprint(self.spec, self.sources)
        self.epoch = 0
        self.done: list[MixStage] = []
        self.consumed = 0  # items of the current in-process pass
        self.finished = False
        self.detect_ranks: Callable[[], tuple[int, int]] = detect_ranks
        self.ranks = World(*self.detect_ranks())
        self.num_workers = 1  # reading slots per rank under the loader that iterates the mix
        # Persistent DataLoader workers keep their first copy: the epoch, and whether the
        # resumed stages apply, reach them through shared memory.
        self._shared = torch.zeros(2, dtype=torch.int64)
        self._shared.share_memory_()  # type: ignore[no-untyped-call]

    # -- settings --------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def stopping(self) -> Stopping:
        return self.spec.stopping

    @property
    def num_items(self) -> int | None:
        return self.spec.num_items

    @property
    def batch_size(self) -> int | None:
        return self.datasets[0].batch_size

    @property
    def output(self) -> str:
        return self.datasets[0].output

    @property
    def num_rows(self) -> int:
        """Rows of all sources after their SQL."""
        return sum(d.num_rows for d in self.datasets)

    def __len__(self) -> int:
        """Items this rank yields in one epoch under the loader that iterates the mix."""
        world = World(self.ranks.rank, self.ranks.world_size, 0, self.num_workers)
        return rank_items(self.spec, self.epoch, [], world)

    # -- epochs and state ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next; a resumed epoch keeps its progress when set again."""
        if epoch < 0:
            raise ConfigurationError(f"epoch must be non-negative, found {epoch}")
        if epoch != self.epoch or self.finished:
            self._restart(epoch)

    def _restart(self, epoch: int, done: Sequence[MixStage] = ()) -> None:
        self.epoch, self.done, self.consumed, self.finished = epoch, list(done), 0, False
        self._shared[0] = epoch
        self._shared[1] = 1 if self.done else 0

    def state(self, stages: Sequence[MixStage], *, epoch: int | None = None) -> dict[str, Any]:
        """The state of ``epoch`` (default: the mix's) after ``stages``."""
        return make_mix_state(
            fingerprint=self.fingerprint,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            stages=stages,
            sources=self.sources,
        )

    def state_dict(self) -> dict[str, Any]:
        """Progress of in-process iteration; with workers, ask the loader instead."""
        if get_worker_info() is not None:
            # torchdata's StatefulDataLoader asks each worker; a mix's progress is the loader's.
            raise ConfigurationError(
                "a DuckStreamMix's state is kept by DuckStreamLoader (or in-process iteration), "
                "not by each DataLoader worker: iterate it with DuckStreamLoader"
            )
        if self.finished:
            return self.state([], epoch=self.epoch + 1)
        return self.state(fold(self.done, MixStage(self.ranks.world_size, 1, self.consumed)))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` (a mix's or its loader's) left off, under any world."""
        epoch, stages = read_mix_state(
            state,
            fingerprint=self.fingerprint,
            seed=self.seed,
            sources=self.sources,
            shuffled=any(source.shuffle for source in self.spec.sources),
        )
        self._restart(epoch, stages)

    def source_items(self, stages: Sequence[MixStage], *, epoch: int | None = None) -> dict[str, int]:
        """Items each source gave, all ranks together, in ``epoch`` after ``stages``."""
        taken = replay(self.spec, self.epoch if epoch is None else epoch, stages).taken
        return dict(zip(self.names, taken, strict=True))

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        if info is not None:
            world = World(self.ranks.rank, self.ranks.world_size, info.id, info.num_workers)
            done = self.done if int(self._shared[1]) else []
            return self.read(world, epoch=int(self._shared[0]), done=done)
        if self.finished:
            self._restart(self.epoch)
        elif self.consumed:
            self.done = fold(self.done, MixStage(self.ranks.world_size, 1, self.consumed))
            self.consumed = 0
        return self._counted(self.read(World(self.ranks.rank, self.ranks.world_size)))

    def read(
        self, world: World, *, epoch: int | None = None, done: Sequence[MixStage] | None = None
    ) -> Iterator[Any]:
        """``world``'s slot of ``epoch`` after the stages ``done`` (defaults: the mix's)."""
        epoch = self.epoch if epoch is None else epoch
        done = list(self.done if done is None else done)
        mixed = open_slot(
            self.spec,
            [d.plan for d in self.datasets],
            [d.cursor.options for d in self.datasets],
            epoch=epoch,
            stages=done,
            world=world,
        )
        return self._interleaved(mixed.schedule, mixed.batches)

    def _interleaved(self, schedule: Any, batches: Sequence[Iterator[pa.RecordBatch]]) -> Iterator[Any]:
        items = [_items(d, b) for d, b in zip(self.datasets, batches, strict=True)]
        try:
            for source in schedule.tolist():
                try:
                    item = next(items[source])
                except StopIteration:
                    raise SourceError(
                        f"source {self.names[source]!r} ended before the items its plan counts: "
                        "its files changed while it was read"
                    ) from None
                yield item
        finally:
            for read in (*items, *batches):
                close = getattr(read, "close", None)
                if close is not None:
                    close()

    def _counted(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self.consumed += 1
            yield item
        self.finished = True

    def __repr__(self) -> str:
        return (
            f"DuckStreamMix(sources={list(self.names)}, weights={[round(w, 4) for w in self.weights]}, "
            f"stopping={self.stopping!r}, num_items={self.num_items}, seed={self.seed}, epoch={self.epoch})"
        )


def _items(dataset: DuckStreamDataset, batches: Iterator[pa.RecordBatch]) -> Iterator[Any]:
    """One source's items, collated and transformed as that dataset would."""
    transform = dataset.transform
    for batch in batches:
        if dataset.batch_size is None:
            for row in collate_rows(batch, dataset.output):
                yield row if transform is None else transform(row)
        else:
            item = collate_batch(batch, dataset.output)
            yield item if transform is None else transform(item)


def _check_datasets(datasets: Sequence[Any]) -> None:
    if not datasets:
        raise ConfigurationError("DuckStreamMix needs at least one DuckStreamDataset")
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, DuckStreamDataset):
            raise ConfigurationError(
                f"DuckStreamMix mixes DuckStreamDatasets; dataset {index} is a {type(dataset).__name__}"
            )
        if dataset.plan.num_rows == 0:
            raise SourceError(
                f"dataset {index} of the mix ({dataset.plan.summary().get('first_file')!r}, sql "
                f"{dataset.plan.query!r}) has no rows: an empty source would never be drawn"
            )
        if dataset.even == "split":
            raise ConfigurationError(f"dataset {index}: a mix needs even='pad' or 'drop', found 'split'")
    first = datasets[0]
    for index, dataset in enumerate(datasets[1:], start=1):
        for name in ("batch_size", "output"):
            if getattr(dataset, name) != getattr(first, name):
                raise ConfigurationError(
                    f"the mixed datasets must share {name}: dataset 0 has {getattr(first, name)!r}, "
                    f"dataset {index} has {getattr(dataset, name)!r}"
                )
        a, b = first.plan.schema, dataset.plan.schema
        if a.names != b.names:
            raise ConfigurationError(
                f"the mixed datasets must yield the same columns: dataset 0 has {a.names}, dataset "
                f"{index} has {b.names} (select the same columns in each SQL)"
            )
        differ = [f"{f.name}: {f.type} vs {g.type}" for f, g in zip(a, b, strict=True) if f.type != g.type]
        if differ:
            raise ConfigurationError(
                f"the mixed datasets must yield the same column types: dataset 0 and dataset {index} "
                f"differ in {differ} (cast them in the SQL)"
            )


class MixPasses:
    """What DuckStreamLoader does for a mix: each pass is the next epoch, and it knows how
    many items the training loop took, so its state resumes exactly, also with workers."""

    def __init__(self, mix: DuckStreamMix, num_workers: int) -> None:
        self.mix = mix
        self.workers = max(1, num_workers)
        mix.ranks = World(*mix.detect_ranks())
        mix.num_workers = self.workers
        self._epoch = mix.epoch
        self._consumed = 0
        self._resuming = False
        self._between_epochs = True
        self._epoch_chosen = False
        self._pass: tuple[int, list[MixStage], int] = (mix.epoch, [], mix.ranks.world_size)

    def passes(self, num_workers: int, workers: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """One pass: through ``workers()`` (DataLoader's own iterator) or in-process."""
        mix = self.mix
        mix.ranks = World(*mix.detect_ranks())
        if self._resuming:
            self._resuming = False
        else:
            if not self._between_epochs and not self._epoch_chosen:
                self._epoch = mix.epoch + 1  # the last pass was left early
            mix.set_epoch(self._epoch)
        self._epoch_chosen = False
        self._consumed = 0
        self._between_epochs = False
        mix.consumed = 0
        self._pass = (mix.epoch, list(mix.done), mix.ranks.world_size)
        in_process = World(mix.ranks.rank, mix.ranks.world_size)
        iterator = workers() if num_workers else mix.read(in_process)
        for item in iterator:
            self._consumed += 1
            yield item
        self._epoch = mix.epoch + 1
        self._between_epochs = True

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ConfigurationError(f"epoch must be non-negative, found {epoch}")
        if self._resuming and epoch == self.mix.epoch:
            return
        self._resuming = False
        self._epoch = epoch
        self._epoch_chosen = True

    def state_dict(self) -> dict[str, Any]:
        mix = self.mix
        if self._resuming:
            return mix.state(mix.done)
        if self._between_epochs:
            return mix.state([], epoch=self._epoch)
        return mix.state(fold(mix.done, MixStage(mix.ranks.world_size, self.workers, self._consumed)))

    def load_state_dict(self, state: Mapping[str, Any], *, running: bool) -> None:
        if running:
            raise ConfigurationError(
                "this loader's persistent workers are already running; load the state into a "
                "new DuckStreamLoader (or before the first pass)"
            )
        if not isinstance(state, Mapping):
            raise StateError(f"expected the state to be a dict, found {type(state).__name__}")
        self.mix.load_state_dict(state)
        self._epoch = self.mix.epoch
        self._resuming = True
        self._between_epochs = True

    def source_items(self) -> dict[str, int]:
        """Items each source gave in the current (or last) pass's epoch, all ranks together."""
        epoch, done, world_size = self._pass
        stages = fold(done, MixStage(world_size, self.workers, self._consumed))
        return self.mix.source_items(stages, epoch=epoch)
