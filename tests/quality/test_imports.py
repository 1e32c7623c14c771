"""Profiling needs neither pydantic-ai nor matplotlib: they load only with the agent and the pictures."""

from __future__ import annotations

import subprocess
import sys

import pytest

import duckstream.quality


def test_profiling_and_deps_import_no_optional_stack() -> None:
    code = (
        "import sys; from duckstream.quality import profile, QualityReport, LakehouseDeps; "
        "import duckstream.quality.render; "
        "print(sorted({'pydantic_ai', 'matplotlib', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_agent_loads_pydantic_ai() -> None:
    code = "import sys; from duckstream.quality import quality_agent; print('pydantic_ai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_unknown_names() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = duckstream.quality.nope
