"""The planning scale simulation: small sizes, every check passing, the figures written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from duckstream.benchmarks.scale import ScaleConfig, main

from duckstream.cli import main as cli_main
from duckstream.errors import ConfigurationError


def test_scale_simulation_verifies_and_writes_its_figures(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "scale.json"
    code = main(["--files", "10000", "--ranks", "64", "--workers", "4", "--json", str(path)], out=out)
    figures = json.loads(path.read_text())
    assert code == 0, out.getvalue()
    assert figures["verified"] is True
    assert all(figures["checks"].values())
    assert (figures["files"], figures["ranks"], figures["workers"]) == (10_000, 64, 4)
    assert figures["share_seconds"] > 0
    assert figures["share_peak_bytes"] > 0
    assert figures["plan_bytes"] > 0
    assert "verified: True" in out.getvalue()


def test_bench_scale_sim_runs_the_simulation(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "scale.json"
    argv = ["bench", "--scale-sim", "--files", "200", "--ranks", "4", "--workers", "2", "--json", str(path)]
    assert cli_main(argv, out=out) == 0, out.getvalue()
    figures = json.loads(path.read_text())
    assert figures["verified"] is True
    assert (figures["files"], figures["ranks"], figures["workers"]) == (200, 4, 2)


def test_scale_simulation_needs_a_worker() -> None:
    with pytest.raises(ConfigurationError, match="workers=0"):
        ScaleConfig(files=10, ranks=2, workers=0)
