"""The loader benchmark: each configuration in a fresh process under the memory sampler, then a table."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO, get_args

from duckstream.errors import ConfigurationError

from .datasets import DatasetSpec, PresetName, ensure_dataset, preset
from .epoch import LoaderName
from .memory import SampledRun, run_sampled

__all__ = [
    "BenchConfig",
    "Measurement",
    "Ratio",
    "format_table",
    "ratio_lines",
    "ratios",
    "report",
    "run_bench",
    "scaling_lines",
    "write_json",
]

_EPOCH_MODULE = "duckstream.benchmarks.epoch"
_MB = 1024 * 1024

# Scans in one process, without DataLoader workers.
_NO_WORKERS: frozenset[LoaderName] = frozenset({"pyarrow", "pyarrow-python"})
# Measured at --scale too (at 0 workers); the other two only at 1x, to keep the run short.
_SCALED: frozenset[LoaderName] = frozenset({"pyarrow", "duckstream"})
# Each duckstream loader, its label in the ratios, and the pyarrow scan delivering the same kind of batch.
_PAIRS: tuple[tuple[LoaderName, str, LoaderName], ...] = (
    ("duckstream-arrow", "duckstream-arrow (Arrow batches)", "pyarrow"),
    ("duckstream", "duckstream (torch: tensors, Python lists)", "pyarrow-python"),
)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to measure; validated on construction."""

    presets: tuple[PresetName, ...] = ("captions", "images")
    loaders: tuple[LoaderName, ...] = get_args(LoaderName)
    workers: tuple[int, ...] = (0, 2)
    rows: int | None = None  # overrides every preset's row count
    scale: int = 4  # also measure peak memory on this many times the rows; 1 turns that off
    quick: bool = False  # the presets' small row counts, for tests and smoke runs
    batch_size: int = 256
    seed: int = 0
    cache_dir: Path | None = None  # default: <tempdir>/duckstream-bench
    timeout: float | None = None  # seconds per configuration
    repeat: int = 3  # epochs per configuration: the first is cold, the fastest later one warm

    def __post_init__(self) -> None:
        if not self.presets or set(self.presets) - set(get_args(PresetName)):
            raise ConfigurationError(
                f"presets must be among {list(get_args(PresetName))}, found {list(self.presets)}"
            )
        if not self.loaders or set(self.loaders) - set(get_args(LoaderName)):
            raise ConfigurationError(
                f"loaders must be among {list(get_args(LoaderName))}, found {list(self.loaders)}"
            )
        if not self.workers or min(self.workers) < 0:
            raise ConfigurationError(f"workers must be counts of 0 or more, found {list(self.workers)}")
        for name, value in (
            ("rows", self.rows),
            ("scale", self.scale),
            ("batch size", self.batch_size),
            ("repeat", self.repeat),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be at least 1, found {value}")

    def rows_of(self, name: PresetName) -> int:
        """The 1x row count of preset ``name`` under this configuration."""
        if self.rows is not None:
            return self.rows
        shape = preset(name)
        return shape.quick_rows if self.quick else shape.rows


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One configuration's figures, or the error that stopped it."""

    preset: PresetName
    scale: int
    rows: int  # rows in the dataset
    loader: LoaderName
    workers: int | None  # None: a pyarrow scan, which has no workers
    rows_read: int | None = None
    seconds: float | None = None  # the first, cold epoch
    warm_rows_read: int | None = None
    warm_seconds: float | None = None  # the fastest later epoch (the first, when there is one)
    first_batch_seconds: float | None = None
    start_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    error: str | None = None

    @property
    def rows_per_second(self) -> float | None:
        """Rows read per second of the cold epoch, timed from constructing the loader."""
        if self.rows_read is None or not self.seconds:
            return None
        return self.rows_read / self.seconds

    @property
    def warm_rows_per_second(self) -> float | None:
        """Rows read per second of a warm epoch (plan made, persistent workers running)."""
        if self.warm_rows_read is None or not self.warm_seconds:
            return None
        return self.warm_rows_read / self.warm_seconds


def run_bench(config: BenchConfig, *, echo: Callable[[str], None] = print) -> list[Measurement]:
    """Measure every configuration ``config`` names, reporting progress through ``echo``."""
    echo(f"python {platform.python_version()}, {os.cpu_count()} CPUs, batch size {config.batch_size}")
    measurements = []
    for name in config.presets:
        scaled = [loader for loader in config.loaders if loader in _SCALED]
        scales = (1, config.scale) if config.scale > 1 and scaled else (1,)
        for scale in scales:
            spec = preset(name).spec(config.rows_of(name) * scale, seed=config.seed)
            source = ensure_dataset(spec, config.cache_dir)
            echo(f"dataset {name} {scale}x: {_describe(spec, source)}")
            for loader in config.loaders if scale == 1 else scaled:
                # The pyarrow scans have no workers; the scaled runs compare memory at 0 workers.
                counts: Sequence[int | None] = (
                    [None] if loader in _NO_WORKERS else config.workers if scale == 1 else [0]
                )
                for workers in counts:
                    base = Measurement(
                        preset=name, scale=scale, rows=spec.rows, loader=loader, workers=workers
                    )
                    measurement = _measure(config, base, spec, source)
                    echo(f"  {_label(measurement)}: {_outcome(measurement)}")
                    measurements.append(measurement)
    return measurements


def _measure(config: BenchConfig, base: Measurement, spec: DatasetSpec, source: Path) -> Measurement:
    """Run ``base``'s configuration in fresh processes; fill in its figures.

    It runs twice: once timed and left alone, once under the memory sampler for the peak,
    since sampling a tree of large processes takes CPU the timed run should not lose.
    """
    command = [
        sys.executable,
        "-m",
        _EPOCH_MODULE,
        f"--loader={base.loader}",
        f"--source={source}",
        f"--columns={','.join(spec.columns)}",
        f"--batch-size={config.batch_size}",
        f"--workers={base.workers or 0}",
        f"--seed={config.seed}",
        f"--repeat={config.repeat}",
    ]
    timed = run_sampled(command, timeout=config.timeout, sample=False)
    failure = _failure(config, timed)
    if failure is not None:
        return replace(base, error=failure)
    sampled = run_sampled(command, timeout=config.timeout)
    failure = _failure(config, sampled)
    if failure is not None:
        return replace(base, error=failure)
    figures = json.loads(timed.stdout.strip().splitlines()[-1])
    return replace(
        base,
        rows_read=figures["rows"],
        seconds=figures["seconds"],
        warm_rows_read=figures["warm_rows"],
        warm_seconds=figures["warm_seconds"],
        first_batch_seconds=figures["first_batch_seconds"],
        start_rss_bytes=figures["start_rss_bytes"],
        peak_rss_bytes=sampled.peak_rss_bytes,
    )


def _failure(config: BenchConfig, run: SampledRun) -> str | None:
    """Why ``run`` gave no figures, or None."""
    if run.timed_out:
        return f"no result within {config.timeout} s"
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        return lines[-1]
    try:
        json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"expected a JSON line on stdout, found {run.stdout[-200:]!r}"
    return None


def _describe(spec: DatasetSpec, source: Path) -> str:
    files = sorted(source.glob("*.parquet"))
    size = sum(path.stat().st_size for path in files)
    return f"{spec.rows:,} rows, {len(files)} files, {size / _MB:,.1f} MB, columns {', '.join(spec.columns)}"


def _label(m: Measurement) -> str:
    workers = "" if m.workers is None else f" workers={m.workers}"
    return f"{m.preset} {m.scale}x {m.loader}{workers}"


def _outcome(m: Measurement) -> str:
    if m.error is not None:
        return f"FAILED: {m.error}"
    return f"{m.rows_read:,} rows in {m.seconds:.2f} s"


_HEADERS = (
    "preset",
    "scale",
    "rows",
    "loader",
    "workers",
    "cold s",
    "cold rows/s",
    "warm rows/s",
    "1st batch ms",
    "start MB",
    "peak MB",
)


def format_table(measurements: Sequence[Measurement]) -> str:
    """The figures as an aligned plain-text table, one line per configuration."""
    body = [_cells(m) for m in measurements]
    widths = [max(len(row[i]) for row in [list(_HEADERS), *body]) for i in range(len(_HEADERS))]

    # Text columns align left, figures right.
    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in (0, 3) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(_HEADERS), rule, *(line(cells) for cells in body)])


