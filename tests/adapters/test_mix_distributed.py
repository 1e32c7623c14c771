"""A DuckStreamMix in a real two-process torch.distributed (gloo) run: equal, exact shares."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from duckstream.services import free_port
from tests.adapters.resume_check import lockstep_epochs
from tests.conftest import numbers_table

pytestmark = pytest.mark.slow

ALL_IDS = set(range(240)) | set(range(1000, 1090))


def _rank_main(rank: int, world_size: int, port: int, root: str, out: str, num_workers: int) -> None:
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader, DuckStreamMix

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        sql = "SELECT id, value FROM source"
        mix = DuckStreamMix(
            [
                DuckStreamDataset(f"{root}/table", f"{sql} WHERE id % 3 = 0", batch_size=8, shuffle=True),
                DuckStreamDataset(f"{root}/table", f"{sql} WHERE id % 3 <> 0", batch_size=8, shuffle=True),
                DuckStreamDataset(f"{root}/tier", sql, batch_size=8, shuffle=True),
            ],
            [0.5, 0.3, 0.2],
            seed=3,
        )
        loader = DuckStreamLoader(mix, num_workers=num_workers)
        lockstep_epochs(loader, rank, world_size, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_gloo_ranks_read_every_source_once_per_epoch(tmp_path: Path, num_workers: int) -> None:
    (tmp_path / "table").mkdir()
    (tmp_path / "tier").mkdir()
    pq.write_table(numbers_table(0, 240), tmp_path / "table" / "part-0.parquet", row_group_size=40)
    pq.write_table(numbers_table(1000, 1090), tmp_path / "tier" / "part-0.parquet", row_group_size=30)
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
        union = Counter(per_rank[0] + per_rank[1])
        assert set(union) == ALL_IDS
        assert sum(union.values()) - len(ALL_IDS) <= 3 * 8  # padding only
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    assert ranks[0]["states"] == ranks[1]["states"]  # rank 0's checkpoint resumes every rank
    for rank in ranks:
        assert rank["items"] == [rank["len"], rank["len"]]
