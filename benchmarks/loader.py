"""The loader benchmark: every read path, loader and worker count, each in a fresh process.

Each configuration runs under the memory sampler in a child process; a path whose server
cannot start, or a configuration that fails, gets a line saying so instead of stopping the
run. The configurations that shuffle also hand back the ids their loop received, epoch by
epoch, which give their shuffle figures (``shuffle_quality.py``) and, with ``plot_dir``, a
picture of the first epoch's order (``plot.py``). ``report.py`` turns the measurements into
the table, the ratios and the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from tqdm import tqdm

from duckstream.errors import ConfigurationError
from duckstream.redact import redact

from .checks import check_at_least_one, check_choices, check_workers, preset_rows
from .datasets import DatasetSpec, PresetName, ensure_dataset, preset
from .epoch import LoaderName, ids_file
from .memory import SampledRun, run_sampled
from .paths import LakeCatalogKind, PathGroup, PathName, ReadPath, expand, path_sql, read_path
from .services import BenchServices, Unavailable
from .shuffle_quality import ShuffleQuality, measure, worst
from .sources import Sources, Target

__all__ = ["BenchConfig", "Measurement", "epoch_command", "run_bench"]

_EPOCH_MODULE = "duckstream.benchmarks.epoch"
_MB = 1024 * 1024

# The pyarrow scans: the floors, in one process, without DataLoader workers.
_FLOORS: frozenset[LoaderName] = frozenset({"pyarrow", "pyarrow-python"})
# Measured at --scale too (plain path, 0 workers); the other two only at 1x, to keep the run short.
_SCALED: frozenset[LoaderName] = frozenset({"pyarrow", "duckstream"})


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to measure; validated on construction."""

    presets: tuple[PresetName, ...] = ("captions", "images")
    paths: tuple[PathGroup, ...] = get_args(PathGroup)
    loaders: tuple[LoaderName, ...] = get_args(LoaderName)
    workers: tuple[int, ...] = (0, 2)
    lake_catalogs: tuple[LakeCatalogKind, ...] = get_args(LakeCatalogKind)
    s3_delay_ms: float = 20.0  # added to each request on the s3-delay path
    rows: int | None = None  # overrides every preset's row count
    scale: int = 4  # also measure peak memory on this many times the rows; 1 turns that off
    quick: bool = False  # small datasets, one (sampled) run per configuration: for tests and smoke runs
    batch_size: int = 256
    seed: int = 0
    cache_dir: Path | None = None  # default: <tempdir>/duckstream-bench
    timeout: float | None = None  # seconds per configuration
    repeat: int = 3  # epochs per configuration: the first is cold, the fastest later one warm
    plot_dir: Path | None = None  # draw each shuffled configuration's first epoch here (plot.py)
    shuffle_buffer: int | None = None  # duckstream's buffer in rows; None: the dataset's default

    def __post_init__(self) -> None:
        check_choices("presets", self.presets, get_args(PresetName))
        check_choices("paths", self.paths, get_args(PathGroup))
        check_choices("loaders", self.loaders, get_args(LoaderName))
        check_choices("lake catalogs", self.lake_catalogs, get_args(LakeCatalogKind))
        check_workers(self.workers)
        if self.s3_delay_ms < 0:
            raise ConfigurationError(f"the S3 delay must be 0 ms or more, found {self.s3_delay_ms}")
        check_at_least_one(
            rows=self.rows,
            scale=self.scale,
            batch_size=self.batch_size,
            repeat=self.repeat,
            shuffle_buffer=self.shuffle_buffer,
        )

    def rows_of(self, name: PresetName) -> int:
        """The 1x row count of preset ``name`` under this configuration."""
        return preset_rows(name, self.rows, quick=self.quick)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One configuration's figures, or the error that stopped it, or why it could not run."""

    preset: PresetName
    scale: int
    rows: int  # rows in the dataset
    path: PathName = "plain"
    loader: LoaderName
    workers: int | None  # None: a pyarrow scan, which has no workers
    rows_read: int | None = None  # rows delivered (fewer than `rows` on a filtering path)
    seconds: float | None = None  # the first, cold epoch
    warm_rows_read: int | None = None
    warm_seconds: float | None = None  # the fastest later epoch (the first, when there is one)
    first_batch_seconds: float | None = None
    start_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    read_bytes: int | None = None  # bytes read by the process tree in the cold epoch (local files)
    warm_read_bytes: int | None = None  # the same in the warm one
    # Each epoch of the timed run, in order, judged by the ids the loop received; empty for the
    # pyarrow scans, which do not shuffle.
    shuffle: tuple[ShuffleQuality, ...] = ()
    error: str | None = None
    skipped: str | None = None  # why the path cannot run here (a server that did not start)

    @property
    def rows_per_second(self) -> float | None:
        """Rows per second of the cold epoch, timed from constructing the loader."""
        return self._rate(self.rows_read, self.seconds)

    @property
    def warm_rows_per_second(self) -> float | None:
        """Rows per second of a warm epoch (plan made, persistent workers running)."""
        return self._rate(self.warm_rows_read, self.warm_seconds)

    def _rate(self, delivered: int | None, seconds: float | None) -> float | None:
        # A filtering path is judged by the rows it had to look at: those of the whole source.
        if delivered is None or not seconds:
            return None
        return (self.rows if read_path(self.path).filters else delivered) / seconds

    @property
    def shuffle_worst(self) -> ShuffleQuality | None:
        """Each shuffle figure at its least shuffled over the epochs; None without figures."""
        return worst(self.shuffle)

    @property
    def ok(self) -> bool:
        """Whether it has figures."""
        return self.error is None and self.skipped is None


