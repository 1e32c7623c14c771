"""Data quality: one-pass profiles and checks, a read-only SQL session, and an agent that reads.

``quality_agent`` needs pydantic-ai (``pip install 'duckstream[agent]'``); it is imported on first
use, so profiling works without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from duckstream.quality.checks import Check
from duckstream.quality.profiling import profile
from duckstream.quality.report import CheckResult, ColumnProfile, QualityReport

__all__ = [
    "Check",
    "CheckResult",
    "ColumnProfile",
    "LakehouseDeps",
    "QualityReport",
    "profile",
    "quality_agent",
]

# Names whose modules are imported on first use.
_LAZY: dict[str, str] = {
    "LakehouseDeps": "duckstream.quality.deps",
    "quality_agent": "duckstream.quality.agent",
}

if TYPE_CHECKING:
    from duckstream.quality.agent import quality_agent as quality_agent
    from duckstream.quality.deps import LakehouseDeps as LakehouseDeps


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'duckstream.quality' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
