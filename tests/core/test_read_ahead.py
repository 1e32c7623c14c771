"""Reading ahead in a thread: same items, same order, bounded, errors raised where they happened."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.read_ahead import read_ahead_each


def read_ahead(items: Iterable[int], depth: int) -> Generator[int, None, None]:
    """One source, in one lane."""
    return read_ahead_each([lambda lane: items], lanes=1, depth=depth)


def alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "duckstream-read-ahead"]


@settings(max_examples=50, deadline=None)
@given(items=st.lists(st.integers()), depth=st.integers(1, 5))
def test_items_arrive_in_order(items: list[int], depth: int) -> None:
    assert list(read_ahead(items, depth)) == items
    assert not alive()


@pytest.mark.parametrize("depth", [1, 3])
def test_the_producer_runs_exactly_depth_items_ahead(depth: int) -> None:
    produced: list[int] = []
    made = threading.Condition()

    def source() -> Iterator[int]:
        for i in range(20):
            with made:
                produced.append(i)
                made.notify_all()
            yield i

    def produced_at_least(count: int) -> Callable[[], bool]:
        return lambda: len(produced) >= count

    stream = read_ahead(source(), depth)
    for taken in range(1, 6):
        next(stream)
        # The queue fills to `depth` and the producer makes one more it cannot put yet; once it
        # has got that far it waits for the next item to be taken, making nothing more.
        ahead = taken + depth + 1
        with made:
            assert made.wait_for(produced_at_least(ahead), timeout=60)
            assert len(produced) == ahead
    stream.close()


def test_an_error_is_raised_at_the_item_where_it_happened() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad file part-3.parquet")

    stream = read_ahead(source(), 4)
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(ValueError, match=r"part-3\.parquet"):
        next(stream)
    assert not alive()


def test_stopping_early_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1_000)
        finally:
            closed.set()

    stream = read_ahead(source(), 2)
    assert next(stream) == 0
    stream.close()
    assert closed.is_set()
    assert not alive()


@settings(max_examples=40, deadline=None)
@given(
    sources=st.lists(st.lists(st.integers(), max_size=6), max_size=6),
    lanes=st.integers(1, 4),
    depth=st.integers(1, 3),
)
def test_sources_arrive_whole_and_in_order(sources: list[list[int]], lanes: int, depth: int) -> None:
    active: set[int] = set()
    most = 0
    lock = threading.Lock()

    def source(items: list[int], lane: int) -> Iterator[int]:
        nonlocal most
        with lock:
            assert lane not in active  # sources running at once never share a lane
            active.add(lane)
            most = max(most, len(active))
        try:
            yield from items
        finally:
            with lock:
                active.discard(lane)

    made = [lambda lane, items=items: source(items, lane) for items in sources]
    assert list(read_ahead_each(made, lanes=lanes, depth=depth)) == [i for s in sources for i in s]
    assert most <= lanes
    assert not alive()


def test_an_error_in_a_later_source_comes_after_the_items_before_it() -> None:
    def broken(lane: int) -> Iterator[int]:
        yield 3
        raise OSError("cannot read part-7.parquet")

    stream = read_ahead_each([lambda lane: iter([1, 2]), broken, lambda lane: iter([4])], lanes=3, depth=1)
    assert [next(stream), next(stream), next(stream)] == [1, 2, 3]
    with pytest.raises(OSError, match=r"part-7\.parquet"):
        next(stream)
    assert not alive()


def test_stopping_early_stops_every_lane() -> None:
    stream = read_ahead_each([lambda lane: iter(range(100))] * 5, lanes=3, depth=2)
    assert next(stream) == 0
    assert len(alive()) == 3
    stream.close()
    assert not alive()
