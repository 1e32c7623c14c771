"""The walkthrough: the demo's caption dataset through every section, in order, on one lakehouse.

The sections live beside this module: ``data`` (ingest, the run record, OLAP queries),
``streams`` (PyTorch, Hugging Face and Arrow streams), ``reports`` (metrics and quality),
``patterns`` (the lakehouse patterns) and ``tiers`` (streamable tiers); ``frame`` holds what
they share. ``duckstream demo`` runs :func:`run_walkthrough`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from duckstream._optional import require
from duckstream.demo.captions import save_caption_dataset
from duckstream.demo.frame import Lakehouse, Section, WalkthroughSettings, render_section
from duckstream.errors import ConfigurationError

__all__ = ["run_demo", "run_walkthrough"]


def _prepare_dataset(settings: WalkthroughSettings) -> None:
    """Save the walkthrough's dataset once; a folder made with other parameters is refused."""
    wanted = {"images": settings.images, "seed": settings.seed}
    marker = settings.directory / "walkthrough.json"
    if marker.is_file():
        made = json.loads(marker.read_text())
        if made != wanted:
            raise ConfigurationError(
                f"{settings.directory} holds a walkthrough made with {made}, not {wanted}: "
                "use another folder, or remove this one"
            )
    if not (settings.hf_dataset / "dataset_dict.json").is_file():
        save_caption_dataset(settings.hf_dataset, images=settings.images, seed=settings.seed)
    marker.write_text(json.dumps(wanted))


def run_walkthrough(settings: WalkthroughSettings, *, echo: Callable[[str], None] = print) -> list[Section]:
    """Run every walkthrough section in order, printing each as it finishes; return them all.

    When the PostgreSQL catalog does not answer, the sections that need it are left out (said
    first) and the rest run on the raw Parquet tier.
    """
    from duckstream.demo import data, patterns, reports, streams, tiers

    for stack in ("datasets", "torch", "wandb"):
        require(stack)  # fail now, naming the extra, rather than halfway through
    started = time.perf_counter()
    _prepare_dataset(settings)
    # Each lake table planned from a file catalog leaves a copy of the catalog's metadata here;
    # emptied per run, the cache holds one run's copies instead of growing with every run.
    shutil.rmtree(settings.stream_cache, ignore_errors=True)
    sections: list[Section] = []

    def show(section: Section) -> Section:
        sections.append(section)
        echo(render_section(len(sections), section))
        return section

    with Lakehouse(settings) as lake:
        if lake.catalog_problem is not None:
            echo(
                f"\nNo catalog: {lake.catalog_problem}.\nThe sections that record runs or read snapshots "
                "are left out;\nthe others run on the raw Parquet tier (pattern 7's tiers stream, "
                "their runs unrecorded)."
            )
        ingested = show(data.ingest_section(lake)).facts["results"]
        raw_files = [f for result in ingested.values() for f in result.files]
        run = show(data.register_section(lake)).facts["run"] if lake.catalog is not None else None
        if run is not None:
            show(data.schema_section(lake, run))
        show(data.caption_length_section(lake))
        show(data.caption_chars_section(lake))
        show(data.captions_per_image_section(lake))
        show(data.top_words_section(lake))
        source = streams.training_source(lake, run, raw_files)
        show(streams.stream_rows_section(lake, source))
        show(streams.hf_stream_section(lake, source))
        show(streams.shuffle_section(lake, source))
        show(streams.reshuffle_section(lake, source))
        if run is not None:
            metrics = show(reports.wandb_metrics_section(lake, run, settings.directory / "wandb")).facts
            show(reports.quality_section(lake, run))
            final = {**metrics["run_metrics"], "epoch_rows_per_s": round(metrics["rows_per_s"], 1)}
            show(data.complete_run_section(lake, run, final))
            show(patterns.schema_evolution_section(lake))
            show(patterns.time_travel_section(lake, run))
            show(patterns.cross_plane_join_section(lake, run))
        show(patterns.pushdown_section(lake, raw_files))
        show(patterns.idempotent_ingest_section(lake))
        show(patterns.analytics_section(lake))
        show(tiers.tiers_section(lake, source))
        show(patterns.lakehouse_patterns_section(lake, sections))
    echo(f"\nThe walkthrough ran {len(sections)} sections in {time.perf_counter() - started:.1f} s.")
    return sections


def run_demo(
    directory: str | Path,
    *,
    images: int = 2_000,
    echo: Callable[[str], None] = print,
    **lakehouse: Any,
) -> list[Section]:
    """The walkthrough under ``directory`` (embedded default), or on the lakehouse ``lakehouse``
    names (``catalog=``, ``bucket=``, ``prefix=``, S3 keywords: see :class:`WalkthroughSettings`)."""
    return run_walkthrough(WalkthroughSettings(Path(directory), images=images, **lakehouse), echo=echo)
