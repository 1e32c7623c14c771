"""A DuckStreamMix through as_iterable_dataset: a real datasets.IterableDataset of rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from duckstream.stream import DuckStreamMix, as_iterable_dataset
from tests.adapters.test_mix import ALL_IDS, mixer, sources

__all__ = ["sources"]  # the fixture, used here


def make(paths: tuple[Path, Path]) -> IterableDataset:
    mix: DuckStreamMix = mixer(paths, weights=[0.5, 0.3, 0.2])()
    return as_iterable_dataset(mix)


def test_each_source_once_and_features_declared(sources: tuple[Path, Path]) -> None:
    dataset = make(sources)
    assert isinstance(dataset, IterableDataset)
    assert dataset.features is not None
    assert list(dataset.features) == ["id", "value"]
    assert Counter(row["id"] for row in dataset) == Counter(ALL_IDS)


@pytest.mark.parametrize("world_size", [2, 3])
def test_nodes_get_exact_disjoint_shares(sources: tuple[Path, Path], world_size: int) -> None:
    dataset = make(sources)
    shares = [
        [row["id"] for row in split_dataset_by_node(dataset, rank=r, world_size=world_size)]
        for r in range(world_size)
    ]
    assert Counter(i for share in shares for i in share) == Counter(ALL_IDS)


def test_dataloader_workers_read_every_row_once(sources: tuple[Path, Path]) -> None:
    loader = DataLoader(make(sources).with_format("torch"), batch_size=16, num_workers=2)
    seen = [int(i) for batch in loader for i in batch["id"]]
    assert Counter(seen) == Counter(ALL_IDS)


def test_state_resumes_exactly(sources: tuple[Path, Path]) -> None:
    dataset = make(sources)
    taken = []
    for row in dataset:
        taken.append(row["id"])
        if len(taken) == 77:
            break
    state = dataset.state_dict()
    again = make(sources)
    again.load_state_dict(state)
    rest = [row["id"] for row in again]
    assert Counter(taken + rest) == Counter(ALL_IDS)