def _cells(m: Measurement) -> list[str]:
    head = [m.preset, f"{m.scale}x", f"{m.rows:,}", m.loader, "-" if m.workers is None else str(m.workers)]
    if m.error is not None:
        return [*head, "failed", "-", "-", "-", "-", "-"]
    figures = (
        m.seconds,
        m.rows_per_second,
        m.warm_rows_per_second,
        m.first_batch_seconds,
        m.start_rss_bytes,
        m.peak_rss_bytes,
    )
    seconds, rate, warm, first, start, peak = (0.0 if value is None else value for value in figures)
    return [
        *head,
        f"{seconds:.2f}",
        f"{rate:,.0f}",
        f"{warm:,.0f}",
        f"{first * 1000:,.1f}",
        f"{start / _MB:,.0f}",
        f"{peak / _MB:,.0f}",
    ]


def scaling_lines(measurements: Sequence[Measurement]) -> list[str]:
    """Peak memory at the larger scale against 1x, per preset and loader at 0 workers."""
    ones = {
        (m.preset, m.loader): m
        for m in measurements
        if m.scale == 1 and m.workers in (None, 0) and m.peak_rss_bytes is not None
    }
    lines = []
    for m in measurements:
        small = ones.get((m.preset, m.loader))
        if m.scale == 1 or small is None or m.peak_rss_bytes is None or small.peak_rss_bytes is None:
            continue
        lines.append(
            f"{m.preset} {m.loader}: peak {small.peak_rss_bytes / _MB:,.0f} MB at 1x ({small.rows:,} rows), "
            f"{m.peak_rss_bytes / _MB:,.0f} MB at {m.scale}x ({m.rows:,} rows): "
            f"{m.peak_rss_bytes / small.peak_rss_bytes:.2f}x"
        )
    return lines


