from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from duckstream.benchmarks.shuffle_quality import (
    ShuffleQuality,
    displacement,
    measure,
    neighbours_kept,
    spearman,
    uniform_expectation,
    worst,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# Distinct ids in some order: a permutation of a random set, so not always 0..n-1 (a filter's rows).
epochs = st.lists(st.integers(-(10**12), 10**12), min_size=0, max_size=300, unique=True).flatmap(
    lambda ids: st.permutations(ids)
)


def most_displacement(n: int) -> float:
    # The largest total |position - rank| of n rows is floor(n**2 / 2) (Spearman's footrule).
    return (n * n // 2) / n / ((n * n - 1) / (3 * n))


def test_storage_order_is_perfectly_unshuffled() -> None:
    assert measure(np.arange(1_000)) == ShuffleQuality(
        rows=1_000, spearman=1.0, neighbours_kept=1.0, displacement=0.0
    )


def test_the_reverse_keeps_rank_correlation_and_neighbours_but_moves_rows_furthest() -> None:
    n = 1_000
    quality = measure(np.arange(n)[::-1])

    assert quality.spearman == pytest.approx(1.0)
    assert quality.neighbours_kept == 1.0
    # mean |n - 1 - 2p| = n / 2 for even n, over (n**2 - 1) / (3 n)
    assert quality.displacement == pytest.approx(3 * n * n / (2 * (n * n - 1)))
    assert quality.displacement == pytest.approx(most_displacement(n))


def test_swapping_each_pair_keeps_half_the_neighbours_and_barely_moves_rows() -> None:
    n = 1_000
    ids = np.arange(n).reshape(-1, 2)[:, ::-1].ravel()  # 1, 0, 3, 2, ...

    assert neighbours_kept(ids) == pytest.approx((n // 2) / (n - 1))
    assert displacement(ids) == pytest.approx(1 / ((n * n - 1) / (3 * n)))
    assert spearman(ids) == pytest.approx(1 - 6 * n / (n * (n * n - 1)))


def test_shuffled_blocks_in_storage_order_inside_keep_neighbours_but_not_rank_correlation() -> None:
    # What a shuffled shard order with rows left in file order looks like: |rho| misses it.
    blocks = np.random.default_rng(0).permutation(100)
    ids = (blocks[:, None] * 100 + np.arange(100)).ravel()
    quality = measure(ids)

    assert quality.spearman < 0.3
    assert quality.neighbours_kept >= 0.99 * 99 * 100 / (len(ids) - 1)
    assert quality.displacement > 0.8


def test_a_seeded_uniform_permutation_gives_the_uniform_figures() -> None:
    n = 100_000
    ids = np.random.default_rng(12345).permutation(n)
    quality = measure(ids)
    expected = uniform_expectation(n)

    # rho is about normal with standard deviation 1 / sqrt(n - 1) = 0.0032: 5 of those.
    assert quality.spearman < 5 / math.sqrt(n - 1)
    # Adjacent pairs kept are about Poisson with mean 2.
    assert quality.neighbours_kept * (n - 1) <= 12
    assert quality.displacement == pytest.approx(expected.displacement, abs=0.01)
    assert expected.neighbours_kept == 2 / n


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_uniform_expectations_are_the_averages_over_every_permutation(n: int) -> None:
    every = [measure(np.array(p)) for p in itertools.permutations(range(n))]
    expected = uniform_expectation(n)

    assert np.mean([q.displacement for q in every]) == pytest.approx(expected.displacement)
    assert np.mean([q.neighbours_kept for q in every]) == pytest.approx(expected.neighbours_kept)


def test_rank_correlation_expectation_is_close_for_a_few_hundred_rows() -> None:
    rng = np.random.default_rng(7)
    n = 300
    found = np.mean([spearman(rng.permutation(n)) for _ in range(2_000)])

    assert found == pytest.approx(uniform_expectation(n).spearman, rel=0.05)


def test_fewer_than_two_rows_are_in_storage_order() -> None:
    for ids in ([], [7]):
        assert measure(ids) == ShuffleQuality(
            rows=len(ids), spearman=1.0, neighbours_kept=1.0, displacement=0.0
        )
    assert uniform_expectation(1) == measure([7])


def test_repeated_ids_count_as_rows_ranked_in_the_order_received() -> None:
    # A padded epoch repeats a row: the copies are storage-adjacent to each other.
    assert measure([0, 1, 2, 0]) == measure([0, 2, 3, 1])


def test_rejects_anything_but_a_flat_sequence() -> None:
    with pytest.raises(ValueError, match="1-D"):
        measure(np.arange(6).reshape(2, 3))


def test_worst_takes_each_figure_at_its_least_shuffled() -> None:
    a = ShuffleQuality(rows=10, spearman=0.1, neighbours_kept=0.5, displacement=0.9)
    b = ShuffleQuality(rows=10, spearman=0.3, neighbours_kept=0.2, displacement=0.95)

    assert worst([a, b]) == ShuffleQuality(rows=10, spearman=0.3, neighbours_kept=0.5, displacement=0.9)
    assert worst([]) is None


@settings(max_examples=200, deadline=None)
@given(epochs)
def test_figures_stay_within_their_bounds(ids: list[int]) -> None:
    quality = measure(ids)

    assert 0.0 <= quality.spearman <= 1.0
    assert 0.0 <= quality.neighbours_kept <= 1.0
    assert 0.0 <= quality.displacement <= (most_displacement(len(ids)) if len(ids) > 1 else 0.0) + 1e-12
    assert quality == ShuffleQuality(
        rows=len(ids),
        spearman=spearman(ids),
        neighbours_kept=neighbours_kept(ids),
        displacement=displacement(ids),
    )


@settings(max_examples=200, deadline=None)
@given(epochs)
def test_reading_the_epoch_backwards_keeps_rank_correlation_and_neighbours(ids: list[int]) -> None:
    backwards = ids[::-1]

    assert spearman(backwards) == pytest.approx(spearman(ids), abs=1e-12)
    assert neighbours_kept(backwards) == neighbours_kept(ids)


@settings(max_examples=200, deadline=None)
@given(epochs, st.integers(1, 1_000), st.integers(-(10**6), 10**6))
def test_only_the_ranks_of_the_ids_count(ids: list[int], scale: int, shift: int) -> None:
    # The even ids a filter keeps are judged as their ranks, like 0..n-1.
    assert measure([i * scale + shift for i in ids]) == measure(ids)


@settings(max_examples=200, deadline=None)
@given(epochs)
def test_figures_agree_with_their_definitions_computed_the_slow_way(ids: list[int]) -> None:
    n = len(ids)
    rank = {value: r for r, value in enumerate(sorted(ids))}
    ranks = [rank[value] for value in ids]
    position = {r: p for p, r in enumerate(ranks)}
    if n >= 2:
        rho = np.corrcoef(np.arange(n), ranks)[0, 1]
        kept = sum(abs(position[r] - position[r + 1]) == 1 for r in range(n - 1)) / (n - 1)
        moved = sum(abs(p - r) for p, r in enumerate(ranks)) / n / ((n * n - 1) / (3 * n))
    else:
        rho, kept, moved = 1.0, 1.0, 0.0

    assert spearman(ids) == pytest.approx(abs(rho), abs=1e-9)
    assert neighbours_kept(ids) == pytest.approx(kept)
    assert displacement(ids) == pytest.approx(moved)
