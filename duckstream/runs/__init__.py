"""Training runs in the lakehouse: what a run records, how a loop records it, and what it measures.

``records`` holds the ``experiments`` and ``simulation_runs`` tables that
:class:`~duckstream.catalog.LakehouseCatalog` writes; ``tracking`` the :class:`RunTracker` that
records a run from a plain loop (and for the Lightning callback) through catalog outages;
``loader_stats`` the rows, batches and waiting time of a pass over a loader; ``metrics`` those
statistics, and column statistics, for Weights & Biases. Names are imported lazily: ``records``
sits below the catalog and ``tracking`` above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "EpochStats": "duckstream.runs.loader_stats",
    "Experiment": "duckstream.runs.records",
    "LoaderMeter": "duckstream.runs.loader_stats",
    "Run": "duckstream.runs.records",
    "RunTracker": "duckstream.runs.tracking",
    "column_statistics": "duckstream.runs.metrics",
    "loader_metrics": "duckstream.runs.metrics",
    "log_metrics": "duckstream.runs.metrics",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from duckstream.runs.loader_stats import EpochStats as EpochStats
    from duckstream.runs.loader_stats import LoaderMeter as LoaderMeter
    from duckstream.runs.metrics import column_statistics as column_statistics
    from duckstream.runs.metrics import loader_metrics as loader_metrics
    from duckstream.runs.metrics import log_metrics as log_metrics
    from duckstream.runs.records import Experiment as Experiment
    from duckstream.runs.records import Run as Run
    from duckstream.runs.tracking import RunTracker as RunTracker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'duckstream.runs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
