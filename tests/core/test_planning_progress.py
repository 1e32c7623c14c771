"""Planning thousands of files shows progress on a terminal, and nothing where stderr is a log."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.terminal import stderr_of

FILES = 1_000
PLAN = "from duckstream.stream import stream_batches; import sys; stream_batches(sys.argv[1])"


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for index in range(FILES):
        pq.write_table(pa.table({"id": [index]}), folder / f"part-{index:05d}.parquet")
    return folder


@pytest.mark.slow
def test_planning_thousands_of_files_shows_progress_on_a_terminal_only(many_files: Path) -> None:
    argv = [sys.executable, "-c", PLAN, str(many_files)]
    shown = stderr_of(argv, terminal=True)
    assert "planning: footers" in shown
    assert f"{FILES}/{FILES}" in shown
    assert stderr_of(argv, terminal=False) == ""
