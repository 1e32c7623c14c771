"""Planning at scale, simulated: one rank's share of an epoch over a million files, no data read.

Synthetic metadata stands in for the files (row counts drawn uneven, row groups of a fixed
size); the planning is the library's own: epoch order, the rows a first stage under another
world size left owed (resume accounting), partition, and each worker's interleaved read order.
It times one rank's share, measures its peak memory, sizes the plan every worker receives (a
real StreamPlan, pickled), and checks on a sample of slots (and on every slot of a smaller run)
that the shares are disjoint, cover every row once and are equal per rank.

    python -m duckstream.benchmarks.scale --files 1000000 --ranks 4096 --workers 8 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

from duckstream.core.interleave import DEFAULT_STREAMS, Layout
from duckstream.core.owed import owed_rows, slot_spans
from duckstream.core.partition import Even, SlotSpan, partition, rank_rows, slot_bounds
from duckstream.core.planning import StreamPlan
from duckstream.core.ranges import as_ranges, expand
from duckstream.core.resume import Stage, read_span, rows_emitted
from duckstream.core.shards import FileNames, RowGroups, ShardTable, plan_fingerprint
from duckstream.core.shuffle import emit_order, window_key
from duckstream.core.world import World
from duckstream.errors import ConfigurationError
from duckstream.storage import S3Settings

__all__ = ["ScaleConfig", "ScaleResult", "main", "rank_share", "run_scale", "synthetic_plan"]

_ROW_GROUP_ROWS = 1024
_ROW_BYTES = 256
_BUFFER = 32_768
# Small enough that a full check of every slot stays quick.
_FULL_CHECK_FILES = 1_000
_FULL_CHECK_RANKS = 8


@dataclass(frozen=True)
class ScaleConfig:
    files: int = 1_000_000
    ranks: int = 4096
    workers: int = 8
    seed: int = 0
    epoch: int = 3
    even: Even = "pad"
    sample: int = 6  # ranks checked at full size (the first, the last, and random ones)

    def __post_init__(self) -> None:
        if self.files < 1 or self.ranks < 1 or self.workers < 1:
            raise ConfigurationError(
                f"expected at least one file, rank and worker, found files={self.files}, "
                f"ranks={self.ranks}, workers={self.workers}"
            )


@dataclass(frozen=True)
class ScaleResult:
    files: int
    ranks: int
    workers: int
    rows: int
    share_seconds: float
    share_peak_bytes: int
    share_rows: int
    plan_bytes: int  # the plan every worker receives, pickled
    layout_bytes: int  # the layout each worker derives from it, pickled
    verified: bool
    checks: dict[str, bool]


def synthetic_plan(files: int, seed: int = 0) -> StreamPlan:
    """A plan of ``files`` files of uneven row counts (log-normal, a median of about 2,000
    rows), one shard each, row groups of 1,024 rows: a plan as planning makes it, from
    metadata drawn here instead of read from footers."""
    rng = np.random.default_rng([seed, files])
    counts = np.maximum(1, rng.lognormal(np.log(2000), 1.0, files)).astype(np.int64)
    groups = -(-counts // _ROW_GROUP_ROWS)
    bounds = np.concatenate([[0], np.cumsum(groups)]).astype(np.int64)
    # Each file's row groups: 1,024 rows, its last the rest.
    sizes = np.full(int(bounds[-1]), _ROW_GROUP_ROWS, dtype=np.int64)
    sizes[bounds[1:] - 1] = counts - (groups - 1) * _ROW_GROUP_ROWS
    names = FileNames.of(f"s3://bucket/table/part-{i:07d}.parquet" for i in range(files))
    shards = ShardTable(np.arange(files, dtype=np.int64), np.zeros(files, dtype=np.int64), counts.copy())
    return StreamPlan(
        files=names,
        row_groups=RowGroups(sizes, bounds),
        shards=shards,
        counts=counts,
        query=None,
        narrow=True,
        columns=("id",),
        schema=pa.schema([("id", pa.int64())]),
        s3=S3Settings(),
        fingerprint=plan_fingerprint(names, shards, counts, None),
        row_bytes=_ROW_BYTES,
    )


def _stages(config: ScaleConfig, total: int) -> tuple[Stage, Stage]:
    """A first stage under half the ranks, a third through, then the stage being read."""
    first_ranks = max(1, config.ranks // 2)
    first = Stage(first_ranks, config.workers, 1, False, _BUFFER, streams=DEFAULT_STREAMS)
    consumed = rank_rows(total, first_ranks, config.even) // 3
    return replace(first, consumed=consumed), Stage(config.ranks, config.workers, 1, False, _BUFFER)


def _read(
    layout: Layout, config: ScaleConfig, index: int, span: SlotSpan, world: World
) -> tuple[SlotSpan, int]:
    read, _, window = read_span(
        span,
        layout=layout,
        key=window_key(config.seed, config.epoch, index, world),
        seed=config.seed,
        epoch=config.epoch,
        shuffle=True,
        streams=DEFAULT_STREAMS,
        buffer=_BUFFER,
    )
    return read, window


def rank_share(layout: Layout, config: ScaleConfig, rank: int, prior: Sequence[Stage]) -> list[SlotSpan]:
    """Each worker of ``rank``: its span of the epoch's owed rows, in the order it reads them."""
    worlds = [World(rank, config.ranks, worker, config.workers) for worker in range(config.workers)]
    spans = slot_spans(
        layout.num_rows,
        prior,
        worlds,
        seed=config.seed,
        epoch=config.epoch,
        shuffle=True,
        even=config.even,
        layout=layout,
    )
    return [
        _read(layout, config, len(prior), span, world)[0] for span, world in zip(spans, worlds, strict=True)
    ]


