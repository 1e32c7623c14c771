"""Walkthrough sections that report on the data: loader metrics to W&B (offline) and a quality profile.

The metrics section times one epoch of the run's pinned table through ``DuckStreamLoader`` with a
:class:`~duckstream.runs.loader_stats.LoaderMeter`, records the statistics on the run in the
catalog, and sends them with :mod:`duckstream.runs.metrics` to an offline W&B run. The quality
section profiles the pinned table with :func:`duckstream.quality.profile`, key and declarative
checks included.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from duckstream._environ import environment
from duckstream._optional import require
from duckstream.catalog import Run
from duckstream.core.lake import LakeTable
from duckstream.demo.data import CAPTION_ROWS
from duckstream.demo.frame import CAPTIONS_TABLE, Lakehouse, Section, rows_table
from duckstream.quality import QualityReport, profile
from duckstream.quality.render import render_html, render_text
from duckstream.runs.loader_stats import EpochStats, LoaderMeter
from duckstream.runs.metrics import column_statistics, loader_metrics, log_metrics

__all__ = ["BATCH_SIZE", "QUALITY_CHECKS", "quality_section", "wandb_metrics_section"]

WANDB_PROJECT = "duckstream-walkthrough"
BATCH_SIZE = 128
# Caption statistics of the pinned table, one row: what column_statistics sends to W&B.
CAPTION_STATISTICS = """SELECT count(*) AS captions,
       avg(words) AS caption_words_mean, min(words) AS caption_words_min, max(words) AS caption_words_max,
       avg(length(caption)) AS caption_chars_mean
    FROM (SELECT caption, len(string_split(caption, ' ')) AS words
          FROM (SELECT unnest(sentences) AS caption FROM source))"""
# What the lake table promises, as `duckstream profile --check` writes it. Karpathy's captions
# come five to an image, but COCO gives some images six or seven: the last check fails on those.
QUALITY_CHECKS = (
    "not_null:imgid",
    "unique:imgid",
    "values:split:train,val,test,restval",
    "length:sentences:1:10",
    "rows:1:",
    "length:sentences:5:5",
)


def _measured_epoch(table: LakeTable, lake: Lakehouse) -> EpochStats:
    """One shuffled epoch of ``table`` through DuckStreamLoader, as a training loop sees it."""
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    dataset = DuckStreamDataset(
        table,
        "SELECT imgid, sentences FROM source",
        batch_size=BATCH_SIZE,
        shuffle=True,
        seed=0,
        **lake.stream_keywords,
    )
    meter = LoaderMeter()
    for _batch in meter.measure(DuckStreamLoader(dataset), epoch=lambda: dataset.epoch):
        pass  # a training step would run here; the meter times only the wait for each batch
    return meter.epochs[-1]


def _caption_histogram(lake: Lakehouse) -> tuple[np.ndarray, np.ndarray]:
    """Words per caption and how many captions have that many."""
    lengths = lake.query(
        f"SELECT words, count(*) AS captions FROM ({CAPTION_ROWS}) GROUP BY words ORDER BY words"
    )
    words = np.array(lengths.column("words").to_pylist(), dtype=np.int64)
    counts = np.array(lengths.column("captions").to_pylist(), dtype=np.int64)
    return words, counts


def wandb_metrics_section(lake: Lakehouse, run: Run, wandb_dir: Path) -> Section:
    """One measured epoch's loader statistics and the caption statistics, on the run in the
    catalog and in an offline W&B run."""
    wandb = require("wandb")
    table = lake.pinned(run)
    stats = _measured_epoch(table, lake)
    # The run's loader statistics, in the form RunTracker records them.
    run_metrics = {"loader_epochs": [stats.as_dict()]}
    recorded = lake.recorded.record_run_metrics(run.run_id, run_metrics)
    loader = loader_metrics(stats)
    data = column_statistics(table, CAPTION_STATISTICS, **lake.stream_keywords)
    words, counts = _caption_histogram(lake)
    edges = np.append(words, words[-1] + 1).astype(np.float64) - 0.5
    wandb_dir.mkdir(parents=True, exist_ok=True)
    offline = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    with environment(offline):
        tracked = wandb.init(
            project=WANDB_PROJECT,
            dir=str(wandb_dir),
            mode="offline",
            name=f"run-{run.run_id[:8]}",
            config={**(run.config or {}), "duckstream_run_id": run.run_id, "snapshots": run.snapshots},
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True),
        )
        try:
            log_metrics(tracked, {**loader, **data}, step=stats.epoch)
            tracked.log(
                {"data/caption_words": wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))},
                step=stats.epoch,
                commit=True,  # a step is otherwise written only when a later one begins
            )
            run_dir = Path(tracked.dir).parent
            # What W&B recorded as the run's latest values, in its own JSON form.
            summary = {key: _plain(tracked.summary[key]) for key in tracked.summary.keys()}  # noqa: SIM118 (no __iter__)
        finally:
            tracked.finish()
    shown = rows_table(
        [
            *({"metric": key, "value": f"{value:,.6g}"} for key, value in {**loader, **data}.items()),
            {
                "metric": "data/caption_words (histogram)",
                "value": f"{len(counts)} bins, {int(counts.sum()):,} captions",
            },
        ]
    )
    text = (
        f"One shuffled epoch of the pinned table through DuckStreamLoader(DuckStreamDataset("
        f"batch_size={BATCH_SIZE})),\ntimed by a LoaderMeter; wait_seconds is the time the loop spent "
        "waiting for data\n(here the loop trains nothing, so it does little else).\n"
        "Sent with log_metrics(run, loader_metrics(stats) | column_statistics(...)) "
        f"to W&B offline:\n{lake.render(shown)}\n"
        f"Recorded on run {run.run_id[:8]} in the catalog as metrics.loader_epochs.\n"
        f"Offline run: {run_dir} (upload later with `wandb sync`)."
    )
    return Section(
        "Loader metrics to W&B (offline)",
        text,
        {
            "stats": stats,
            "rows": stats.rows,
            "batches": stats.batches,
            "rows_per_s": stats.rows_per_second,
            "wait_seconds": stats.wait_seconds,
            "logged": {**loader, **data},
            "run_metrics": run_metrics,
            "recorded_run": recorded,
            "histogram": dict(zip(words.tolist(), counts.tolist(), strict=True)),
            "run_dir": run_dir,
            "summary": summary,
        },
    )


def _without_arbitrary_tops(report: QualityReport) -> QualityReport:
    """``report`` less the top values of columns where no value repeats: approx_top_k names some
    three of them, not the same three twice, and a rerun must print the same figures."""
    columns = [
        column.model_copy(update={"top_values": []})
        if column.top_values and column.top_values[0].count == 1
        else column
        for column in report.columns
    ]
    return report.model_copy(update={"columns": columns})


def _plain(value: Any) -> Any:
    """A W&B summary value (nested summary dicts included) as plain Python data."""
    # Looked up on the type: a summary dict answers unknown attributes with KeyError.
    if callable(getattr(type(value), "keys", None)):
        return {str(k): _plain(value[k]) for k in value.keys()}  # noqa: SIM118 (no __iter__)
    return value


def quality_section(lake: Lakehouse, run: Run) -> Section:
    """A one-pass profile of the run's pinned table: nulls, distinct values, lengths, the
    duplicates of its key and the checks it is expected to pass."""
    report = profile(lake.pinned(run), key="imgid", checks=QUALITY_CHECKS, **lake.s3_keywords)
    html_report: Path | None = None
    if importlib.util.find_spec("matplotlib") is not None:  # the histogram pictures need it
        html_report = lake.settings.directory / "quality" / f"{CAPTIONS_TABLE}.html"
        html_report.parent.mkdir(parents=True, exist_ok=True)
        html_report.write_text(render_html(report), encoding="utf-8")
    where = (
        f"HTML report with histograms: {html_report}"
        if html_report is not None
        else "(install 'duckstream[quality]' for an HTML report with histograms)"
    )
    text = (
        f"profile(catalog.table({CAPTIONS_TABLE!r}, version=...), key='imgid', checks=[...]):\n"
        f"{render_text(_without_arbitrary_tops(report))}\n"
        "(Top values are left out where no value repeats: any three would do, and approx_top_k\n"
        f"names other ones each time.)\n\n{where}"
    )
    return Section("Quality profile of the pinned lake table", text, {"report": report, "html": html_report})
