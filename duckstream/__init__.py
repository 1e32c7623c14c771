"""duckstream: stream lakehouse data (Parquet, DuckLake) into training loops.

Public names are imported lazily, so ``import duckstream`` stays light (no torch, no DuckDB
until a name is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DuckStreamDataset": "duckstream.stream",
    "DuckStreamLoader": "duckstream.stream",
    "DuckStreamMix": "duckstream.stream",
    "LakeTable": "duckstream.core.lake",
    "LakehouseCatalog": "duckstream.catalog",
    "LakehouseQuery": "duckstream.query",
    "as_iterable_dataset": "duckstream.stream",
    "profile": "duckstream.quality",
    "stream_batches": "duckstream.stream",
    "sync_from_hf": "duckstream.sync",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from duckstream.catalog import LakehouseCatalog as LakehouseCatalog
    from duckstream.core.lake import LakeTable as LakeTable
    from duckstream.quality import profile as profile
    from duckstream.query import LakehouseQuery as LakehouseQuery
    from duckstream.stream import DuckStreamDataset as DuckStreamDataset
    from duckstream.stream import DuckStreamLoader as DuckStreamLoader
    from duckstream.stream import DuckStreamMix as DuckStreamMix
    from duckstream.stream import as_iterable_dataset as as_iterable_dataset
    from duckstream.stream import stream_batches as stream_batches
    from duckstream.sync import sync_from_hf as sync_from_hf


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'duckstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
