"""A mix of two sources against each source alone: rows per second of a warm epoch.

The two sources are the captions dataset cut by two WHEREs (70% and 30% of the ids), mixed
70/30, each shuffled. The mix reads both in every slot and interleaves them by a seeded
schedule; its cost over the slower source alone is the figure to watch (aim: at least 0.8x).

    python -m duckstream.benchmarks.mix --rows 200000 --workers 0,2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from duckstream.benchmarks.datasets import PresetName, ensure_dataset, preset

__all__ = ["main"]


def _rows_per_second(make: Callable[[], Any], workers: int, epochs: int) -> tuple[int, float]:
    """Rows of an epoch and the best rows/s of ``epochs`` warm ones."""
    from duckstream.runs.loader_stats import count_rows
    from duckstream.stream import DuckStreamLoader

    loader = DuckStreamLoader(make(), num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # the cold epoch: plans made, workers started
        pass
    best, rows = 0.0, 0
    for _ in range(max(1, epochs)):
        start = time.perf_counter()
        rows = sum(count_rows(item) for item in loader)
        best = max(best, rows / (time.perf_counter() - start))
    return rows, best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.mix", description=__doc__)
    parser.add_argument("--preset", choices=get_args(PresetName), default="captions")
    parser.add_argument("--rows", type=int, help="rows (default: the preset's)")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts (default 0,2)")
    parser.add_argument("--output", choices=("arrow", "torch"), default="arrow")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="warm epochs measured (default 3)")
    parser.add_argument("--cache-dir", type=Path, help="where datasets are kept")
    args = parser.parse_args(argv)

    from duckstream.stream import DuckStreamDataset, DuckStreamMix

    shape = preset(args.preset)
    spec = shape.spec(args.rows or shape.rows)
    source = str(ensure_dataset(spec, args.cache_dir))
    columns = ", ".join(spec.columns)
    wheres = {"a (70%)": "id % 10 < 7", "b (30%)": "id % 10 >= 7"}

    def dataset(where: str, seed: int) -> DuckStreamDataset:
        sql = f"SELECT {columns} FROM source WHERE {where}"
        options: dict[str, Any] = {"batch_size": args.batch_size, "output": args.output}
        return DuckStreamDataset(source, sql, shuffle=True, seed=seed, **options)

    def alone(where: str, seed: int) -> Callable[[], DuckStreamDataset]:
        return lambda: dataset(where, seed)

    def mixed() -> DuckStreamMix:
        parts = [dataset(where, seed) for seed, where in enumerate(wheres.values())]
        return DuckStreamMix(parts, [0.7, 0.3], seed=1)

    print(f"{args.preset}: {spec.rows:,} rows, output={args.output}, batch size {args.batch_size}")
    print(
        f"{'workers':>7}  {'a rows/s':>10}  {'b rows/s':>10}  {'mix rows/s':>10}  {'mix / slower':>12}"
        f"  {'mix / a then b':>14}"
    )
    for workers in (int(n) for n in args.workers.split(",")):
        (rows_a, a), (rows_b, b) = (
            _rows_per_second(alone(where, seed), workers, args.epochs)
            for seed, where in enumerate(wheres.values())
        )
        _, mix = _rows_per_second(mixed, workers, args.epochs)
        # against the slower source alone, and against reading one source after the other
        one_then_other = (rows_a + rows_b) / (rows_a / a + rows_b / b)
        print(
            f"{workers:>7}  {a:>10,.0f}  {b:>10,.0f}  {mix:>10,.0f}  {mix / min(a, b):>11.2f}x"
            f"  {mix / one_then_other:>13.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
