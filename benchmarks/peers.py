"""duckstream beside the loaders users would pick instead (``duckstream bench --peers``).

Every loader reads the same generated dataset (``datasets.py``), shuffled, in batches of the
same size, and hands the loop the same thing: a dict of column name to Python list. Each
configuration runs in fresh processes (``peer_epoch.py``): a loader that needs its own format
first converts the Parquet files in a process of its own, timed apart; then one run is timed
and left alone, and one runs under the memory sampler (``memory.py``) for the peak of the
process tree. The ids the loop received show whether each epoch held every row exactly once
and how well it was shuffled (``shuffle_quality.py``). A loader that is not installed here
gets a row saying so and how to install it; MosaicML Streaming, whose pins conflict with
current ``datasets``, runs under the interpreter ``mosaic_python`` names.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from duckstream.redact import redact

from .checks import check_at_least_one, check_choices, check_workers, preset_rows
from .datasets import DatasetSpec, PresetName, default_cache_root, ensure_dataset, preset
from .memory import SampledRun, run_sampled
from .peer_epoch import CONVERTS, PeerName, ids_path
from .shuffle_quality import ShuffleQuality, measure, worst

__all__ = ["PEERS", "Peer", "PeerConfig", "PeerMeasurement", "run_peers"]

_PEER_EPOCH = Path(__file__).with_name("peer_epoch.py")


@dataclass(frozen=True, kw_only=True)
class Peer:
    """A loader: the modules it needs, how to install them, what it runs."""

    name: PeerName
    modules: tuple[str, ...]
    install: str
    runs: str


PEERS: dict[PeerName, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            name="duckstream",
            modules=("torch", "duckdb"),
            install="pip install 'duckstream[torch]'",
            runs="DuckStreamDataset(output='python', shuffle=True) through DuckStreamLoader",
        ),
        Peer(
            name="datasets-stream",
            modules=("datasets", "torch"),
            install="pip install 'duckstream[hf]'",
            runs="load_dataset('parquet', streaming=True).batch(...), unshuffled",
        ),
        Peer(
            name="datasets-stream-buffer",
            modules=("datasets", "torch"),
            install="pip install 'duckstream[hf]'",
            runs="the same through .shuffle(seed, buffer_size=10,000)",
        ),
        Peer(
            name="datasets-map",
            modules=("datasets", "torch"),
            install="pip install 'duckstream[hf]'",
            runs="load_dataset('parquet') (its Arrow cache), a shuffled BatchSampler",
        ),
        Peer(
            name="litdata",
            modules=("litdata", "polars", "torch"),
            # Its torchvision requirement has no build that loads beside a CPU torch 2.13.0.
            install=(
                "pip install --no-deps litdata && pip install lightning-utilities filelock obstore "
                "tifffile polars"
            ),
            runs="litdata StreamingDataset(ParquetLoader, shuffle=True) over the Parquet files",
        ),
        Peer(
            name="lance",
            modules=("lance", "torch"),
            install="pip install 'duckstream[peers]'",
            runs="lance.torch.data.SafeLanceDataset in a shuffling DataLoader",
        ),
        Peer(
            name="mosaic",
            modules=("streaming", "torch", "pyarrow"),
            install=(
                "its pins conflict with datasets: install mosaicml-streaming and pyarrow in another "
                "environment and give --mosaic-python PATH"
            ),
            runs="MosaicML StreamingDataset(shuffle=True) over MDS shards",
        ),
    )
}


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """What to measure; validated on construction."""

    presets: tuple[PresetName, ...] = ("captions", "images")
    peers: tuple[PeerName, ...] = get_args(PeerName)
    workers: tuple[int, ...] = (0,)
    rows: int | None = None  # overrides every preset's row count
    quick: bool = False  # small datasets, one (sampled) run per configuration
    batch_size: int = 256
    seed: int = 0
    shuffle_buffer: int = 10_000  # datasets-stream-buffer's
    cache_dir: Path | None = None  # default: <tempdir>/duckstream-bench
    timeout: float | None = None  # seconds per process
    repeat: int = 4  # epochs per configuration: the first is cold, the median of the others warm
    mosaic_python: Path | None = None  # an interpreter with mosaicml-streaming

    def __post_init__(self) -> None:
        check_choices("presets", self.presets, get_args(PresetName))
        check_choices("peers", self.peers, get_args(PeerName))
        check_workers(self.workers)
        check_at_least_one(
            rows=self.rows, batch_size=self.batch_size, shuffle_buffer=self.shuffle_buffer, repeat=self.repeat
        )

    def rows_of(self, name: PresetName) -> int:
        """The row count of preset ``name`` under this configuration."""
        return preset_rows(name, self.rows, quick=self.quick)


@dataclass(frozen=True, kw_only=True)
class PeerMeasurement:
    """One loader at one worker count: its figures, or why it has none."""

    preset: PresetName
    rows: int  # in the dataset
    peer: PeerName
    workers: int
    convert_seconds: float | None = None  # writing the loader's own format; None: it reads Parquet
    convert_peak_rss_bytes: int | None = None
    seconds: float | None = None  # the first, cold epoch, from building the loader
    rows_read: int | None = None  # in the cold epoch
    warm_rows_per_second: float | None = None  # the median of the later epochs (the cold one alone)
    first_batch_seconds: float | None = None  # from building the loader to its first batch
    peak_rss_bytes: int | None = None  # of the process tree, workers included
    exactly_once: bool | None = None  # every epoch held every row once
    exactly_once_note: str | None = None  # the first epoch that did not, and how
    shuffle: tuple[ShuffleQuality, ...] = ()  # each epoch of the timed run
    error: str | None = None
    not_installed: str | None = None  # why it cannot run here, and how to install it

    @property
    def rows_per_second(self) -> float | None:
        """Rows per second of the cold epoch."""
        if self.rows_read is None or not self.seconds:
            return None
        return self.rows_read / self.seconds

    @property
    def shuffle_worst(self) -> ShuffleQuality | None:
        """Each shuffle figure at its least shuffled over the epochs; None without figures."""
        return worst(self.shuffle)

    @property
    def ok(self) -> bool:
        """Whether it has figures."""
        return self.error is None and self.not_installed is None


class _NotInstalled(Exception):
    """A loader that cannot run here: its message says why and how to install it."""


def run_peers(config: PeerConfig, *, echo: Callable[[str], None] = print) -> list[PeerMeasurement]:
    """Measure every loader ``config`` names on every preset, reporting progress through ``echo``."""
    echo(f"python {platform.python_version()}, {os.cpu_count()} CPUs, batch size {config.batch_size}")
    interpreters: dict[PeerName, str | _NotInstalled] = {}
    for name in config.peers:
        try:
            interpreters[name] = _interpreter(PEERS[name], config.mosaic_python)
        except _NotInstalled as exc:
            interpreters[name] = exc
            echo(f"{name}: not installed: {exc}")
    measurements = []
    for preset_name in config.presets:
        spec = preset(preset_name).spec(config.rows_of(preset_name), seed=config.seed)
        source = ensure_dataset(spec, config.cache_dir)
        echo(f"dataset {preset_name}: {spec.rows:,} rows at {source}")
        for name in config.peers:
            bases = [
                PeerMeasurement(preset=preset_name, rows=spec.rows, peer=name, workers=workers)
                for workers in config.workers
            ]
            found = interpreters[name]
            if isinstance(found, _NotInstalled):
                measured = [replace(base, not_installed=str(found)) for base in bases]
            else:
                measured = _measure_peer(config, bases, spec, source, found)
            for m in measured:
                echo(f"  {m.preset} {m.peer} workers={m.workers}: {_outcome(m)}")
            measurements.extend(measured)
    return measurements


def _interpreter(peer: Peer, mosaic_python: Path | None) -> str:
    """The interpreter that runs ``peer``; raises _NotInstalled where none can."""
    if peer.name == "mosaic" and mosaic_python is not None:
        try:
            checked = subprocess.run(
                [str(mosaic_python), "-I", "-c", "import " + ", ".join(peer.modules)],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _NotInstalled(f"{mosaic_python} does not run: {exc}") from None
        if checked.returncode != 0:
            lines = checked.stderr.strip().splitlines() or [f"exit status {checked.returncode}"]
            raise _NotInstalled(f"{mosaic_python} cannot import it: {lines[-1]} ({peer.install})")
        return str(mosaic_python)
    missing = [module for module in peer.modules if importlib.util.find_spec(module) is None]
    if missing:
        raise _NotInstalled(f"no module {', '.join(missing)} ({peer.install})")
    return sys.executable


def _measure_peer(
    config: PeerConfig,
    bases: Sequence[PeerMeasurement],
    spec: DatasetSpec,
    source: Path,
    interpreter: str,
) -> list[PeerMeasurement]:
    """Convert (where the loader needs it) once, then measure each worker count."""
    name = bases[0].peer
    command = [
        interpreter,
        "-I",  # keeps benchmarks/ off sys.path: its datasets.py would hide Hugging Face's
        str(_PEER_EPOCH),
        f"--peer={name}",
        f"--source={source}",
        f"--columns={','.join(spec.columns)}",
    ]
    root = config.cache_dir if config.cache_dir is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"peer-{name}-", dir=root) as scratch:
        converted: dict[str, Any] = {}
        if name in CONVERTS:
            out = Path(scratch) / "converted"
            run = run_sampled([*command, f"--convert={out}"], timeout=config.timeout)
            failure = _failure(config, run, "seconds")
            if failure is not None:
                return [replace(base, error=f"converting: {failure}") for base in bases]
            converted = {
                "convert_seconds": _last_json(run)["seconds"],
                "convert_peak_rss_bytes": run.peak_rss_bytes,
            }
            command.append(f"--converted={out}")
        command += [
            f"--batch-size={config.batch_size}",
            f"--seed={config.seed}",
            f"--shuffle-buffer={config.shuffle_buffer}",
            f"--repeat={config.repeat}",
        ]
        return [
            _measure(config, replace(base, **converted), [*command, f"--workers={base.workers}"], spec)
            for base in bases
        ]


def _measure(
    config: PeerConfig, base: PeerMeasurement, command: list[str], spec: DatasetSpec
) -> PeerMeasurement:
    """One configuration: a timed run that records the ids, then one under the sampler.

    With ``quick``, one run, timed and sampled at once.
    """
    with tempfile.TemporaryDirectory(prefix="duckstream-peer-ids-") as ids_dir:
        timed = run_sampled([*command, f"--ids-dir={ids_dir}"], timeout=config.timeout, sample=config.quick)
        failure = _failure(config, timed, "epochs")
        if failure is not None:
            return replace(base, error=failure)
        epochs = _last_json(timed)["epochs"]
        shuffle, once, note = _judge(Path(ids_dir), len(epochs), spec.rows)
    sampled = timed
    if not config.quick:
        sampled = run_sampled(command, timeout=config.timeout)
        failure = _failure(config, sampled, "epochs")
        if failure is not None:
            return replace(base, error=failure)
    cold = epochs[0]
    rates = [e["rows"] / e["seconds"] for e in epochs[1:] or epochs if e["seconds"]]
    return replace(
        base,
        seconds=cold["seconds"],
        rows_read=cold["rows"],
        warm_rows_per_second=statistics.median(rates) if rates else None,
        first_batch_seconds=cold["first_batch_seconds"],
        peak_rss_bytes=sampled.peak_rss_bytes,
        exactly_once=once,
        exactly_once_note=note,
        shuffle=shuffle,
    )


def _judge(ids_dir: Path, epochs: int, rows: int) -> tuple[tuple[ShuffleQuality, ...], bool, str | None]:
    """Each epoch's shuffle figures, whether every epoch held each of ``rows`` ids once, and how not."""
    import numpy as np

    qualities = []
    note = None
    everything = np.arange(rows, dtype=np.int64)
    for epoch in range(epochs):
        ids = np.fromfile(ids_path(ids_dir, epoch), dtype=np.int64)
        qualities.append(measure(ids))
        if note is None and not (len(ids) == rows and np.array_equal(np.sort(ids), everything)):
            distinct = np.unique(ids)
            missing = rows - int(np.count_nonzero((distinct >= 0) & (distinct < rows)))
            note = (
                f"epoch {epoch}: {len(ids):,} ids, {len(distinct):,} distinct, "
                f"{missing:,} of {rows:,} missing"
            )
    return tuple(qualities), note is None, note


def _failure(config: PeerConfig, run: SampledRun, key: str) -> str | None:
    """Why ``run`` printed no JSON line holding ``key``, or None (secrets masked)."""
    if run.timed_out:
        return f"no result within {config.timeout} s"
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        return redact(lines[-1])
    try:
        if key in _last_json(run):
            return None
    except (IndexError, ValueError):
        pass
    return redact(f"expected a JSON line with {key!r} on stdout, found {run.stdout[-200:]!r}")


def _last_json(run: SampledRun) -> dict[str, Any]:
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    if not isinstance(figures, dict):
        raise ValueError("not an object")
    return figures


def _outcome(m: PeerMeasurement) -> str:
    if m.not_installed is not None:
        return f"not installed: {m.not_installed}"
    if m.error is not None:
        return f"FAILED: {m.error}"
    converted = "" if m.convert_seconds is None else f" after {m.convert_seconds:.2f} s converting"
    return f"{m.rows_read:,} of {m.rows:,} rows in {m.seconds:.2f} s{converted}"
