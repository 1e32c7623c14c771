"""The shuffle-quality benchmark over sources of many shapes (benchmarks/layouts.py)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from duckstream.benchmarks.layouts import draw, epoch_ids, main, write
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=50, deadline=None)
@given(index=st.integers(0, 10**6))
def test_a_shape_is_a_pure_function_of_its_number(index: int) -> None:
    shape = draw(index, (1_000, 2_000))
    assert shape == draw(index, (1_000, 2_000))
    assert 1 <= len(shape.files) <= 150
    assert min(shape.files) >= 10
    # Rows are drawn in the range; files of at least 10 rows may add a few.
    assert 1_000 - len(shape.files) <= shape.rows <= 2_000 + 10 * len(shape.files)
    assert shape.world_size in (1, 2, 4, 8)
    assert shape.workers in (0, 1, 2)


@pytest.mark.parametrize("read", ["plain", "filter", "expression"])
def test_every_rank_receives_its_rows_once_and_a_wrong_shape_is_caught(tmp_path: Path, read: str) -> None:
    shape = replace(draw(3, (1_000, 2_000)), world_size=2, workers=0, buffer=200)
    source = write(shape, tmp_path / "source")
    per_rank = epoch_ids(source, shape, seed=0, cache_dir=tmp_path / "cache", read=read)
    assert len(per_rank) == 2
    assert len(per_rank[0]) == len(per_rank[1])
    kept = [i for i in range(shape.rows) if read != "filter" or i % 10]
    assert sorted({int(i) for ids in per_rank for i in ids}) == kept
    # The same files judged against a shape of two more rows (one of them kept by the
    # filter, which drops every tenth): the check fails.
    longer = replace(shape, files=(*shape.files[:-1], shape.files[-1] + 2))
    with pytest.raises(AssertionError, match="every row"):
        epoch_ids(source, longer, seed=0, cache_dir=tmp_path / "cache", read=read)


def test_the_command_prints_each_shape_and_the_summary(tmp_path: Path) -> None:
    out = io.StringIO()
    figures = tmp_path / "layouts.json"
    argv = ["--first", "7", "--layouts", "2", "--seeds", "1", "--rows", "1000,1500", "--json", str(figures)]
    argv += ["--read", "filter"]
    assert main([*argv, "--dir", str(tmp_path / "work")], out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[2].rstrip(":") for line in lines[:2]] == ["7", "8"]
    assert "of 2 shapes meet the goal" in lines[-1]
    written = json.loads(figures.read_text())
    assert [entry["shape"]["index"] for entry in written] == [7, 8]
    assert all(0 <= entry["median"] <= entry["p90"] <= entry["most"] <= 1 for entry in written)
    # Sources and caches are removed after each shape.
    assert list((tmp_path / "work").iterdir()) == []


def test_the_command_reads_every_shape_with_the_workers_given(tmp_path: Path) -> None:
    # Shapes draw 0-2 workers a rank; the goal holds up to 4.
    out = io.StringIO()
    figures = tmp_path / "layouts.json"
    argv = ["--first", "3", "--layouts", "1", "--seeds", "1", "--rows", "1000,1500", "--workers", "4"]
    assert main([*argv, "--json", str(figures), "--dir", str(tmp_path / "work")], out) == 0
    assert "4 worker(s)" in out.getvalue().splitlines()[0]
    assert json.loads(figures.read_text())[0]["shape"]["workers"] == 4