def _emitted(layout: Layout, config: ScaleConfig, stage: Stage, world: World) -> np.ndarray:
    """The real rows a slot of the first stage emitted, replayed from its read and emit order."""
    sequence = as_ranges([(0, layout.num_rows)])
    span, window = _read(layout, config, 0, partition(sequence, world, config.even), world)
    emitted = rows_emitted(layout.num_rows, stage, world, config.even)
    key = window_key(config.seed, config.epoch, 0, world)
    indices = emit_order(as_ranges([(0, span.rows)]), window, key, True)[:emitted]
    indices = indices[indices < span.real]
    return np.sort(expand(span.ranges)[indices])


def _owed_count(layout: Layout, config: ScaleConfig, stage: Stage) -> int:
    """Rows the first stage left owed, counted slot by slot from its counters."""
    owed = 0
    for rank in range(stage.world_size):
        for worker in range(stage.num_workers):
            world = World(rank, stage.world_size, worker, stage.num_workers)
            begin, end = slot_bounds(layout.num_rows, world, config.even)
            real = max(0, min(end, layout.num_rows) - begin)
            emitted = rows_emitted(layout.num_rows, stage, world, config.even)
            owed += real - (
                len(_emitted(layout, config, stage, world))
                if emitted and real < end - begin
                else min(emitted, real)
            )
    return owed


def _check_sample(layout: Layout, config: ScaleConfig, ranks: Sequence[int]) -> dict[str, bool]:
    """Sampled ranks: disjoint, equal, rows their first-stage slots owed; counts that add up."""
    total = layout.num_rows
    prior, _ = _stages(config, total)
    kw: dict[str, Any] = {"seed": config.seed, "epoch": config.epoch, "shuffle": True, "even": config.even}
    owed = owed_rows(total, [prior], **kw)
    shares = {rank: rank_share(layout, config, rank, [prior]) for rank in ranks}
    real = np.sort(
        np.concatenate([expand(span.ranges)[: span.real] for spans in shares.values() for span in spans])
    )
    # Each row a sampled slot reads: inside a first-stage slot that did not emit it.
    first = np.array(
        [
            slot_bounds(total, World(r, prior.world_size, w, prior.num_workers), config.even)[0]
            for r in range(prior.world_size)
            for w in range(prior.num_workers)
        ]
    )
    owners = np.searchsorted(first, real, side="right") - 1
    not_emitted = True
    for slot in np.unique(owners).tolist():
        world = World(
            slot // prior.num_workers, prior.world_size, slot % prior.num_workers, prior.num_workers
        )
        not_emitted &= not np.isin(real[owners == slot], _emitted(layout, config, prior, world)).any()
    per_rank = {sum(span.rows for span in spans) for spans in shares.values()}
    return {
        "sample_disjoint": bool(np.all(np.diff(real) > 0)),
        "sample_equal_per_rank": per_rank == {rank_rows(owed, config.ranks, config.even)},
        "sample_owed_once": bool(not_emitted),
        "counts_cover_rows": owed == _owed_count(layout, config, prior),
    }


