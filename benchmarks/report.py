"""The benchmark's output: one table of every configuration, the ratios to read it by, and JSON.

Absolute rows/s depend on the machine; ratios against a floor measured beside them do much
less, so the ratio section is what to compare between commits and machines. The shuffle
columns (``|rho|``, ``nbrs``, ``disp``) judge the order the loop received against storage order
(``shuffle_quality.py``), beside what a uniform permutation of as many rows would give.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from .datasets import PresetName
from .epoch import LoaderName
from .loader import BenchConfig, Measurement
from .paths import PathName, read_path
from .shuffle_quality import uniform_expectation

__all__ = [
    "Ratio",
    "aligned_table",
    "format_table",
    "ratio_lines",
    "ratios",
    "report",
    "scaling_lines",
    "shuffle_lines",
    "write_json",
]

_MB = 1024 * 1024
_NOTE_WIDTH = 90  # of a skip or failure reason in the table; the full text follows it

# Each duckstream loader and the pyarrow scan that delivers the same kind of batch.
_FLOOR_OF: dict[LoaderName, LoaderName] = {"duckstream-arrow": "pyarrow", "duckstream": "pyarrow-python"}

Measure = Literal["rows/s", "bytes read"]

_HEADERS = (
    "preset",
    "scale",
    "rows",
    "path",
    "loader",
    "workers",
    "cold s",
    "cold rows/s",
    "warm rows/s",
    "1st batch ms",
    "read MB",
    "start MB",
    "peak MB",
    "|rho|",
    "nbrs",
    "disp",
)
_TEXT_COLUMNS = frozenset({0, 3, 4})  # aligned left; figures align right
_HEAD = 6  # the cells every line has, figures or not


def format_table(measurements: Sequence[Measurement]) -> str:
    """The figures as an aligned plain-text table, one line per configuration.

    A configuration without figures says why in place of them: ``skipped: <why>`` or
    ``failed: <why>`` (cut short; :func:`report` prints the whole reason below the table).
    """
    return aligned_table(_HEADERS, [_cells(m) for m in measurements], text=_TEXT_COLUMNS, head=_HEAD)


def aligned_table(
    headers: Sequence[str], body: Sequence[Sequence[str]], *, text: frozenset[int], head: int
) -> str:
    """Rows of cells as an aligned plain-text table under ``headers``: the columns in ``text``
    align left, figures right. A row shorter than the headers has its first ``head`` cells,
    then a note where the figures would start (not counted in the column widths)."""
    full = [list(headers), *(row for row in body if len(row) == len(headers))]
    heads = [list(headers[:head]), *(row[:head] for row in body)]
    widths = [max(len(row[i]) for row in (heads if i < head else full)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        aligned = [
            cell.ljust(width) if i in text else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells[: len(widths)], widths, strict=False))
        ]
        if len(cells) != len(headers):
            aligned = [*aligned[:head], *cells[head:]]
        return "  ".join(aligned).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(cells) for cells in body)])


def _cells(m: Measurement) -> list[str]:
    head = [
        m.preset,
        f"{m.scale}x",
        f"{m.rows:,}",
        m.path,
        m.loader,
        "-" if m.workers is None else str(m.workers),
    ]
    if m.skipped is not None:
        return [*head, _shorten(f"skipped: {m.skipped}")]
    if m.error is not None:
        return [*head, _shorten(f"failed: {m.error}")]
    return [
        *head,
        f"{m.seconds or 0.0:.2f}",
        f"{m.rows_per_second or 0.0:,.0f}",
        f"{m.warm_rows_per_second or 0.0:,.0f}",
        f"{(m.first_batch_seconds or 0.0) * 1000:,.1f}",
        "-" if m.warm_read_bytes is None else f"{m.warm_read_bytes / _MB:,.1f}",
        f"{(m.start_rss_bytes or 0) / _MB:,.0f}",
        f"{(m.peak_rss_bytes or 0) / _MB:,.0f}",
        *_shuffle_cells(m),
    ]


def _shuffle_cells(m: Measurement) -> list[str]:
    quality = m.shuffle_worst
    if quality is None:  # a pyarrow scan: storage order, nothing to judge
        return ["-", "-", "-"]
    return [f"{quality.spearman:.3f}", f"{quality.neighbours_kept:.3f}", f"{quality.displacement:.3f}"]


def shuffle_lines(measurements: Sequence[Measurement]) -> list[str]:
    """What a uniform permutation gives, for each epoch length the table's shuffle figures have."""
    lengths = sorted({m.shuffle_worst.rows for m in measurements if m.shuffle_worst is not None})
    lines = []
    for rows in lengths:
        uniform = uniform_expectation(rows)
        lines.append(
            f"{rows:,} rows: |rho| {uniform.spearman:.3f}, nbrs {uniform.neighbours_kept:.3f}, "
            f"disp {uniform.displacement:.3f}"
        )
    return lines


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _NOTE_WIDTH else text[: _NOTE_WIDTH - 3] + "..."


