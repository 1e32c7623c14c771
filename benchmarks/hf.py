"""as_iterable_dataset against datasets' own Parquet streaming, over the same files, one run.

``python -m duckstream.benchmarks.hf [--rows N] [--quick]`` prints rows/s for a full epoch of
rows, unshuffled and shuffled (``.shuffle(seed, buffer_size=1000)`` for datasets, duckstream's
own seeded shuffle for as_iterable_dataset), and the ratios. It asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .datasets import ensure_dataset, preset

__all__ = ["main", "measure"]


def measure(epoch: Callable[[], Iterable[Any]]) -> tuple[int, float]:
    """Rows of one pass over ``epoch()`` and the seconds it took."""
    start = time.perf_counter()
    rows = sum(1 for _ in epoch())
    return rows, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.hf", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="caption rows (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="4,000 rows, for smoke runs")
    parser.add_argument("--cache-dir", type=Path, help="where datasets are kept")
    args = parser.parse_args(argv)

    import datasets as hf

    from duckstream.stream import as_iterable_dataset

    rows = 4_000 if args.quick else args.rows
    source = ensure_dataset(preset("captions").spec(rows), args.cache_dir)
    files = sorted(str(p) for p in source.glob("*.parquet"))
    columns = "SELECT id, captions FROM source"

    def theirs(shuffle: bool) -> Any:
        stream = hf.load_dataset("parquet", data_files=files, split="train", streaming=True)
        return stream.shuffle(seed=0, buffer_size=1_000) if shuffle else stream

    def ours(shuffle: bool) -> Any:
        return as_iterable_dataset(source, columns, shuffle=shuffle, seed=0)

    print(f"{rows:,} caption rows in {len(files)} files at {source}")
    print("datasets streaming = datasets.load_dataset('parquet', data_files=..., streaming=True)")
    print(f"{'loader':<22} {'shuffle':>7} {'seconds':>8} {'rows/s':>10}")
    speeds: dict[tuple[str, bool], float] = {}
    loaders: dict[str, Callable[[bool], Any]] = {
        "datasets streaming": theirs,
        "as_iterable_dataset": ours,
    }
    for name, make in loaders.items():
        for shuffle in (False, True):
            count, seconds = measure(partial(make, shuffle))
            speeds[name, shuffle] = count / seconds
            print(f"{name:<22} {shuffle!s:>7} {seconds:>8.2f} {count / seconds:>10,.0f}")
    for shuffle in (False, True):
        ratio = speeds["as_iterable_dataset", shuffle] / speeds["datasets streaming", shuffle]
        print(f"ratio as_iterable_dataset / datasets streaming, shuffle={shuffle}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
