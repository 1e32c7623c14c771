"""Where a warm epoch's CPU time goes: the loop's process and each DataLoader worker.

``python -m duckstream.benchmarks.cpu [--preset captions] [--workers 0,2] [--output arrow]``
reads ``--epochs`` shuffled epochs through one ``DuckStreamLoader`` (persistent workers) and
prints, for the cheapest warm epoch, the CPU seconds of the main process and of each worker
(from ``/proc/<pid>/stat``) beside the wall time. CPU seconds wander less than wall time on a
shared machine, and they show what handing batches between processes costs. It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from .datasets import PresetName, ensure_dataset, preset

__all__ = ["cpu_seconds", "main"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.cpu", description=__doc__)
    parser.add_argument("--preset", choices=get_args(PresetName), default="captions")
    parser.add_argument("--rows", type=int, help="rows (default: the preset's)")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts (default 0,2)")
    parser.add_argument("--output", choices=("arrow", "torch"), default="arrow")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4, help="warm epochs measured (default 4)")
    parser.add_argument("--cache-dir", type=Path, help="where datasets are kept")
    args = parser.parse_args(argv)

    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    shape = preset(args.preset)
    spec = shape.spec(args.rows or shape.rows)
    source = ensure_dataset(spec, args.cache_dir)
    print(f"{args.preset}: {spec.rows:,} rows, output={args.output}, batch size {args.batch_size}")
    print(f"{'workers':>7}  {'wall s':>7}  {'main cpu s':>10}  {'workers cpu s':>13}  {'total cpu s':>11}")
    for workers in (int(n) for n in args.workers.split(",")):
        dataset = DuckStreamDataset(
            str(source),
            f"SELECT {', '.join(spec.columns)} FROM source",
            batch_size=args.batch_size,
            shuffle=True,
            output=args.output,
        )
        loader = DuckStreamLoader(dataset, num_workers=workers, persistent_workers=workers > 0)
        for _ in loader:  # the cold epoch: plan made, workers started
            pass
        iterator = loader._iterator
        pids = [os.getpid(), *(w.pid for w in getattr(iterator, "_workers", []))]
        best: tuple[float, list[float]] | None = None
        for _ in range(max(1, args.epochs)):
            before = [cpu_seconds(pid) for pid in pids]
            start = time.perf_counter()
            for _ in loader:
                pass
            wall = time.perf_counter() - start
            spent = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            if best is None or sum(spent) < sum(best[1]):
                best = (wall, spent)
        assert best is not None
        wall, spent = best
        per_worker = "/".join(f"{s:.2f}" for s in spent[1:]) or "-"
        print(f"{workers:>7}  {wall:>7.3f}  {spent[0]:>10.2f}  {per_worker:>13}  {sum(spent):>11.2f}")
        del loader, iterator
    return 0


if __name__ == "__main__":
    sys.exit(main())
