"""Under torch.distributed (real gloo processes) one rank plans and every rank gets its plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from duckstream.services import free_port
from tests.conftest import numbers_table

pytestmark = pytest.mark.slow

WORLD = 3


def _rank_main(rank: int, world_size: int, port: int, source: str, out: str) -> None:
    from duckstream.core import planning
    from duckstream.core.source import read_metadata
    from duckstream.errors import QueryError
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    footers_read: list[int] = []

    def counted(files: Any, *args: Any, **kwargs: Any) -> Any:
        footers_read.append(len(files))
        return read_metadata(files, *args, **kwargs)

    vars(planning)["read_metadata"] = counted  # counts this process's footer reads, reads them for real
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dataset = DuckStreamDataset(source, "SELECT id FROM source WHERE id % 2 = 0", batch_size=16)
        ids = [i for batch in DuckStreamLoader(dataset) for i in batch["id"].tolist()]
        try:
            DuckStreamDataset(source, "SELECT no_such_column FROM source")
            refused = ""
        except QueryError as exc:
            refused = type(exc).__name__
        report = {
            "footers": footers_read,
            "fingerprint": dataset.plan.fingerprint,
            "s3_key": dataset.plan.s3.access_key,
            "ids": ids,
            "refused": refused,
        }
        gathered: list[object] = [None] * world_size
        dist.all_gather_object(gathered, report)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_one_rank_plans_and_every_rank_reads_its_share_of_that_plan(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for index, (lo, hi) in enumerate([(0, 300), (300, 601), (601, 700)]):
        pq.write_table(numbers_table(lo, hi), data / f"part-{index}.parquet", row_group_size=50)
    out = tmp_path / "result.json"
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _rank_main, args=(WORLD, free_port(), str(data), str(out)), nprocs=WORLD, join=True
    )
    ranks = json.loads(out.read_text())
    assert ranks[0]["footers"] == [3, 3]  # rank 0 planned each dataset, once
    assert all(r["footers"] == [] for r in ranks[1:])  # the others read no footer
    assert len({r["fingerprint"] for r in ranks}) == 1
    ids = [i for r in ranks for i in r["ids"]]
    assert set(ids) == set(range(0, 700, 2))
    assert len({len(r["ids"]) for r in ranks}) == 1
    # A query rank 0 cannot plan fails on every rank, none waits for a plan.
    assert [r["refused"] for r in ranks] == ["QueryError"] * WORLD
