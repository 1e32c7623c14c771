"""as_iterable_dataset: a real datasets.IterableDataset with exact shares for nodes and workers."""

from __future__ import annotations

import shutil
from collections import Counter
from itertools import pairwise
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets.distributed import split_dataset_by_node

from duckstream.errors import SourceError
from duckstream.stream import as_iterable_dataset

ROWS = 1_001


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COCO Karpathy-shaped rows in three files of uneven size."""
    directory = tmp_path_factory.mktemp("hf-stream")
    bounds = [0, 300, 700, ROWS]
    for index, (lo, hi) in enumerate(pairwise(bounds)):
        ids = list(range(lo, hi))
        table = pa.table(
            {
                "imgid": pa.array(ids, pa.int64()),
                "sentids": pa.array([[5 * i + k for k in range(5)] for i in ids], pa.list_(pa.int64())),
                "sentences": pa.array([[f"caption {k} of {i}" for k in range(5)] for i in ids]),
                "split": pa.array(["train" if i % 4 else "val" for i in ids]),
            }
        )
        pq.write_table(table, directory / f"part-{index}.parquet", row_group_size=128)
    return directory


def ids(dataset: object) -> list[int]:
    return [row["imgid"] for row in dataset]  # type: ignore[attr-defined]


def test_it_is_a_real_iterable_dataset_with_declared_features(captions: Path) -> None:
    dataset = as_iterable_dataset(captions, "SELECT imgid, sentids, sentences FROM source")
    assert isinstance(dataset, datasets.IterableDataset)
    assert dataset.features == datasets.Features(
        {
            "imgid": datasets.Value("int64"),
            "sentids": datasets.List(datasets.Value("int64")),
            "sentences": datasets.List(datasets.Value("string")),
        }
    )
    assert ids(dataset) == list(range(ROWS))  # unshuffled: storage order


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_split_dataset_by_node_gives_exact_disjoint_shares(captions: Path, world_size: int) -> None:
    dataset = as_iterable_dataset(captions, shuffle=True, seed=1)
    shares = [ids(split_dataset_by_node(dataset, rank=r, world_size=world_size)) for r in range(world_size)]
    assert Counter(i for share in shares for i in share) == Counter(range(ROWS))
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_each_node_reads_one_run_of_rows_never_one_row_in_n(captions: Path, world_size: int) -> None:
    # Unshuffled, each node's share is one run of rows in storage order, the nodes' runs one
    # after another; datasets' own fallback reads everything and keeps every N-th row.
    dataset = as_iterable_dataset(captions)
    shares = [ids(split_dataset_by_node(dataset, rank=r, world_size=world_size)) for r in range(world_size)]
    assert [i for share in shares for i in share] == list(range(ROWS))


@pytest.mark.parametrize(("rank", "absent"), [(0, "part-2.parquet"), (2, "part-0.parquet")])
def test_a_node_opens_only_the_files_of_its_share(
    captions: Path, tmp_path: Path, rank: int, absent: str
) -> None:
    # Of three nodes, the first reads rows 0..333 (files 0 and 1), the last 668..1000 (files 1
    # and 2): each reads its share with the other end's file gone, which the whole source needs.
    copied = tmp_path / "copied"
    shutil.copytree(captions, copied)
    dataset = as_iterable_dataset(copied)
    (copied / absent).unlink()
    share = split_dataset_by_node(dataset, rank=rank, world_size=3)
    assert ids(share) == list(range(334 * rank, min(ROWS, 334 * (rank + 1))))
    with pytest.raises(SourceError, match=absent):
        ids(dataset)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_read_every_row_once(captions: Path, num_workers: int) -> None:
    dataset = as_iterable_dataset(captions, "SELECT imgid FROM source WHERE split = 'train'").with_format(
        "torch"
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=50, num_workers=num_workers)
    seen = [i for batch in loader for i in batch["imgid"].tolist()]
    assert sorted(seen) == [i for i in range(ROWS) if i % 4]


def test_node_and_worker_splits_compose(captions: Path) -> None:
    dataset = as_iterable_dataset(captions, shuffle=True, seed=4)
    seen: Counter[int] = Counter()
    for rank in range(2):
        share = split_dataset_by_node(dataset, rank=rank, world_size=2).with_format("torch")
        loader = torch.utils.data.DataLoader(share, batch_size=64, num_workers=2)
        seen.update(i for batch in loader for i in batch["imgid"].tolist())
    assert seen == Counter(range(ROWS))


def test_set_epoch_reshuffles_deterministically(captions: Path) -> None:
    dataset = as_iterable_dataset(captions, shuffle=True, seed=9)
    first = ids(dataset)
    dataset.set_epoch(1)
    second = ids(dataset)
    again = as_iterable_dataset(captions, shuffle=True, seed=9)
    again.set_epoch(1)
    assert second == ids(again)
    assert first != second
    assert sorted(first) == sorted(second) == list(range(ROWS))


def test_shuffle_map_and_batch_behave_as_in_datasets(captions: Path) -> None:
    dataset = as_iterable_dataset(captions, "SELECT imgid, split FROM source")
    shuffled = ids(dataset.shuffle(seed=3, buffer_size=100))
    assert sorted(shuffled) == list(range(ROWS))
    assert shuffled != list(range(ROWS))
    doubled = [row["twice"] for row in dataset.map(lambda row: {"twice": 2 * row["imgid"]})]
    assert doubled == [2 * i for i in range(ROWS)]
    batches = list(dataset.batch(batch_size=100))
    assert [len(b["imgid"]) for b in batches] == [100] * 10 + [1]


@pytest.mark.parametrize("stop", [1, 500, ROWS - 1])
def test_state_dict_resumes_exactly(captions: Path, stop: int) -> None:
    dataset = as_iterable_dataset(captions, shuffle=True, seed=2)
    full = ids(dataset)
    iterator = iter(dataset)
    head = [next(iterator)["imgid"] for _ in range(stop)]
    state = dataset.state_dict()
    resumed = as_iterable_dataset(captions, shuffle=True, seed=2)
    resumed.load_state_dict(state)
    assert head + ids(resumed) == full