def run_bench(config: BenchConfig, *, echo: Callable[[str], None] = print) -> list[Measurement]:
    """Measure every configuration ``config`` names, reporting progress through ``echo``."""
    buffer = "" if config.shuffle_buffer is None else f", shuffle buffer {config.shuffle_buffer:,} rows"
    echo(f"python {platform.python_version()}, {os.cpu_count()} CPUs, batch size {config.batch_size}{buffer}")
    if config.plot_dir is not None:
        from .plot import require_matplotlib

        require_matplotlib()  # before minutes of measuring, not after
    plan = expand(config.paths, config.lake_catalogs)
    # Memory as the data grows is a property of the plain path, measured when it is asked for.
    scaled = [loader for loader in config.loaders if loader in _SCALED]
    scales = (1, config.scale) if config.scale > 1 and scaled and "plain" in config.paths else (1,)
    jobs = []  # (preset, scale, spec, path, configuration), in the order they are measured
    for name in config.presets:
        for scale in scales:
            spec = preset(name).spec(config.rows_of(name) * scale, seed=config.seed)
            for path, asked in plan:
                if scale > 1 and path.name != "plain":
                    continue
                loaders = [
                    loader
                    for loader in (config.loaders if scale == 1 else scaled)
                    if (path.is_floor if loader in _FLOORS else asked)
                ]
                for base in _configurations(config, name, scale, spec.rows, path, loaders):
                    jobs.append((name, scale, spec, path, base))
    measurements: list[Measurement] = []
    # A full run takes minutes: a bar on a terminal, and the figures as lines above it.
    bar = tqdm(total=len(jobs), desc="bench", unit="run", disable=not sys.stderr.isatty(), leave=False)
    say = echo if bar.disable else lambda text: bar.write(text)
    with BenchServices(s3_delay=config.s3_delay_ms / 1000, echo=say) as services, bar:
        sources = Sources(services, echo=say)
        datasets: dict[tuple[str, int], Path] = {}
        try:
            for name, scale, spec, path, base in jobs:
                if (name, scale) not in datasets:
                    datasets[name, scale] = ensure_dataset(spec, config.cache_dir)
                    say(f"dataset {name} {scale}x: {_describe(spec, datasets[name, scale])}")
                measurement = _run_path(config, base, path, spec, datasets[name, scale], sources)
                say(f"  {_label(measurement)}: {_outcome(measurement)}")
                measurements.append(measurement)
                bar.update()
        finally:
            sources.close()
    return measurements


def _configurations(
    config: BenchConfig,
    name: PresetName,
    scale: int,
    rows: int,
    path: ReadPath,
    loaders: Sequence[LoaderName],
) -> list[Measurement]:
    """The configurations of one path, unmeasured: floors once, duckstream once per worker count."""
    found = []
    for loader in loaders:
        # The pyarrow scans have no workers; the scaled runs compare memory at 0 workers.
        counts: Sequence[int | None] = [None] if loader in _FLOORS else config.workers if scale == 1 else [0]
        for workers in counts:
            found.append(
                Measurement(
                    preset=name, scale=scale, rows=rows, path=path.name, loader=loader, workers=workers
                )
            )
    return found


def _run_path(
    config: BenchConfig,
    base: Measurement,
    path: ReadPath,
    spec: DatasetSpec,
    source: Path,
    sources: Sources,
) -> Measurement:
    """Prepare ``path``'s source (once per dataset; then remembered) and measure ``base`` on it."""
    try:
        target = sources.target(path, spec, source)
    except Unavailable as exc:
        return replace(base, skipped=str(exc))
    except Exception as exc:  # a path that cannot be set up fails alone, like one that cannot run
        return replace(base, error=redact(f"preparing the {path.name} path: {type(exc).__name__}: {exc}"))
    measured = _measure(config, base, path, spec, target)
    if path.remote:  # sockets are not counted (readbytes.py): leave out what would mislead
        measured = replace(measured, read_bytes=None, warm_read_bytes=None)
    return measured


