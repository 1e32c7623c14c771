"""Profiling a large source shows progress on a terminal, and nothing where stderr is a log."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.quality.profiling import PROGRESS_ROWS
from tests.terminal import stderr_of

PROFILE = "from duckstream.quality import profile; import sys; profile(sys.argv[1])"


def write_rows(path: Path, rows: int) -> Path:
    ids = pa.array(range(rows), pa.int64())
    pq.write_table(pa.table({"id": ids, "split": pa.array(["train", "val"] * (rows // 2))}), path)
    return path


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("large") / "large.parquet", PROGRESS_ROWS)


@pytest.mark.slow
def test_profiling_a_large_source_shows_progress_on_a_terminal_only(large: Path) -> None:
    argv = [sys.executable, "-c", PROFILE, str(large)]
    shown = stderr_of(argv, terminal=True)
    assert "profiling: statistics" in shown
    assert "profiling: exact counts" in shown  # a million rows are counted exactly by default
    assert "100%" in shown
    assert stderr_of(argv, terminal=False) == ""


@pytest.mark.slow
def test_the_command_shows_it_too_and_a_small_source_shows_none(large: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "duckstream.cli", "profile"]
    assert "profiling: statistics" in stderr_of([*command, str(large)], terminal=True)
    small = write_rows(tmp_path / "small.parquet", 1_000)
    assert stderr_of([*command, str(small)], terminal=True) == ""
