"""The readers' thread count: the readers of one node share its cores without oversubscribing them."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream._environ import environment
from duckstream.core.reader import default_threads

CORES = os.cpu_count() or 1


@settings(max_examples=200, deadline=None)
@given(readers=st.integers(0, 64), ranks_here=st.integers(1, 16))
def test_the_readers_of_a_node_hold_no_more_threads_than_its_cores(readers: int, ranks_here: int) -> None:
    # `readers` DataLoader workers (0: reading in-process) on each of `ranks_here` ranks of a node.
    with environment({"LOCAL_WORLD_SIZE": str(ranks_here)}):
        threads = default_threads(readers)
    slots = max(1, readers) * ranks_here
    assert threads >= 1
    if slots <= CORES:
        assert threads * slots <= CORES, "the readers oversubscribe the cores"
        assert (threads + 1) * slots > CORES, "cores are left idle that a thread more would use"
    else:
        assert threads == 1


def test_one_reader_alone_on_a_node_gets_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads(1) == CORES
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")  # not a number: one rank
    assert default_threads(1) == CORES