def _measure(
    config: BenchConfig, base: Measurement, path: ReadPath, spec: DatasetSpec, target: Target
) -> Measurement:
    """Run ``base``'s configuration in fresh processes; fill in its figures.

    It runs twice: once timed and left alone, once under the memory sampler for the peak,
    since sampling a tree of large processes takes CPU the timed run should not lose. With
    ``quick``, once, sampled: the figures are rough either way on datasets that small.
    """
    command = epoch_command(config, base, path, spec, target.args)
    env = {**os.environ, **target.env}
    shuffles = base.loader not in _FLOORS and "id" in spec.columns
    with tempfile.TemporaryDirectory(prefix="duckstream-bench-ids-") as ids_dir:
        # Only the timed run writes the ids: the sampled one measures memory and nothing else.
        timed_command = [*command, f"--ids-dir={ids_dir}"] if shuffles else command
        timed = run_sampled(timed_command, timeout=config.timeout, sample=config.quick, env=env)
        failure = _failure(config, timed)
        if failure is not None:
            return replace(base, error=failure)
        shuffle = _shuffle(config, base, Path(ids_dir)) if shuffles else ()
    sampled = timed
    if not config.quick:
        sampled = run_sampled(command, timeout=config.timeout, env=env)
        failure = _failure(config, sampled)
        if failure is not None:
            return replace(base, error=failure)
    figures = _figures(timed)
    return replace(
        base,
        rows_read=figures["rows"],
        seconds=figures["seconds"],
        warm_rows_read=figures["warm_rows"],
        warm_seconds=figures["warm_seconds"],
        first_batch_seconds=figures["first_batch_seconds"],
        start_rss_bytes=figures["start_rss_bytes"],
        peak_rss_bytes=sampled.peak_rss_bytes,
        read_bytes=figures["read_bytes"],
        warm_read_bytes=figures["warm_read_bytes"],
        shuffle=shuffle,
    )


def epoch_command(
    config: BenchConfig, base: Measurement, path: ReadPath, spec: DatasetSpec, source_args: Sequence[str]
) -> list[str]:
    """The epoch process's command line for ``base``'s configuration (``source_args``: where
    it reads, from the path's :class:`Target`)."""
    command = [
        sys.executable,
        "-m",
        _EPOCH_MODULE,
        f"--loader={base.loader}",
        *source_args,
        f"--columns={','.join(spec.columns)}",
        f"--batch-size={config.batch_size}",
        f"--workers={base.workers or 0}",
        f"--seed={config.seed}",
        f"--repeat={config.repeat}",
    ]
    if base.loader not in _FLOORS:
        command.append(f"--sql={path_sql(path, spec.columns, spec.rows)}")
        command.append(f"--count={path.count}")
        if config.shuffle_buffer is not None:
            command.append(f"--shuffle-buffer={config.shuffle_buffer}")
    return command


def _shuffle(config: BenchConfig, base: Measurement, ids_dir: Path) -> tuple[ShuffleQuality, ...]:
    """The shuffle figures of each epoch whose ids the epoch process wrote; the first one drawn.

    Judged here, in the parent, so that neither the epoch's time nor its memory peak pays for it.
    """
    import numpy as np

    found = []
    for epoch in range(config.repeat):
        path = ids_file(ids_dir, epoch)
        if not path.exists():
            break
        ids = np.fromfile(path, dtype=np.int64)
        quality = measure(ids)
        if epoch == 0 and config.plot_dir is not None:
            from .plot import plot_epoch, plot_name

            plot_epoch(
                ids, config.plot_dir / plot_name(base), title=f"{_label(base)}, epoch 0", quality=quality
            )
        found.append(quality)
    return tuple(found)


# What the epoch process prints (epoch.main), every key of which a measurement takes.
_FIGURES = (
    "rows",
    "seconds",
    "warm_rows",
    "warm_seconds",
    "first_batch_seconds",
    "start_rss_bytes",
    "read_bytes",
    "warm_read_bytes",
)


def _failure(config: BenchConfig, run: SampledRun) -> str | None:
    """Why ``run`` gave no figures, or None (secrets masked)."""
    if run.timed_out:
        return f"no result within {config.timeout} s"
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        return redact(lines[-1])
    try:
        figures = _figures(run)
    except (IndexError, ValueError):
        return redact(f"expected a JSON line on stdout, found {run.stdout[-200:]!r}")
    missing = [key for key in _FIGURES if key not in figures]
    if missing:
        return f"the epoch process printed no {', '.join(missing)}"
    return None


def _figures(run: SampledRun) -> dict[str, Any]:
    """The JSON object on the last line of ``run``'s output."""
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    if not isinstance(figures, dict):
        raise ValueError("not an object")
    return figures


def _describe(spec: DatasetSpec, source: Path) -> str:
    files = sorted(source.glob("*.parquet"))
    size = sum(path.stat().st_size for path in files)
    return f"{spec.rows:,} rows, {len(files)} files, {size / _MB:,.1f} MB, columns {', '.join(spec.columns)}"


def _label(m: Measurement) -> str:
    workers = "" if m.workers is None else f" workers={m.workers}"
    return f"{m.preset} {m.scale}x {m.path} {m.loader}{workers}"


def _outcome(m: Measurement) -> str:
    if m.skipped is not None:
        return f"skipped: {m.skipped}"
    if m.error is not None:
        return f"FAILED: {m.error}"
    return f"{m.rows_read:,} of {m.rows:,} rows in {m.seconds:.2f} s"
