"""The stream, in each worker: epoch order -> partition -> read -> shuffle -> batches.

:func:`read_slot` streams one slot's share of one epoch from a :class:`StreamPlan` made by
:func:`duckstream.core.planning.prepare`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import pyarrow as pa

from duckstream.core import late_filter
from duckstream.core.batch_sql import BatchSQL
from duckstream.core.gather import Window
from duckstream.core.held_heads import Piece, held_heads, stream_indices
from duckstream.core.interleave import DEFAULT_STREAMS
from duckstream.core.options import ReadOptions
from duckstream.core.order import epoch_order
from duckstream.core.owed import Owed
from duckstream.core.partition import SlotSpan
from duckstream.core.planning import StreamPlan
from duckstream.core.ranges import length, slice_ranges
from duckstream.core.read_ahead import Producer, read_ahead_each
from duckstream.core.reader import ShardReader, SqlConnections, default_threads, read_batch_rows
from duckstream.core.resume import Stage, continuation, read_span, rows_emitted
from duckstream.core.shared_groups import SharedGroups
from duckstream.core.shuffle import SHUFFLE_BUFFER_BYTES, window_key, window_permutation
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, StateError

__all__ = [
    "MAX_READ_AHEAD_LANES",
    "SlotStart",
    "locate_slot",
    "read_slot",
    "read_streams",
    "rebatch",
    "shuffled_batches",
    "windows",
]

MAX_READ_AHEAD_LANES = 4
# Rows a stream decodes at a time at least: pyarrow's cost per batch passes its cost per row
# below that.
_MIN_SHARE_ROWS = 64
# Windows' shares of its rows a stream decodes at a time (a read batch, ~4 MiB, at most):
# decoded one share at a time (1,785 rows of the bench's captions), the read threads and the
# loop switched twice as often, and a shuffled epoch in one process took 1-12% longer on two
# cores (four runs of 12-20 rounds). The 16 streams open at once hold 64 MiB more at most so.
_SHARES_A_DECODE = 4
# Rows gathered from a shuffle window at once, in bytes: batches of narrow rows come in
# groups of slices, wide rows one batch at a time (a held slice keeps its group alive).
GATHER_BYTES = 1024 * 1024
# What a shuffled read's open decoders may hold together (pages of 10 KiB images: 8 decoders).
DECODER_BYTES = 192 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class SlotStart:
    """Where one slot's read of an epoch begins, after the stages already done."""

    epoch: int
    span: SlotSpan  # the slot's share of the positions owed at the start of the current stage
    prior: tuple[Stage, ...]  # the stages of the epoch before the current one
    world: World  # the slot read: a resumed worker may continue another worker's role
    emitted: int  # rows of this slot's span emitted before the read starts
    items: int  # items of this slot the training loop already took in the current stage
    streams: int = 1  # pieces the current stage reads at once when shuffled

    @property
    def stage_index(self) -> int:
        """The current stage's number in the epoch (it seeds the shuffle windows)."""
        return len(self.prior)


