"""The mix schedule and its replay: pure functions, checked as properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.mix import (
    MixSpec,
    MixStage,
    SourceRead,
    draw_schedule,
    interleave_schedule,
    rank_items,
    replay,
    weights_of,
)
from duckstream.core.mix_state import make_mix_state, mix_fingerprint, read_mix_state
from duckstream.core.ranges import length
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, StateError

counts_st = st.lists(st.integers(0, 300), min_size=1, max_size=4)
weights_st = st.lists(st.floats(0.05, 5.0), min_size=4, max_size=4)
key_st = st.tuples(st.integers(0, 2**20), st.integers(0, 50))


@settings(max_examples=60, deadline=None)
@given(counts_st, weights_st, key_st)
def test_all_exhausted_holds_each_source_exactly_its_count(counts, weights, key) -> None:
    weights = weights[: len(counts)]
    schedule = interleave_schedule(counts, weights, key, "all_exhausted")
    assert np.bincount(schedule, minlength=len(counts)).tolist() == counts
    again = interleave_schedule(counts, weights, key, "all_exhausted")
    assert np.array_equal(schedule, again)  # same inputs, same schedule


@settings(max_examples=60, deadline=None)
@given(counts_st, weights_st, key_st)
def test_first_exhausted_is_the_prefix_up_to_the_first_source_to_run_out(counts, weights, key) -> None:
    weights = weights[: len(counts)]
    full = interleave_schedule(counts, weights, key, "all_exhausted")
    first = interleave_schedule(counts, weights, key, "first_exhausted")
    assert np.array_equal(first, full[: len(first)])
    given_ = np.bincount(first, minlength=len(counts))
    if 0 in counts:
        assert len(first) == 0
    else:
        ran_out = [s for s in range(len(counts)) if given_[s] == counts[s]]
        assert len(ran_out) >= 1  # some source is exhausted...
        assert full[len(first) - 1] in ran_out  # ...by the very last item taken


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.05, 1.0), min_size=2, max_size=4), st.integers(0, 2**20))
def test_draws_follow_the_weights_within_sampling_error(raw, seed) -> None:
    weights = weights_of(raw, [1] * len(raw))
    n = 20_000
    drawn = np.bincount(draw_schedule(n, weights, (seed, 0)), minlength=len(weights)) / n
    for p, found in zip(weights, drawn, strict=True):
        assert abs(found - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9


@settings(max_examples=20, deadline=None)
@given(st.floats(0.1, 0.9), st.integers(0, 2**20))
def test_interleaving_follows_the_weights_until_a_source_runs_out(share, seed) -> None:
    weights = (share, 1 - share)
    schedule = interleave_schedule([10_000, 10_000], weights, (seed, 1), "first_exhausted")
    head = schedule[: len(schedule) // 2]
    found = float(np.mean(head == 0))
    n = len(head)
    assert abs(found - share) <= 6 * math.sqrt(share * (1 - share) / n) + 0.01


def test_weights_are_validated_and_default_to_rows() -> None:
    assert weights_of(None, [30, 10]) == (0.75, 0.25)
    with pytest.raises(ConfigurationError, match="positive"):
        weights_of([1.0, 0.0], [1, 1])
    with pytest.raises(ConfigurationError, match="expected 2 weights"):
        weights_of([1.0], [1, 1])


def _spec(rows, *, stopping="all_exhausted", num_items=None, even="pad", batch=1, shuffle=True) -> MixSpec:
    sources = tuple(SourceRead(r, batch, False, 7, 1, 3, shuffle, even) for r in rows)
    return MixSpec(sources, weights_of(None, rows), 5, stopping, num_items)


setups = st.tuples(st.integers(1, 3), st.integers(1, 3))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=3),
    setups,
    st.sampled_from(["all_exhausted", "first_exhausted"]),
    st.sampled_from(["pad", "drop"]),
    st.integers(1, 3),
)
def test_every_rank_yields_as_many_items(rows, setup, stopping, even, batch) -> None:
    spec = _spec(rows, stopping=stopping, even=even, batch=batch)
    world_size, workers = setup
    found = {rank_items(spec, 2, [], World(r, world_size, 0, workers)) for r in range(world_size)}
    assert len(found) == 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(0, 40)), max_size=3),
    st.booleans(),
)
def test_replay_owes_every_row_not_taken(rows, stages, shuffle) -> None:
    # Rows-as-items, no padding (drop): owed + taken is every row, stage after stage.
    spec = _spec(rows, even="drop", shuffle=shuffle)
    mix_stages = []
    for world_size, workers, consumed in stages:
        mix_stages.append(MixStage(world_size, workers, consumed))
        state = replay(spec, 0, mix_stages)
        for source, total in enumerate(rows):
            owed = length(state.sequences[source])
            assert owed + state.taken[source] <= total
            assert owed >= 0


def test_num_items_owes_what_is_left_of_the_epoch() -> None:
    spec = _spec([10, 20], num_items=100)
    state = replay(spec, 0, [MixStage(2, 2, 10), MixStage(3, 1, 5)])
    assert state.owed == 100 - 20 - 15
    assert sum(state.taken) == 35
    assert rank_items(spec, 0, [], World(0, 3, 0, 2)) == 34  # ceil(100 / 3)


def test_state_round_trips_and_is_refused_for_another_mix() -> None:
    spec = _spec([10, 20])
    fingerprint = mix_fingerprint(spec, ["a", "b"])
    stages = [MixStage(2, 2, 3)]
    state = make_mix_state(fingerprint=fingerprint, seed=5, epoch=4, stages=stages, sources=["a", "b"])
    assert read_mix_state(state, fingerprint=fingerprint, seed=5, sources=["a", "b"]) == (4, stages)
    other = mix_fingerprint(MixSpec(spec.sources, (0.5, 0.5), 5), ["a", "b"])
    with pytest.raises(StateError, match="weights"):
        read_mix_state(state, fingerprint=other, seed=5, sources=["a", "b"])
    with pytest.raises(StateError, match="source 1 changed"):
        read_mix_state(state, fingerprint=fingerprint, seed=5, sources=["a", "c"])
    with pytest.raises(StateError, match="single dataset"):
        read_mix_state({"version": 1}, fingerprint=fingerprint, seed=5, sources=["a", "b"])
    damaged = {**state, "stages": [{"world_size": 0, "num_workers": 1, "consumed": 1, "chunk": 1}]}
    with pytest.raises(StateError, match="world_size"):
        read_mix_state(damaged, fingerprint=fingerprint, seed=5, sources=["a", "b"])
    # Saved mid-epoch by a build that read in another order (no revision: 1): refused; at an
    # epoch's end it resumes.
    earlier = {k: v for k, v in state.items() if k != "order"}
    with pytest.raises(StateError, match="read order revision 1"):
        read_mix_state(earlier, fingerprint=fingerprint, seed=5, sources=["a", "b"])
    at_end = {**earlier, "stages": []}
    assert read_mix_state(at_end, fingerprint=fingerprint, seed=5, sources=["a", "b"]) == (4, [])
    in_order = read_mix_state(earlier, fingerprint=fingerprint, seed=5, sources=["a", "b"], shuffled=False)
    assert in_order == (4, stages)