def _check_all(config: ScaleConfig) -> dict[str, bool]:
    """Every slot of a smaller run: with the first stage's emitted rows, every row exactly once."""
    small = replace(
        config, files=min(config.files, _FULL_CHECK_FILES), ranks=min(config.ranks, _FULL_CHECK_RANKS)
    )
    layout = synthetic_plan(small.files, small.seed).layout
    total = layout.num_rows
    prior, current = _stages(small, total)
    read = [
        _emitted(layout, small, prior, World(rank, prior.world_size, worker, prior.num_workers))
        for rank in range(prior.world_size)
        for worker in range(prior.num_workers)
    ]
    rows_per_rank = set()
    for rank in range(current.world_size):
        spans = rank_share(layout, small, rank, [prior])
        rows_per_rank.add(sum(span.rows for span in spans))
        read.extend(expand(span.ranges)[: span.real] for span in spans)
    every = np.sort(np.concatenate(read))
    return {
        "all_cover_once": bool(np.array_equal(every, np.arange(total))),
        "all_equal_per_rank": len(rows_per_rank) == 1,
    }


def run_scale(config: ScaleConfig, *, echo: TextIO | None = None) -> ScaleResult:
    """Plan, time and measure one rank's share, and check the sampled slots."""
    plan = synthetic_plan(config.files, config.seed)
    plan_bytes = len(pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))  # as sent: no layout yet
    layout = plan.layout
    prior, _ = _stages(config, layout.num_rows)
    layout_bytes = len(pickle.dumps(layout, protocol=pickle.HIGHEST_PROTOCOL))
    rank = config.ranks // 2

    started = time.perf_counter()
    spans = rank_share(layout, config, rank, [prior])
    seconds = time.perf_counter() - started
    tracemalloc.start()
    rank_share(layout, config, rank, [prior])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if echo is not None:
        print(
            f"share of rank {rank}: {seconds:.2f} s, peak {peak / 2**20:.1f} MiB; checking",
            file=echo,
            flush=True,
        )

    rng = np.random.default_rng([config.seed, 7])
    picked = {0, config.ranks - 1, *rng.integers(config.ranks, size=max(0, config.sample - 2)).tolist()}
    checks = _check_sample(layout, config, sorted(picked))
    checks.update(_check_all(config))
    return ScaleResult(
        files=config.files,
        ranks=config.ranks,
        workers=config.workers,
        rows=layout.num_rows,
        share_seconds=seconds,
        share_peak_bytes=peak,
        share_rows=sum(span.rows for span in spans),
        plan_bytes=plan_bytes,
        layout_bytes=layout_bytes,
        verified=all(checks.values()),
        checks=checks,
    )


def report(result: ScaleResult, out: TextIO) -> None:
    print(
        f"{result.files:,} files ({result.rows:,} rows), {result.ranks:,} ranks x {result.workers} workers\n"
        f"  one rank's share: {result.share_seconds:.2f} s, peak {result.share_peak_bytes / 2**20:.1f} MiB, "
        f"{result.share_rows:,} rows\n"
        f"  shared plan: {result.plan_bytes / 2**20:.1f} MiB pickled "
        f"(the layout each worker derives from it: {result.layout_bytes / 2**20:.1f} MiB)\n"
        f"  verified: {result.verified} ({', '.join(f'{k}={v}' for k, v in result.checks.items())})",
        file=out,
    )


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.scale", description=__doc__)
    add_arguments(parsed)
    return parsed


def add_arguments(parsed: argparse.ArgumentParser) -> None:
    parsed.add_argument("--files", type=int, default=1_000_000, help="files of the plan (default 1,000,000)")
    parsed.add_argument("--ranks", type=int, default=4096, help="ranks (default 4,096)")
    parsed.add_argument("--workers", type=int, default=8, help="workers per rank (default 8)")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parsed = parser()
    parsed.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parsed.parse_args(argv)
    return run_and_report(args.files, args.ranks, args.workers, args.json, out)


def run_and_report(files: int, ranks: int, workers: int, json_path: Path | None, out: TextIO) -> int:
    result = run_scale(ScaleConfig(files=files, ranks=ranks, workers=workers), echo=out)
    report(result, out)
    if json_path is not None:
        payload: dict[str, Any] = asdict(result)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if result.verified else 1


if __name__ == "__main__":
    raise SystemExit(main())