def scaling_lines(measurements: Sequence[Measurement]) -> list[str]:
    """Peak memory at the larger scale against 1x, per preset and loader at 0 workers (plain path)."""
    plain = [m for m in measurements if m.path == "plain" and m.ok]
    ones = {
        (m.preset, m.loader): m
        for m in plain
        if m.scale == 1 and m.workers in (None, 0) and m.peak_rss_bytes is not None
    }
    lines = []
    for m in plain:
        small = ones.get((m.preset, m.loader))
        if m.scale == 1 or small is None or m.peak_rss_bytes is None or not small.peak_rss_bytes:
            continue
        lines.append(
            f"{m.preset} {m.loader}: peak {small.peak_rss_bytes / _MB:,.0f} MB at 1x ({small.rows:,} rows), "
            f"{m.peak_rss_bytes / _MB:,.0f} MB at {m.scale}x ({m.rows:,} rows): "
            f"{m.peak_rss_bytes / small.peak_rss_bytes:.2f}x"
        )
    return lines


@dataclass(frozen=True, kw_only=True)
class Ratio:
    """A duckstream configuration's figure divided by its baseline's, at 1x.

    ``measure`` ``rows/s``: rows per second (of the source, on a filtering path); ``bytes
    read``: bytes the process tree read. ``value`` compares warm epochs, ``cold`` the first
    ones. The baseline is a pyarrow floor (``baseline_workers`` None) or another duckstream
    path at the same worker count, then with the ``target`` the ratio should reach.
    """

    preset: PresetName
    path: PathName
    loader: LoaderName
    workers: int
    baseline_path: PathName
    baseline: LoaderName
    baseline_workers: int | None
    measure: Measure
    value: float
    cold: float
    target: float | None = None


def _baselines(m: Measurement) -> list[tuple[PathName, LoaderName, int | None, Measure, float | None]]:
    """What ``m`` is compared with: (path, loader, workers, measure, target)."""
    path = read_path(m.path)
    found: list[tuple[PathName, LoaderName, int | None, Measure, float | None]] = []
    floor = _FLOOR_OF.get(m.loader)
    # Python objects are compared like for like only where the path delivers what its floor scans.
    if floor is not None and (m.loader == "duckstream-arrow" or path.same_rows_as_floor):
        found.append((path.floor, floor, None, "rows/s", None))
    if path.baseline is not None:
        found.append((path.baseline, m.loader, m.workers, "rows/s", path.target))
    if path.compare_bytes:
        found.append(("plain", m.loader, m.workers, "bytes read", None))
    return found


def ratios(measurements: Sequence[Measurement]) -> list[Ratio]:
    """Every duckstream configuration against each of its baselines that has figures."""
    usable = {
        (m.preset, m.path, m.loader, m.workers): m
        for m in measurements
        if m.scale == 1 and m.ok and m.rows_per_second and m.warm_rows_per_second
    }
    found = []
    for (preset, _, loader, workers), ours in usable.items():
        if loader not in _FLOOR_OF or workers is None:
            continue
        for base_path, base_loader, base_workers, measure, target in _baselines(ours):
            base = usable.get((preset, base_path, base_loader, base_workers))
            if base is None:
                continue
            if measure == "rows/s":
                value = _divide(ours.warm_rows_per_second, base.warm_rows_per_second)
                cold = _divide(ours.rows_per_second, base.rows_per_second)
            elif base.warm_read_bytes and base.read_bytes:
                value = _divide(ours.warm_read_bytes, base.warm_read_bytes)
                cold = _divide(ours.read_bytes, base.read_bytes)
            else:
                continue  # bytes not counted (remote files)
            found.append(
                Ratio(
                    preset=preset,
                    path=ours.path,
                    loader=loader,
                    workers=workers,
                    baseline_path=base_path,
                    baseline=base_loader,
                    baseline_workers=base_workers,
                    measure=measure,
                    value=value,
                    cold=cold,
                    target=target,
                )
            )
    return found


