"""A real two-process torch.distributed (gloo) run: each rank its exact, equal share."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from duckstream.services import free_port
from tests.adapters.resume_check import lockstep_epochs
from tests.conftest import numbers_table

pytestmark = pytest.mark.slow

ROWS = 1_001  # odd: the two ranks need one row of padding


def _rank_main(rank: int, world_size: int, port: int, source: str, out: str, num_workers: int) -> None:
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dataset = DuckStreamDataset(source, batch_size=32, shuffle=True, seed=11)
        loader = DuckStreamLoader(dataset, num_workers=num_workers)
        lockstep_epochs(loader, rank, world_size, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_gloo_ranks_read_every_row_once_per_epoch(tmp_path: Path, num_workers: int) -> None:
    for index, (lo, hi) in enumerate([(0, 400), (400, 1_001)]):
        pq.write_table(numbers_table(lo, hi), tmp_path / f"part-{index}.parquet", row_group_size=100)
    out = tmp_path / "result.json"
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _rank_main,
        args=(2, free_port(), str(tmp_path), str(out), num_workers),
        nprocs=2,
        join=True,
    )
    ranks = json.loads(out.read_text())
    for epoch in range(2):
        per_rank = [r["epochs"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 501
        union = per_rank[0] + per_rank[1]
        assert set(union) == set(range(ROWS))
        assert len(union) - len(set(union)) == 1  # the one padded row
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    assert ranks[0]["states"] == ranks[1]["states"]  # rank 0's checkpoint resumes every rank
    # len() is exactly the items each rank yields: Lightning's progress relies on it
    for rank in ranks:
        assert rank["items"] == [rank["len"], rank["len"]]