@dataclass(frozen=True, kw_only=True)
class Ratio:
    """rows/s of a duckstream loader divided by rows/s of its like-for-like pyarrow scan, at 1x.

    ``value`` compares warm epochs (the fastest later epoch of each), ``cold`` the first ones.
    """

    preset: PresetName
    loader: LoaderName
    baseline: LoaderName
    workers: int
    value: float
    cold: float


def ratios(measurements: Sequence[Measurement]) -> list[Ratio]:
    """duckstream-arrow against pyarrow and duckstream against pyarrow-python, per preset and workers."""
    found_in = {
        (m.preset, m.loader, m.workers): m
        for m in measurements
        if m.scale == 1 and m.error is None and m.rows_per_second and m.warm_rows_per_second
    }
    baselines = {ours: baseline for ours, _, baseline in _PAIRS}
    found = []
    for (name, loader, workers), ours in found_in.items():
        baseline = baselines.get(loader)
        base = None if baseline is None else found_in.get((name, baseline, None))
        if baseline is not None and workers is not None and base is not None:
            found.append(
                Ratio(
                    preset=name,
                    loader=loader,
                    baseline=baseline,
                    workers=workers,
                    value=_divide(ours.warm_rows_per_second, base.warm_rows_per_second),
                    cold=_divide(ours.rows_per_second, base.rows_per_second),
                )
            )
    return found


def _divide(top: float | None, bottom: float | None) -> float:
    return (top or 0.0) / (bottom or 1.0)  # both are set: measurements without them are left out


def ratio_lines(measurements: Sequence[Measurement]) -> list[str]:
    """One line per preset and pair: the ratio at each worker count, in the order measured."""
    found = ratios(measurements)
    lines = []
    for name in dict.fromkeys(r.preset for r in found):
        for ours, label, baseline in _PAIRS:
            pair = [r for r in found if r.preset == name and r.loader == ours]
            if pair:
                figures = ", ".join(
                    f"{r.value:.2f} warm ({r.cold:.2f} cold) at {r.workers} workers" for r in pair
                )
                lines.append(f"{name}: {label} / {baseline}: {figures}")
    return lines


def write_json(path: str | Path, config: BenchConfig, measurements: Sequence[Measurement]) -> None:
    """Write the configuration, the machine and every measurement to ``path`` as JSON."""
    document: dict[str, Any] = {
        "config": {
            **asdict(config),
            "cache_dir": None if config.cache_dir is None else str(config.cache_dir),
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "measurements": [
            {
                **asdict(m),
                "rows_per_second": m.rows_per_second,
                "warm_rows_per_second": m.warm_rows_per_second,
            }
            for m in measurements
        ],
        "ratios": [asdict(r) for r in ratios(measurements)],
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def report(measurements: Sequence[Measurement], out: TextIO) -> None:
    """Print the table, the ratios, the scaling comparison and any errors in full."""
    print(file=out)
    print(format_table(measurements), file=out)
    lines = ratio_lines(measurements)
    if lines:
        print(file=out)
        print(
            "ratios of rows/s at 1x, like for like (above 1: duckstream is faster; it also shuffles):",
            file=out,
        )
        for line in lines:
            print(f"  {line}", file=out)
    scaling = scaling_lines(measurements)
    if scaling:
        print(file=out)
        print("peak memory as the data grows (0 workers):", file=out)
        for line in scaling:
            print(f"  {line}", file=out)
    failed = [m for m in measurements if m.error is not None]
    if failed:
        print(file=out)
        for m in failed:
            print(f"failed: {_label(m)}: {m.error}", file=out)
