"""Planning thousands of files shows progress on a terminal, and nothing where stderr is a log."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FILES = 1_000
PLAN = "from duckstream.stream import stream_batches; import sys; stream_batches(sys.argv[1])"


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for index in range(FILES):
        pq.write_table(pa.table({"id": [index]}), folder / f"part-{index:05d}.parquet")
    return folder


def plan_with_stderr(folder: Path, *, terminal: bool) -> str:
    """What planning ``folder`` in a fresh interpreter writes to stderr (a terminal or a pipe)."""
    if not terminal:
        done = subprocess.run(
            [sys.executable, "-c", PLAN, str(folder)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has none, and the bar would be empty).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        process = subprocess.Popen([sys.executable, "-c", PLAN, str(folder)], stderr=follower)
        os.close(follower)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=120) == 0
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_planning_thousands_of_files_shows_progress_on_a_terminal_only(many_files: Path) -> None:
    shown = plan_with_stderr(many_files, terminal=True)
    assert "planning: footers" in shown
    assert f"{FILES}/{FILES}" in shown
    assert plan_with_stderr(many_files, terminal=False) == ""