def _divide(top: float | None, bottom: float | None) -> float:
    return (top or 0.0) / (bottom or 1.0)  # both are set: measurements without them are left out


def ratio_lines(measurements: Sequence[Measurement]) -> list[str]:
    """One line per preset, path and comparison: the ratio at each worker count.

    Lines follow the table's order of presets and paths; within a path, floors first, then
    the duckstream baseline, then bytes read; Arrow batches before Python objects.
    """
    found = ratios(measurements)
    presets = list(dict.fromkeys(m.preset for m in measurements))
    paths: list[str] = list(get_args(PathName))
    loaders = ("duckstream-arrow", "duckstream")

    def order(r: Ratio) -> tuple[int, ...]:
        kind = 2 if r.measure == "bytes read" else 0 if r.baseline_workers is None else 1
        return (presets.index(r.preset), paths.index(r.path), kind, loaders.index(r.loader), r.workers)

    groups: dict[tuple[Any, ...], list[Ratio]] = {}
    for r in sorted(found, key=order):
        key = (r.preset, r.path, r.loader, r.baseline_path, r.baseline, r.measure)
        groups.setdefault(key, []).append(r)
    lines = []
    for (preset, path, loader, base_path, baseline, measure), group in groups.items():
        figures = ", ".join(f"{r.value:.2f} warm ({r.cold:.2f} cold) at {r.workers} workers" for r in group)
        if measure == "bytes read":
            label = f"bytes read vs {base_path}, {loader}"
        else:
            label = f"{loader} / {baseline if base_path == path else f'{base_path} {baseline}'}"
        target = group[0].target
        suffix = "" if target is None else f" (target >= {target:.2f})"
        lines.append(f"{preset} {path}: {label}: {figures}{suffix}")
    return lines


def machine() -> dict[str, Any]:
    """The machine a report's figures come from."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}


def write_json(path: str | Path, config: BenchConfig, measurements: Sequence[Measurement]) -> None:
    """Write the configuration, the machine and every measurement to ``path`` as JSON."""
    document: dict[str, Any] = {
        "config": {
            **asdict(config),
            "cache_dir": None if config.cache_dir is None else str(config.cache_dir),
            "plot_dir": None if config.plot_dir is None else str(config.plot_dir),
        },
        "machine": machine(),
        "measurements": [
            {
                **asdict(m),
                "rows_per_second": m.rows_per_second,
                "warm_rows_per_second": m.warm_rows_per_second,
                "shuffle_worst": None if m.shuffle_worst is None else asdict(m.shuffle_worst),
            }
            for m in measurements
        ],
        "ratios": [asdict(r) for r in ratios(measurements)],
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def report(measurements: Sequence[Measurement], out: TextIO) -> None:
    """Print the table, the ratios, the scaling comparison and every skip and error in full."""
    print(file=out)
    print(format_table(measurements), file=out)
    uniform = shuffle_lines(measurements)
    if uniform:
        print(file=out)
        print(
            "shuffle, the least shuffled epoch of each: |rho| rank correlation of position and id "
            "(1: storage order), nbrs storage neighbours still adjacent (1: storage order), disp "
            "distance rows moved (0: storage order); a uniform permutation gives on average:",
            file=out,
        )
        for line in uniform:
            print(f"  {line}", file=out)
    lines = ratio_lines(measurements)
    if lines:
        print(file=out)
        print(
            "ratios at 1x, warm (cold): rows/s over the baseline's (filtering paths: rows of the "
            "source scanned); above 1: faster (duckstream also shuffles):",
            file=out,
        )
        for line in lines:
            print(f"  {line}", file=out)
    scaling = scaling_lines(measurements)
    if scaling:
        print(file=out)
        print("peak memory as the data grows (plain path, 0 workers):", file=out)
        for line in scaling:
            print(f"  {line}", file=out)
    notes = [(m, "skipped", m.skipped) for m in measurements if m.skipped is not None]
    notes += [(m, "failed", m.error) for m in measurements if m.error is not None]
    if notes:
        print(file=out)
        for m, what, why in notes:
            workers = "" if m.workers is None else f" workers={m.workers}"
            print(f"{what}: {m.preset} {m.scale}x {m.path} {m.loader}{workers}: {why}", file=out)
