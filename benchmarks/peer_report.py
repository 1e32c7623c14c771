"""The output of ``duckstream bench --peers``: one table of every loader, and JSON.

The shuffle columns are those of the read-path table (``report.py``), judged the same way
(``shuffle_quality.py``); ``once`` says whether every epoch held every row exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from .peers import PEERS, PeerConfig, PeerMeasurement
from .report import aligned_table, machine
from .shuffle_quality import uniform_expectation

__all__ = ["format_peer_table", "report_peers", "write_peer_json"]

_MB = 1024 * 1024
_NOTE_WIDTH = 100  # of a reason in the table; the full text follows it

_HEADERS = (
    "preset",
    "rows",
    "loader",
    "workers",
    "convert s",
    "1st batch ms",
    "cold rows/s",
    "warm rows/s",
    "peak MB",
    "once",
    "|rho|",
    "nbrs",
    "disp",
)
_TEXT_COLUMNS = frozenset({0, 2, 9})
_HEAD = 4  # the cells every line has, figures or not


def format_peer_table(measurements: Sequence[PeerMeasurement]) -> str:
    """The figures as an aligned plain-text table, one line per loader and worker count.

    A loader without figures says why in their place: ``not installed: <why> (<how>)`` or
    ``failed: <why>`` (cut short; :func:`report_peers` prints the whole reason below the table).
    """
    return aligned_table(_HEADERS, [_cells(m) for m in measurements], text=_TEXT_COLUMNS, head=_HEAD)


def _cells(m: PeerMeasurement) -> list[str]:
    head = [m.preset, f"{m.rows:,}", m.peer, str(m.workers)]
    if m.not_installed is not None:
        return [*head, _shorten(f"not installed: {m.not_installed}")]
    if m.error is not None:
        return [*head, _shorten(f"failed: {m.error}")]
    quality = m.shuffle_worst
    shuffle = (
        ["-", "-", "-"]
        if quality is None
        else [f"{quality.spearman:.3f}", f"{quality.neighbours_kept:.3f}", f"{quality.displacement:.3f}"]
    )
    return [
        *head,
        "-" if m.convert_seconds is None else f"{m.convert_seconds:.2f}",
        f"{(m.first_batch_seconds or 0.0) * 1000:,.1f}",
        f"{m.rows_per_second or 0.0:,.0f}",
        f"{m.warm_rows_per_second or 0.0:,.0f}",
        f"{(m.peak_rss_bytes or 0) / _MB:,.0f}",
        "yes" if m.exactly_once else "NO",
        *shuffle,
    ]


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _NOTE_WIDTH else text[: _NOTE_WIDTH - 3] + "..."


def report_peers(measurements: Sequence[PeerMeasurement], out: TextIO) -> None:
    """Print the table, what each loader runs, and every reason and miscount in full."""
    print(file=out)
    print(format_peer_table(measurements), file=out)
    lengths = sorted({q.rows for m in measurements if (q := m.shuffle_worst) is not None})
    if lengths:
        print(file=out)
        print(
            "warm rows/s: the median of the epochs after the first; shuffle, the least shuffled "
            "epoch of each: |rho| (1: storage order), nbrs (1: storage order), disp (0: storage "
            "order); a uniform permutation gives on average:",
            file=out,
        )
        for rows in lengths:
            uniform = uniform_expectation(rows)
            print(
                f"  {rows:,} rows: |rho| {uniform.spearman:.3f}, nbrs {uniform.neighbours_kept:.3f}, "
                f"disp {uniform.displacement:.3f}",
                file=out,
            )
    print(file=out)
    for name in dict.fromkeys(m.peer for m in measurements):
        print(f"{name}: {PEERS[name].runs}", file=out)
    notes = [(m, "not installed", m.not_installed) for m in measurements if m.not_installed is not None]
    notes += [(m, "failed", m.error) for m in measurements if m.error is not None]
    notes += [(m, "not exactly once", m.exactly_once_note) for m in measurements if m.exactly_once_note]
    if notes:
        print(file=out)
        for m, what, why in notes:
            print(f"{what}: {m.preset} {m.peer} workers={m.workers}: {why}", file=out)


def write_peer_json(path: str | Path, config: PeerConfig, measurements: Sequence[PeerMeasurement]) -> None:
    """Write the configuration, the machine and every measurement to ``path`` as JSON."""
    document: dict[str, Any] = {
        "config": {
            **asdict(config),
            "cache_dir": None if config.cache_dir is None else str(config.cache_dir),
            "mosaic_python": None if config.mosaic_python is None else str(config.mosaic_python),
        },
        "machine": machine(),
        "measurements": [
            {
                **asdict(m),
                "rows_per_second": m.rows_per_second,
                "shuffle_worst": None if m.shuffle_worst is None else asdict(m.shuffle_worst),
            }
            for m in measurements
        ],
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
