"""PyTorch faces of the stream: DuckStreamDataset (IterableDataset) and DuckStreamLoader."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.pin_memory import pin_memory

from duckstream.adapters.collate import OUTPUTS, Output, collate_batch, collate_rows
from duckstream.adapters.plan_share import shared_plan
from duckstream.adapters.ring_items import RingArrays, pack_arrays, register
from duckstream.adapters.transport import Ring, pack, ring_capacity, ring_fits, unpack, unpack_item
from duckstream.adapters.worker_gc import freeze_inherited
from duckstream.core.cursor import EpochCursor, SlotRead, SlotResume
from duckstream.core.late_filter import Count
from duckstream.core.options import ROW_MODE_READ_ROWS, ReadOptions
from duckstream.core.partition import Even, rank_rows, worker_rows
from duckstream.core.pipeline import SlotStart, rebatch
from duckstream.core.planning import Source, StreamPlan, prepare
from duckstream.core.resume import Stage, fold, least_spread_chunk, transfer_left, worker_items
from duckstream.core.world import World, ranks_from_env
from duckstream.errors import ConfigurationError, StateError
from duckstream.storage import S3Settings

__all__ = ["DuckStreamDataset", "DuckStreamLoader", "Transport", "detect_ranks"]

if TYPE_CHECKING:
    from duckstream.adapters.mix import DuckStreamMix, MixPasses


def detect_ranks() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return ranks_from_env()


@dataclass
class Transport:
    """How the items of a pass travel, as the loader set it up: reading slots per rank,
    items per transfer, whether workers send Arrow batches, and the ring they write Arrow
    batches (or the arrays of a transform's items) to."""

    num_workers: int = 1
    chunk: int = 1
    ship_arrow: bool = False
    ring: Ring | None = None
    # Workers that stay for the next pass (persistent_workers): each begins reading the next
    # epoch while its last windows go out, as one process does.
    persistent: bool = False


class DuckStreamDataset(IterableDataset[Any]):
    """A torch ``IterableDataset`` over Parquet files or a lakehouse table, read by DuckDB.

    Each rank and DataLoader worker reads its own exact share; every row once per epoch (up to
    ``even="pad"`` padding). Items are rows (``batch_size=None``) or batches; see the package
    docs for their shape per ``output``. Call :meth:`set_epoch` each epoch (DuckStreamLoader
    does), and use :meth:`state_dict`/:meth:`load_state_dict` to resume mid-epoch.

    Under an initialised ``torch.distributed``, construction is a collective: rank 0 plans and
    the other ranks receive its plan, so every rank must construct the dataset. ``cache_dir``
    (a folder or ``s3://`` prefix) keeps plans for the next start while the files are unchanged.

    ``count="skip"`` plans a filtering ``sql`` without counting the rows it keeps (the
    default ``"exact"`` counts them in one pass when planning): shares, ``even``, ``len()``
    and states then count source rows, each item is a batch of ``batch_size`` source rows
    filtered and projected by ``sql`` (varying in size, possibly empty, always yielded, so
    ranks stay in lockstep), ``num_rows`` raises, and ``batch_size`` must be set.
    """

    def __init__(
        self,
        source: Source,
        sql: str | None = None,
        *,
        batch_size: int | None = None,
        drop_last: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int | None = None,
        even: Even = "pad",
        output: Output = "torch",
        transform: Callable[[Any], Any] | None = None,
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        s3_region: str | None = None,
        s3_use_ssl: bool | None = None,
        s3_retry_seconds: float | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        count: Count = "exact",
    ) -> None:
        options = ReadOptions(shuffle, seed, shuffle_buffer, even, threads, batch_size, drop_last)
        if output not in OUTPUTS:
            raise ConfigurationError(f"output must be one of {list(OUTPUTS)}, found {output!r}")
        s3 = S3Settings.resolve(
            s3_endpoint,
            s3_access_key,
            s3_secret_key,
            region=s3_region,
            use_ssl=s3_use_ssl,
            retry_seconds=s3_retry_seconds,
        )
        # Under torch.distributed rank 0 plans and the others receive it (a collective).
        self.plan: StreamPlan = shared_plan(
            lambda: prepare(source, sql, s3=s3, cache_dir=cache_dir, count=count), s3
        )
        if self.plan.late is not None and batch_size is None:
            raise ConfigurationError(
                "count='skip' needs a batch_size: items are then batches of source rows, each "
                "filtered by the SQL, and rows that fail the filter would leave no item to count; "
                "set batch_size, or use count='exact' (the default) to yield rows"
            )
        # Where the rank and world size come from (the loader asks again when a pass starts).
        self.detect_ranks: Callable[[], tuple[int, int]] = detect_ranks
        self.ranks = World(*self.detect_ranks())  # this rank of the world (workers apart)
        self.cursor = EpochCursor(self.plan, options, ranks=self.ranks.world_size)
        self.output: Output = output
        self.transform = transform
        self.transport = Transport()  # DuckStreamLoader sets it up for each pass
        # The epoch an in-process DuckStreamLoader reads after this pass, if it knows: that
        # read begins while this pass's last windows go out.
        self.next_epoch: int | None = None
        # Persistent DataLoader workers keep the copy of the dataset they started with: the
        # epoch, and whether resumed stages still apply, reach them through shared memory.
        self._shared = torch.zeros(2, dtype=torch.int64)
        self._shared.share_memory_()  # type: ignore[no-untyped-call]
        # Inside a DataLoader worker: the read it makes and the items it yielded, which
        # torchdata's StatefulDataLoader asks each worker for; a worker state loaded for it.
        self._read: SlotRead | None = None
        self._read_yielded = 0
        self._resume: SlotResume | None = None

    # -- settings --------------------------------------------------------------------------

    @property
    def options(self) -> ReadOptions:
        return self.cursor.options

    @property
    def batch_size(self) -> int | None:
        return self.options.batch_size

    @property
    def drop_last(self) -> bool:
        return self.options.drop_last

    @property
    def shuffle(self) -> bool:
        return self.options.shuffle

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def shuffle_buffer(self) -> int:
        """Rows per shuffle window; by default 64 MiB of rows, at most 32,768."""
        return self.options.buffer

    @property
    def even(self) -> Even:
        return self.options.even

    @property
    def threads(self) -> int | None:
        return self.options.threads

    # -- sizes -----------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Rows of the source after the SQL (before padding or dropping for balance).

        Not known under ``count="skip"``, which never counts the rows the SQL keeps: raises
        :class:`ConfigurationError` (``len()`` still gives the items per epoch)."""
        if self.plan.late is not None:
            raise ConfigurationError(
                "num_rows is not known: this dataset was planned with count='skip', which does not "
                f"count the rows the SQL keeps (the source holds {self.plan.num_rows} rows before it); "
                "len() still gives this rank's items per epoch, or plan with count='exact' (the default)"
            )
        return self.plan.num_rows

    def __len__(self) -> int:
        """Items this rank yields in one epoch under the loader that iterates the dataset
        (under ``count="skip"``: batches of source rows, some of them short or empty)."""
        per_worker = self._worker_shares(self.transport.num_workers)
        return sum(worker_items(rows, self.options.item_rows, self.options.drops_last) for rows in per_worker)

    def _worker_shares(self, num_workers: int) -> list[int]:
        """Rows each of this rank's ``num_workers`` workers reads in an epoch."""
        rank_total = rank_rows(self.plan.num_rows, self.ranks.world_size, self.even, self.ranks.rank)
        return worker_rows(rank_total, max(1, num_workers))

    # -- epochs and state ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next; a resumed epoch keeps its progress when set again."""
        self.cursor.set_epoch(epoch)
        self._publish()

    def _publish(self) -> None:
        self._shared[0] = self.cursor.epoch
        self._shared[1] = 1 if self.cursor.done else 0

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    def state_dict(self) -> dict[str, Any]:
        """Progress of in-process iteration; with workers, ask the loader instead.

        Inside a DataLoader worker (where torchdata's StatefulDataLoader asks), it is that
        worker's own progress; the StatefulDataLoader's state holds every worker's, and loads
        into this dataset or a DuckStreamLoader as a whole.
        """
        if get_worker_info() is not None and self._read is not None:
            return self.cursor.slot_state_dict(self._read, self._read_yielded)
        current = self.cursor.stage(
            world_size=self.ranks.world_size,
            num_workers=self.transport.num_workers,
            chunk=self.transport.chunk,
            consumed=self.cursor.consumed,
        )
        return self.cursor.state_dict(current)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` left off, under this process's world size and workers.

        ``state`` is a dataset or DuckStreamLoader state, or the state of a torchdata
        StatefulDataLoader over this dataset.
        """
        resume = self.cursor.load_state_dict(state)
        if resume is not None:
            if get_worker_info() is None:
                raise StateError(
                    "this is one DataLoader worker's state; load the state of the whole loader "
                    "(StatefulDataLoader.state_dict()) instead"
                )
            # In a worker torchdata restores: continue this very worker's role, and only for
            # the next pass; the shared epoch belongs to the main process.
            self._resume = resume
            return
        self._publish()

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        world = World(
            self.ranks.rank,
            self.ranks.world_size,
            info.id if info is not None else 0,
            info.num_workers if info is not None else 1,
        )
        if info is None:
            self.transport = Transport()
        # Batches collated here may hold views into the windows' read batches (to_pylist makes
        # the same values); Arrow handed on, to the loop or through the ring, holds its values.
        views = self.output != "arrow" and not self.transport.ship_arrow
        if info is not None:
            freeze_inherited()
            resume, self._resume = self._resume, None
            epoch = int(self._shared[0])
            read = self.cursor.open(
                world,
                epoch=epoch,
                done=self.cursor.done if int(self._shared[1]) else [],
                chunk=self.transport.chunk,
                resume=resume,
                then=epoch + 1 if self.transport.persistent else None,
                views=views,
            )
        else:
            self.cursor.begin_pass(world.world_size)
            read = self.cursor.open(world, then=self.next_epoch, views=views)
        self._read, self._read_yielded = read, 0
        transport = self.transport
        if info is not None and transport.ship_arrow and self.batch_size is None:
            return self._row_transfers(read.batches, read.stage, read.start, info.id)
        items = self._items(read.batches)
        if info is not None and self.transform is not None and transport.ring is not None:
            items = self._ring_arrays(items, info.id)
        if info is not None:
            counted = self._worker_counted(items)
            return self._chunked(counted, read.stage, read.start) if transport.chunk > 1 else counted
        return self._counted(items)

    def _items(self, batches: Iterator[Any]) -> Iterator[Any]:
        transform = self.transform
        if self.transport.ship_arrow and self.batch_size is not None:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            yield from (pack(batch, self.transport.ring, worker) for batch in batches)
            return
        for batch in batches:
            if self.batch_size is None:
                for row in collate_rows(batch, self.output):
                    yield row if transform is None else transform(row)
            else:
                item = collate_batch(batch, self.output)
                yield item if transform is None else transform(item)

    def _ring_arrays(self, items: Iterator[Any], worker: int) -> Iterator[Any]:
        ring = self.transport.ring
        assert ring is not None
        for item in items:
            yield pack_arrays(item, ring, worker)

    def _row_transfers(
        self, batches: Iterator[pa.RecordBatch], stage: Stage, start: SlotStart, worker: int
    ) -> Iterator[Any]:
        # Rows travel as Arrow batches of `chunk` rows, made into rows by the loader. As with
        # batches, the first transfer of a resumed worker finishes the one the loop was inside.
        first = transfer_left(stage, start.world.worker, start.items)
        for transfer in rebatch(batches, stage.chunk, drop_last=False, first=first):
            self._read_yielded += transfer.num_rows
            yield pack(transfer, self.transport.ring, worker)

    def _chunked(self, items: Iterator[Any], stage: Stage, start: SlotStart) -> Iterator[list[Any]]:
        # Transfers are counted from the start of the slot's stage (a staggered first one, then
        # `chunk` items; see resume.first_transfer), so a resumed worker first finishes the
        # transfer the training loop was inside.
        size = transfer_left(stage, start.world.worker, start.items)
        held: list[Any] = []
        for item in items:
            held.append(item)
            if len(held) == size:
                yield held
                held, size = [], stage.chunk
        if held:
            yield held

    def _worker_counted(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self._read_yielded += 1
            yield item

    def _counted(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self.cursor.advance()
            yield item
        self.cursor.finish()

    def __repr__(self) -> str:
        return (
            f"DuckStreamDataset(files={len(self.plan.files)}, "
            f"{'rows' if self.plan.late is None else 'source_rows'}={self.plan.num_rows}, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed}, "
            f"epoch={self.epoch}, output={self.output!r})"
        )


def _identity(item: Any) -> Any:
    return item


# Batches a worker hands over at once: DataLoader's cost per transfer (a pipe message, a wake-up
# of each side) is paid once for them all. About 1 MiB a transfer, at most 16 batches.
_TRANSFER_BYTES = 1024 * 1024
_MAX_BATCHES_PER_TRANSFER = 16
_TRANSFERS_PER_WORKER = 16
# Below this many items a worker, the chunk is searched for (see _transfer_items); from it, any
# chunk leaves the workers' mean places in the loop under 0.01 of the places' spread apart.
_FEW_ITEMS = 256


def _batches_per_transfer(dataset: DuckStreamDataset) -> int:
    if dataset.batch_size is None:  # rows: about 1 MiB of them, at most a read batch
        return max(1, min(ROW_MODE_READ_ROWS, _TRANSFER_BYTES // max(1, dataset.plan.row_bytes)))
    batch_bytes = max(1, dataset.plan.row_bytes * dataset.batch_size)
    return max(1, min(_MAX_BATCHES_PER_TRANSFER, _TRANSFER_BYTES // batch_bytes))


def _busiest_worker_items(dataset: DuckStreamDataset, num_workers: int) -> tuple[int, float]:
    """Items the busiest worker of this rank yields in an epoch, and the share of a whole item
    its last holds (a short last batch counts, unless dropped: 12,614 rows over 8 ranks of 4
    workers, 64 a batch, are 6 whole batches and one of 10 or 11 rows a worker)."""
    options = dataset.options
    rows = max(dataset._worker_shares(num_workers))
    items = worker_items(rows, options.item_rows, options.drops_last)
    short = 0 if options.drops_last else rows % options.item_rows
    return items, (short / options.item_rows if short else 1.0)


def _accelerator_pins() -> bool:
    # As DataLoader decides: pinned memory needs an accelerator, and MPS has none.
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator is not None and accelerator.type != "mps"


def _pinned(batch: dict[str, Any]) -> dict[str, Any]:
    # Our own collated items hold tensors at the top level only; torch's pin_memory would also
    # walk every string of every list column.
    return {name: v.pin_memory() if isinstance(v, torch.Tensor) else v for name, v in batch.items()}


class DuckStreamLoader(DataLoader[Any]):
    """A DataLoader for a :class:`DuckStreamDataset` (or a DuckStreamMix): each pass is the next epoch.

    Items are the dataset's, unchanged (batching lives in the dataset). It knows how many
    items the training loop took, so :meth:`state_dict` resumes exactly, also with workers.
    """

    def __init__(
        self,
        dataset: DuckStreamDataset | DuckStreamMix,
        num_workers: int = 0,
        *,
        batches_per_transfer: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``batches_per_transfer``: batches (rows, when the dataset yields rows) a worker hands
        over at once (default: about 1 MiB of the rows read, also when a transform makes the
        items; a mix's workers hand over one item at a time)."""
        from duckstream.adapters.mix import DuckStreamMix, MixPasses

        if not isinstance(dataset, DuckStreamDataset | DuckStreamMix):
            raise ConfigurationError(
                f"DuckStreamLoader reads a DuckStreamDataset or DuckStreamMix, found {type(dataset).__name__}"
            )
        for key in ("batch_size", "sampler", "batch_sampler", "shuffle", "collate_fn"):
            if kwargs.get(key) not in (None, False):
                raise ConfigurationError(
                    f"DuckStreamLoader does not take {key}=...; set batching and shuffling on the dataset"
                )
            kwargs.pop(key, None)
        if kwargs.get("in_order") is False:
            raise ConfigurationError("in_order=False would make progress unknowable; leave it on")
        if batches_per_transfer is not None and batches_per_transfer < 1:
            raise ConfigurationError(f"batches_per_transfer must be at least 1, found {batches_per_transfer}")
        super().__init__(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity, **kwargs)
        # A mix's passes and state live in MixPasses (see duckstream.adapters.mix).
        self._mix: MixPasses | None = None
        if isinstance(dataset, DuckStreamMix):
            self._mix = MixPasses(dataset, num_workers)
            return
        # A dataset built before torch.distributed started must still count this rank's share.
        dataset.ranks = World(*dataset.detect_ranks())
        dataset.transport = Transport(num_workers=max(1, num_workers))
        self._batches_per_transfer = batches_per_transfer or _batches_per_transfer(dataset)
        self._given_per_transfer = batches_per_transfer is not None
        self._chunk = 1  # items per transfer of the current pass
        self._ring: Ring | None = None  # where this pass's workers put their batches
        self._epoch = dataset.epoch
        self._consumed = 0
        self._resuming = False
        self._between_epochs = True
        self._epoch_chosen = False  # set_epoch was called for the next pass

    @property
    def duck_dataset(self) -> DuckStreamDataset:
        assert isinstance(self.dataset, DuckStreamDataset)
        return self.dataset

    @property
    def epoch(self) -> int:
        """The epoch of the dataset (or mix) read."""
        return self._mix.mix.epoch if self._mix is not None else self.duck_dataset.epoch

    def source_items(self) -> dict[str, int] | None:
        """For a mix: items each source gave in the pass's epoch (all ranks); else None."""
        return None if self._mix is None else self._mix.source_items()

    def __len__(self) -> int:
        if self._mix is not None:
            return len(self._mix.mix)
        return len(self.duck_dataset)

    def _transfer_items(self, dataset: DuckStreamDataset) -> int:
        """Items a worker hands over at once this pass.

        DataLoader takes the workers' transfers in turn: with transfers of one item, worker
        ``j``'s items reach the loop ``j`` items after worker 0's, and where each worker has
        few items that lag shows as order (one file among 8 ranks of 4 workers, 10 batches a
        worker: |Spearman| 0.09). Staggered first transfers cancel it (see
        resume.first_transfer) where a chunk is a whole number of rounds, a multiple of the
        workers: 0.013 there. What is left grows with a transfer's share of a worker's items,
        so a chunk is kept to a 16th of them (unless set; 4 workers of 100 items, 6 a chunk:
        the workers' mean places apart by 0.008 of the spread of places, 4: 0.0002); where
        that is fewer than the workers, it is the size (up to twice the workers) that leaves
        the workers' items least apart in the loop (see resume.least_spread_chunk: 3 files among
        8 ranks of 4 workers, 5 batches a worker: 2 batches a chunk kept 0.145; 4, 0.031).
        """
        if self._given_per_transfer or not dataset.shuffle:
            return self._batches_per_transfer
        workers = self.num_workers
        items, last = _busiest_worker_items(dataset, workers)
        chunk = max(1, min(self._batches_per_transfer, items // _TRANSFERS_PER_WORKER))
        if chunk >= workers:
            return chunk - chunk % workers
        if items < _FEW_ITEMS:
            return least_spread_chunk(workers, items, 2 * workers, last)
        return chunk

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self._mix is not None:
            yield from self._mix.passes(self.num_workers, lambda: DataLoader.__iter__(self))
            return
        dataset = self.duck_dataset
        cursor = dataset.cursor
        dataset.ranks = World(*dataset.detect_ranks())
        if self._resuming:
            self._resuming = False
        else:
            if not self._between_epochs and not self._epoch_chosen:
                # The last pass was left early (a step limit, a break): this one is the next epoch.
                self._epoch = dataset.epoch + 1
            dataset.set_epoch(self._epoch)
        self._epoch_chosen = False
        self._consumed = 0
        self._between_epochs = False
        ship = self.num_workers > 0 and dataset.transform is None
        fresh_workers = not (self.persistent_workers and self._iterator is not None)
        if fresh_workers:
            # A transform's items share transfers too: each costs a DataLoader message.
            self._chunk = self._transfer_items(dataset) if self.num_workers else 1
        if self.num_workers and fresh_workers:
            # New workers start with this pass and get a ring of their own: the workers of a
            # pass left early may still be finishing a batch, which they write to their ring.
            # Workers write Arrow batches there, or the arrays a transform's items hold.
            batch_bytes = dataset.plan.row_bytes * (dataset.batch_size or 1)
            capacity = ring_capacity(batch_bytes * self._chunk)
            fits = ring_fits(self.num_workers, capacity)
            self._ring = Ring(self.num_workers, capacity) if fits else None
            if self._ring is not None:
                register(self._ring)
        ring = self._ring
        if self.num_workers == 0:
            # In-process the dataset counts for itself; folding its progress keeps one truth.
            cursor.drop_stretch()
        # Workers copy the dataset when they start (in super().__iter__): they ship Arrow
        # batches in transfers of `chunk`; the dataset itself goes back to plain items.
        workers = max(1, self.num_workers)
        persistent = bool(self.num_workers) and self.persistent_workers
        dataset.transport = Transport(workers, self._chunk, ship, ring, persistent)
        iterator: Iterator[Any]
        try:
            # In-process, DataLoader would only hand over each item (about 10 us a row); the
            # dataset's own iterator is the same stream.
            if self.num_workers:
                iterator = super().__iter__()
            else:
                # The next pass reads the next epoch unless the loop says otherwise.
                dataset.next_epoch = dataset.epoch + 1
                iterator = iter(dataset)
        finally:
            dataset.transport = Transport(workers, ring=ring)
            dataset.next_epoch = None
        # DataLoader pins what workers send (here: where a batch lies), not the tensors collated
        # from it: those, and items read in-process, are pinned here, as DataLoader would. A
        # transform's items are pinned too (they are what the loop copies to the device); plain
        # Python or NumPy items are not walked, as pinning them would visit every value.
        pin = (
            (ship or not self.num_workers)
            and (dataset.output == "torch" or dataset.transform is not None)
            and self.pin_memory
            and _accelerator_pins()
        )
        rows = ship and dataset.batch_size is None
        for item in iterator:
            if rows:  # a transfer of rows: copied out, since each row may view its batch
                for row in collate_rows(unpack(item, dataset.plan.schema, ring), dataset.output):
                    self._consumed += 1
                    yield _pinned(row) if pin else row
                continue
            for one in item if self._chunk > 1 else (item,):
                self._consumed += 1
                if isinstance(one, RingArrays):
                    # A transform's item whose arrays lie in the ring (DataLoader's pin-memory
                    # thread, where it runs, has already copied them out into pinned memory).
                    yield one.take(ring)
                    continue
                if not ship:
                    # In-process items may be anything a transform returns: pinned as DataLoader does.
                    yield pin_memory(one) if pin else one  # type: ignore[no-untyped-call]
                    continue
                batch = unpack_item(one, dataset.plan.schema, dataset.output, ring)
                yield _pinned(batch) if pin else batch
        self._epoch = dataset.epoch + 1
        self._between_epochs = True

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` on the next pass; a loaded state of that same epoch keeps its progress,
        a loaded state of another epoch is dropped (a trainer that counts epochs itself decides)."""
        if self._mix is not None:
            self._mix.set_epoch(epoch)
            return
        if epoch < 0:
            raise ConfigurationError(f"epoch must be non-negative, found {epoch}")
        if self._resuming and epoch == self.duck_dataset.epoch:
            return
        self._resuming = False
        self._epoch = epoch
        self._epoch_chosen = True

    def state_dict(self) -> dict[str, Any]:
        """What the training loop consumed, as a dataset state (loads into either)."""
        if self._mix is not None:
            return self._mix.state_dict()
        dataset = self.duck_dataset
        cursor = dataset.cursor
        if self._resuming:
            return cursor.state(cursor.done)
        if self._between_epochs:
            return cursor.state([], epoch=self._epoch)
        stage = cursor.stage(
            world_size=dataset.ranks.world_size,
            num_workers=max(1, self.num_workers),
            chunk=self._chunk,
            consumed=self._consumed,
        )
        return cursor.state(fold(cursor.done, stage))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The next pass continues ``state``'s epoch where it stopped."""
        if self._mix is not None:
            self._mix.load_state_dict(state, running=self.persistent_workers and self._iterator is not None)
            return
        if self.persistent_workers and self._iterator is not None:
            raise ConfigurationError(
                "this loader's persistent workers are already running; load the state into a "
                "new DuckStreamLoader (or before the first pass)"
            )
        self.duck_dataset.load_state_dict(state)
        self._epoch = self.duck_dataset.epoch
        self._resuming = True
        self._between_epochs = True