def locate_slot(
    plan: StreamPlan,
    options: ReadOptions,
    *,
    world: World,
    epoch: int,
    done: Sequence[Stage],
    current: Stage,
    slot_items: tuple[int, int] | None = None,
) -> SlotStart:
    """Where ``world``'s slot starts reading ``epoch`` after the stages ``done``.

    When the last stage in ``done`` had the setup ``current`` has, the read continues it:
    DataLoader's round robin restarts at worker 0, so the workers' roles rotate to continue
    the interrupted order. ``slot_items`` (role, items), from a per-worker state such as
    torchdata's StatefulDataLoader keeps, continues one role exactly, without rotation.

    Only this slot's share of what the epoch still owes is listed (:class:`Owed`): a slot of
    a large world costs little whatever the world.
    """
    continuing = bool(done) and done[-1].same_setup(current)
    if slot_items is not None and not continuing:
        raise StateError(
            f"a worker's own progress (a StatefulDataLoader state) resumes under the setup it was "
            f"saved with ({done[-1] if done else None}), found {current}; to change the world size "
            "or worker count, load it into the dataset or a DuckStreamLoader first"
        )
    prior = tuple(done[:-1] if continuing else done)
    owed = Owed(
        plan.num_rows,
        prior,
        seed=options.seed,
        epoch=epoch,
        shuffle=options.shuffle,
        even=options.even,
        layout=plan.layout_for,
    )
    if not continuing:
        return SlotStart(epoch, owed.span(world), prior, world, 0, 0, current.streams)
    stage = done[-1]
    if slot_items is not None:
        role, items = slot_items
        world = replace(world, worker=role)
        span = owed.span(world)
        emitted = min(items * stage.batch_size, span.rows)
        return SlotStart(epoch, span, prior, world, emitted, items, stage.streams)
    world = continuation(owed.rows, stage, world, options.even)
    emitted = rows_emitted(owed.rows, stage, world, options.even)
    items = -(-emitted // stage.batch_size)
    return SlotStart(epoch, owed.span(world), prior, world, emitted, items, stage.streams)


def read_streams(plan: StreamPlan) -> int:
    """Pieces a shuffled read of ``plan`` reads at once. Each open decoder (pyarrow's, or a
    query DuckDB streams from the files itself) holds its current pages: as many as fit in
    ``DECODER_BYTES``, 2 to 16."""
    return max(2, min(DEFAULT_STREAMS, DECODER_BYTES // max(1, plan.decoder_bytes)))


def read_slot(
    plan: StreamPlan, options: ReadOptions, start: SlotStart, *, views: bool = False
) -> Iterator[pa.RecordBatch]:
    """One slot's share of ``start.epoch`` from ``start`` (:func:`locate_slot`'s answer), in
    batches of ``options.read_rows``.

    ``start.span`` is the slot's share of the rows the epoch still owes; a read that
    continues an interrupted stage goes on exactly where it stopped, as if never interrupted.
    ``options`` must be sized (:meth:`ReadOptions.sized`). ``views``: a shuffled read's wide
    binary and string columns may come as Arrow's view types, for a reader that makes Python
    values of them (see :class:`~duckstream.core.gather.Window`).
    """
    if plan.late is not None:  # count="skip": source rows are read, the SQL runs on each batch
        yield from late_filter.filtered(plan, read_slot(late_filter.reading(plan), options, start))
        return
    seed, epoch, shuffle = options.seed, start.epoch, options.shuffle
    shuffle_buffer, batch_size, drop_last = options.buffer, options.read_rows, options.drops_last
    world = start.world
    key = window_key(seed, epoch, start.stage_index, world)
    span, owners, window_rows = read_span(
        start.span,
        layout=plan.layout_for(world.world_size),
        key=key,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        streams=start.streams,
        buffer=shuffle_buffer,
        workers=world.num_workers,
    )
    emitted = start.emitted
    first_window, inside = divmod(emitted, window_rows) if shuffle else (0, 0)
    begin = first_window * window_rows if shuffle else emitted
    order = epoch_order(len(plan.shards), seed=seed, epoch=epoch, shuffle=shuffle)
    # Read batches stay near 4 MiB even when a shuffle window is larger (wide rows): pyarrow
    # decodes 64 MiB batches of 10 KiB images about half as fast.
    threads = options.threads or default_threads(world.num_workers)
    # pyarrow decodes in the thread that asks for a batch. With two threads or more, threads
    # of their own (up to 4, each with a reader) decode the next pieces while this one gathers
    # (or the training step runs). From an object store the lanes mostly wait on it: all 4 run
    # whatever the cores, so that their requests overlap. Queries DuckDB runs over the files
    # themselves are faster with every thread of their own (measured here).
    ahead = plan.decodes and (threads > 1 or plan.remote)
    lanes = (MAX_READ_AHEAD_LANES if plan.remote else min(MAX_READ_AHEAD_LANES, threads)) if ahead else 0
    interleaved = shuffle and start.streams > 1
    # A query that keeps rows (no WHERE, no UNNEST) runs once a window instead of once a
    # stripe: stripes are short, and each DuckDB run costs about 3 ms whatever its rows.
    window_sql = (
        BatchSQL(plan.batch, plan.schema)
        if interleaved and plan.batch is not None and plan.narrow and plan.batch.reads
        else None
    )
    read_plan = _decoding(plan) if window_sql is not None else plan
    copied = plan.copied_for(world.world_size)
    # An interleaved read opens a reader per piece; otherwise one per lane, or one.
    readers = (
        []
        if interleaved
        else [ShardReader(plan, threads=1) for _ in range(lanes)] or [ShardReader(plan, threads=threads)]
    )
    # Where each shard ends in the epoch order, found once: each stream looks its pieces up in it.
    sizes = np.asarray(plan.counts, dtype=np.int64)[order]
    ends = np.cumsum(sizes)
    # The pieces a read one after another takes in turn (an interleaved one finds each stream's).
    pieces = (
        iter(()) if interleaved else _pieces(slice_ranges(span.ranges, begin, span.rows), order, sizes, ends)
    )
    batches: Iterable[pa.RecordBatch] = ()
    connections: SqlConnections | None = None
    try:
        if interleaved:
            ranges, owned = _slice_owned(span.ranges, owners, begin, span.rows)
            # A stream decodes its share of a few windows at a time; its stripes are slices.
            share = max(_MIN_SHARE_ROWS, window_rows // max(1, start.streams))
            batch_rows = min(read_batch_rows(plan.row_bytes), _SHARES_A_DECODE * share)
            # Rotated pieces' first rows are kept, the smallest first, while those kept at once
            # fit a shuffle window's bytes: with at most DEFAULT_STREAMS open, every head of
            # the plan's layout.held_rows or fewer (those the read order counts on).
            # Each stream's pieces, found once for both.
            streams = stream_indices(owned)
            stream_pieces = _stream_pieces(ranges, streams, order, sizes, ends)
            held = held_heads(ranges, streams, stream_pieces, SHUFFLE_BUFFER_BYTES // max(1, plan.row_bytes))
            # The parts of a small row group, each its own stream, slice it decoded once.
            shared = SharedGroups()
            # Pieces DuckDB reads from the files share its database, a cursor each.
            connections = None if read_plan.decodes else SqlConnections(read_plan, threads=1)

            def lane_ranges(mask: np.ndarray, each_ahead: bool) -> Iterator[list[pa.RecordBatch]]:
                return _interleaved(
                    ranges[mask],
                    owned[mask],
                    lambda: ShardReader(
                        read_plan,
                        threads=1,
                        batch_rows=batch_rows,
                        copied=copied,
                        shared=shared,
                        connections=connections,
                    ),
                    stream_pieces,
                    plan,
                    each_ahead=each_ahead,
                    held=held,
                )

            if not lanes:
                every = lane_ranges(np.ones(len(ranges), dtype=bool), False)
                batches = (batch for held in every for batch in held)
            else:
                # Lanes share out the streams; each decodes its streams' stripes in read order,
                # up to two windows ahead between them while that is 64 MiB or less, else one
                # (counted in ranges, a stream's stripes of a window joined in one, which may
                # come in a few slices): one window ahead kept
                # the lanes and the gathering thread taking turns on the cores (captions, one
                # process: epochs 5-8% longer). From an object store each stream of plain
                # columns reads ahead on its own too, so that its requests overlap (so do the
                # columns a query reads, where the query runs once a window). Streams that run SQL themselves
                # keep to their lane's thread: with a thread each, a lake table read through
                # SQL by two workers failed about one run in ten under load ("closed pending
                # query result" from a stream's own DuckDB connection; cause not found yet).
                a_window = -(-len(ranges) * window_rows // max(1, length(ranges)))
                windows_ahead = max(1, min(2, SHUFFLE_BUFFER_BYTES // max(1, window_rows * plan.row_bytes)))
                depth = max(2, windows_ahead * a_window // lanes + 1)
                each_ahead = plan.remote and read_plan.batch is None
                lane_of = _dealt(owned, lanes)
                lane_streams = [
                    Producer(lane_ranges(lane_of == lane, each_ahead), depth) for lane in range(lanes)
                ]
                batches = _merged(lane_of, lane_streams)
        elif lanes:
            # Each lane may run a window ahead: while one window is gathered, the next decodes.
            # Lanes beyond the threads only overlap waiting: together they hold what the
            # threads' lanes would, so memory does not grow with them.
            window = -(-shuffle_buffer // readers[0].batch_rows)
            depth = max(2, -(-window * min(lanes, threads) // lanes))
            sources = (_piece_source(readers, plan, *piece) for piece in pieces)
            batches = read_ahead_each(sources, lanes=lanes, depth=depth)
        else:
            batches = (
                batch for shard, lo, hi in pieces for batch in readers[0].read(plan.shards[shard], lo, hi)
            )
        if not shuffle:
            yield from rebatch(_as_schema(batches, plan.schema), batch_size, drop_last)
            return
        yield from shuffled_batches(
            batches,
            buffer=window_rows,
            key=key,
            first_window=first_window,
            skip=inside,
            batch_size=batch_size,
            drop_last=drop_last,
            schema=plan.schema,
            read_schema=read_plan.schema,
            over=window_sql.over if window_sql is not None else None,
            views=views,
        )
    finally:
        if isinstance(batches, Generator):
            batches.close()  # read-ahead threads stop before their readers close
        for reader in readers:
            reader.close()
        if connections is not None:
            connections.close()
        if window_sql is not None:
            window_sql.close()


def _decoding(plan: StreamPlan) -> StreamPlan:
    """``plan`` read as the columns its query needs, decoded, without the query."""
    assert plan.batch is not None
    decoded = plan.batch.decoded
    return replace(plan, batch=None, query=None, columns=tuple(decoded.names), schema=decoded)


def _dealt(owners: np.ndarray, lanes: int) -> np.ndarray:
    """The lane of each range: streams dealt round the lanes in the order they are first
    read, so that the streams read side by side (one group's) are spread over every lane."""
    streams, first = np.unique(owners, return_index=True)
    lane = np.empty(int(streams.max()) + 1 if len(streams) else 0, dtype=np.int64)
    lane[streams[np.argsort(first, kind="stable")]] = np.arange(len(streams)) % lanes
    dealt: np.ndarray = lane[owners]
    return dealt


def _slice_owned(ranges: np.ndarray, owners: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Items ``lo..hi`` of a sequence of ranges (as :func:`slice_ranges`), with their owners."""
    sizes = ranges[:, 1] - ranges[:, 0]
    ends = np.cumsum(sizes)
    keep = (ends > lo) & (ends - sizes < hi)
    return slice_ranges(ranges, lo, hi), owners[keep]


class _Stream:
    """One piece's rows, read in order however its stripes are spread: the rows it hands
    on continue where the last stripe stopped."""

    def __init__(self, batches: Iterator[pa.RecordBatch], reader: ShardReader, *, ahead: bool) -> None:
        self._reader = reader
        # A thread of its own decodes the piece's next batches while the others are used.
        self._producer = Producer(batches, _STREAM_DEPTH) if ahead else None
        self._batches = self._producer if self._producer is not None else batches
        self._held: pa.RecordBatch | None = None

    def take(self, rows: int) -> Iterator[pa.RecordBatch]:
        while rows > 0:
            if self._held is None or not self._held.num_rows:
                self._held = next(self._batches)
            piece = self._held.slice(0, rows)
            self._held = self._held.slice(piece.num_rows)
            rows -= piece.num_rows
            yield piece

    def close(self) -> None:
        if self._producer is not None:
            self._producer.stop()
        elif isinstance(self._batches, Generator):
            self._batches.close()
        self._reader.close()


_STREAM_DEPTH = 2


def _piece_batches(
    reader: ShardReader, plan: StreamPlan, pieces: Iterable[Piece], held: Container[Piece]
) -> Iterator[pa.RecordBatch]:
    """The rows of ``pieces`` (``(shard, lo, hi)``) in turn. A piece followed by the rows of
    its shard that end where it begins (a rotation), that following piece in ``held``, is read
    in one pass: the rows before it are decoded on the way anyway, and kept for their turn
    instead of decoding the row group's first pages (dictionaries included) once more."""
    upcoming = iter(pieces)
    piece = next(upcoming, None)
    while piece is not None:
        shard, lo, hi = piece
        following = next(upcoming, None)
        if following is not None and following in held:  # held: heads of rotations alone
            head = lo - following[1]
            kept: list[pa.RecordBatch] = []
            seen = 0
            for batch in reader.read(plan.shards[shard], following[1], hi):
                if seen < head:
                    kept.append(batch.slice(0, head - seen))
                    if batch.num_rows > head - seen:
                        yield batch.slice(head - seen)
                else:
                    yield batch
                seen += batch.num_rows
            yield from kept
            piece = next(upcoming, None)
            continue
        yield from reader.read(plan.shards[shard], lo, hi)
        piece = following


def _interleaved(
    ranges: np.ndarray,
    owners: np.ndarray,
    new_reader: Callable[[], ShardReader],
    stream_pieces: Mapping[int, Sequence[Piece]],
    plan: StreamPlan,
    *,
    each_ahead: bool,
    held: Container[Piece] = frozenset(),
) -> Generator[list[pa.RecordBatch], None, None]:
    """The rows of ``ranges`` in order, each range read from its owner's stream (which reads
    its ``stream_pieces``): one list of batches (slices) per range; a stream keeps the first
    rows of the rotated pieces in ``held`` for their turn (:func:`_piece_batches`).

    A stream opens at its first range and closes after its last, so only the pieces of one
    group are open at a time. ``each_ahead``: every open stream reads ahead in a thread of
    its own (an object store's answers then overlap).
    """
    sizes = ranges[:, 1] - ranges[:, 0]
    left = np.bincount(owners, weights=sizes).astype(np.int64) if len(owners) else np.zeros(0, np.int64)
    open_streams: dict[int, _Stream] = {}
    try:
        for (start, stop), owner in zip(ranges, owners, strict=True):
            stream = open_streams.get(int(owner))
            if stream is None:
                reader = new_reader()
                reads = _piece_batches(reader, plan, stream_pieces[int(owner)], held)
                stream = open_streams[int(owner)] = _Stream(reads, reader, ahead=each_ahead)
            yield list(stream.take(int(stop - start)))
            left[owner] -= stop - start
            if left[owner] == 0:
                open_streams.pop(int(owner)).close()
    finally:
        for stream in open_streams.values():
            stream.close()


def _merged(
    lane_of: np.ndarray, lanes: Sequence[Producer[list[pa.RecordBatch]]]
) -> Generator[pa.RecordBatch, None, None]:
    """The rows of the ranges in order, range ``k``'s batches taken from lane ``lane_of[k]``."""
    try:
        for lane in lane_of:
            yield from next(lanes[lane])
    finally:
        for lane_batches in lanes:
            lane_batches.stop()


def _piece_source(
    readers: Sequence[ShardReader], plan: StreamPlan, shard: int, lo: int, hi: int
) -> Callable[[int], Iterator[pa.RecordBatch]]:
    """Rows ``lo..hi`` of a shard, read by the reader of the lane that calls."""
    return lambda lane: readers[lane].read(plan.shards[shard], lo, hi)


def _pieces(
    ranges: np.ndarray, order: np.ndarray, sizes: np.ndarray, ends: np.ndarray
) -> Iterator[tuple[int, int, int]]:
    """Epoch positions (ranges) as ``(shard, lo, hi)`` row ranges of shards, in order; ``sizes``
    and ``ends``: each shard's rows and where it ends, in the epoch ``order``. A range that
    continues the last one's shard where it stopped extends it."""
    _, shard, lo, hi = _cut(ranges, np.zeros(len(ranges), dtype=np.int64), order, sizes, ends)
    return zip(shard.tolist(), lo.tolist(), hi.tolist(), strict=True)


def _stream_pieces(
    ranges: np.ndarray,
    streams: Mapping[int, np.ndarray],
    order: np.ndarray,
    sizes: np.ndarray,
    ends: np.ndarray,
) -> dict[int, list[Piece]]:
    """Each stream's pieces (:func:`_pieces` of its ranges, ``streams`` as
    :func:`~duckstream.core.held_heads.stream_indices` finds them), found in one pass over
    all the streams: the next epoch's read finds them in a thread while this one's batches go
    out, holding the interpreter meanwhile (the bench's captions, 32 streams: 1.4 ms a stream
    at a time, 0.1 ms so; 2.4 and 0.3 ms at a 1,000-row buffer)."""
    if not streams:
        return {}
    index = np.concatenate(list(streams.values()))
    owner = np.repeat(
        np.fromiter(streams, dtype=np.int64, count=len(streams)), [len(i) for i in streams.values()]
    )
    found: dict[int, list[Piece]] = {stream: [] for stream in streams}
    cut = _cut(ranges[index], owner, order, sizes, ends)
    for stream, shard, lo, hi in zip(*(column.tolist() for column in cut), strict=True):
        found[stream].append((shard, lo, hi))
    return found


def _cut(
    ranges: np.ndarray, groups: np.ndarray, order: np.ndarray, sizes: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pieces of ``ranges``, each group's (``groups``: one label a range, a group's ranges
    next to each other) apart: their groups, shards and row ranges, as arrays.

    Found with numpy, not range by range: a slot's ranges are its windows' stripes, thousands
    an epoch, and every stream's pieces are found when the read begins (a 1,000-row buffer over
    the bench's captions: 2,647 ranges; with them, the heads kept took 28 ms an epoch range by
    range, 2-8 ms so)."""
    if len(ranges):
        real = ranges[:, 1] > ranges[:, 0]
        ranges, groups = ranges[real], groups[real]
    if not len(ranges):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    starts, stops = ranges[:, 0], ranges[:, 1]
    first = np.searchsorted(ends, starts, side="right")
    # A range over several shards is a piece of each (shards that yield no row skipped).
    count = np.searchsorted(ends, stops - 1, side="right") - first + 1
    which = np.repeat(np.arange(len(ranges)), count)
    index = np.repeat(first, count) + np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count)
    begin = ends[index] - sizes[index]
    lo = np.maximum(starts[which], begin) - begin
    hi = np.minimum(stops[which], ends[index]) - begin
    shard = np.asarray(order)[index]
    group = groups[which]
    kept = hi > lo
    group, shard, lo, hi = group[kept], shard[kept], lo[kept], hi[kept]
    opens = np.ones(len(shard), dtype=bool)
    opens[1:] = (shard[1:] != shard[:-1]) | (lo[1:] != hi[:-1]) | (group[1:] != group[:-1])
    heads = np.flatnonzero(opens)
    tails = np.append(heads[1:], len(shard)) - 1
    return group[heads], shard[heads], lo[heads], hi[tails]


def windows(batches: Iterable[pa.RecordBatch], buffer: int, schema: pa.Schema) -> Iterator[pa.Table]:
    """Consecutive windows of ``buffer`` rows (the last one shorter), without copying.

    A column that arrives as views in some batches (a filter's selection of wide values) is
    views throughout its window: seeing the others' values as views copies nothing.
    """
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(buffer - rows, batch.num_rows)
            held.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == buffer:
                yield _joined(held, schema)
                held, rows = [], 0
    if rows:
        yield _joined(held, schema)


def _joined(batches: Sequence[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    if all(batch.schema == schema for batch in batches):
        return pa.Table.from_batches(batches, schema=schema)
    fields = list(schema)
    for batch in batches:
        for index, field in enumerate(batch.schema):
            if field.type != schema.field(index).type:
                fields[index] = fields[index].with_type(field.type)
    joined = pa.schema(fields)
    return pa.Table.from_batches([batch.cast(joined) for batch in batches], schema=joined)


def _as_schema(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The batches with ``schema``'s types (views a filter selected become values again)."""
    for batch in batches:
        yield batch if batch.schema == schema else batch.cast(schema)


def shuffled_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    buffer: int,
    key: tuple[int, ...],
    first_window: int,
    skip: int,
    batch_size: int,
    drop_last: bool,
    schema: pa.Schema,
    read_schema: pa.Schema | None = None,
    over: Callable[[pa.Table], pa.Table] | None = None,
    views: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Batches of the stream with each window of ``buffer`` rows permuted.

    Each output batch is gathered straight from its window (one copy); the first ``skip``
    rows of the first window's permuted order are left out (a resumed read). ``over`` turns
    each window of ``batches`` (of ``read_schema``) into the rows it holds (of ``schema``).
    ``views``: columns gathered as views stay views (:class:`Window`).
    """
    carry: pa.RecordBatch | None = None
    for window, order in _permuted(
        batches, buffer, key, first_window, skip, schema, read_schema or schema, over, views
    ):
        position = 0
        if carry is not None:
            need = batch_size - carry.num_rows
            rest = window.gather(order[:need])
            # Windows of narrower rows keep values where others keep views.
            carry = pa.concat_batches(
                [carry if carry.schema == rest.schema else carry.cast(rest.schema), rest]
            )
            position = need
            if carry.num_rows < batch_size:
                continue
            yield carry
            carry = None
        # Several batches are gathered at once and sliced: each gather costs a fixed ~30 us a
        # column, which dwarfs the copy of a small batch of narrow rows.
        whole = (len(order) - position) // batch_size * batch_size
        chunk = batch_size * max(1, GATHER_BYTES // max(1, window.row_bytes * batch_size))
        for begin in range(position, position + whole, chunk):
            gathered = window.gather(order[begin : min(begin + chunk, position + whole)])
            for offset in range(0, gathered.num_rows, batch_size):
                yield gathered.slice(offset, batch_size)
        position += whole
        if position < len(order):
            carry = window.gather(order[position:])
    if carry is not None and carry.num_rows and not drop_last:
        yield carry


def _permuted(
    batches: Iterable[pa.RecordBatch],
    buffer: int,
    key: tuple[int, ...],
    first_window: int,
    skip: int,
    schema: pa.Schema,
    read_schema: pa.Schema,
    over: Callable[[pa.Table], pa.Table] | None,
    views: bool,
) -> Iterator[tuple[Window, np.ndarray]]:
    """Each window and the order its rows go out in."""
    read = windows(batches, buffer, read_schema)
    if over is not None:
        read = map(over, read)
    for index, table in enumerate(read, start=first_window):
        yield Window(table, schema, views=views), window_permutation(table.num_rows, key, index, True)[skip:]
        skip = 0


def rebatch(
    batches: Iterable[pa.RecordBatch], size: int, drop_last: bool, *, first: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows (the first of ``first`` rows, if given); the last one
    short unless dropped.

    Batches inside one read batch are zero-copy slices; only a batch that straddles two read
    batches is copied.
    """
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, found {size}")
    want = size if first is None else first
    carry: pa.RecordBatch | None = None
    for batch in batches:
        while batch.num_rows:
            if carry is None and batch.num_rows >= want:
                out, batch = batch.slice(0, want), batch.slice(want)
            else:
                head = batch.slice(0, want - (carry.num_rows if carry is not None else 0))
                carry = head if carry is None else pa.concat_batches([carry, head])
                batch = batch.slice(head.num_rows)
                if carry.num_rows < want:
                    continue
                out, carry = carry, None
            yield out
            want = size
    if carry is not None and not drop_last:
        yield carry
