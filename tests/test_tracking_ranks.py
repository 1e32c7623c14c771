"""A plain training loop under torch.distributed (real gloo processes): every rank drives a
RunTracker, as the loop's code is the same on every rank, and the job is one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from duckstream.catalog import LakehouseCatalog
from duckstream.services import free_port

pytestmark = pytest.mark.slow

WORLD = 2


def _rank_main(rank: int, world_size: int, port: int, catalog: str, files: str, out: str) -> None:
    from duckstream.runs import RunTracker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        # The catalog is given by path: only the rank that writes opens it.
        with RunTracker(catalog, "ddp-loop", catalog_options={"data_path": files}, seed=3) as run:
            for epoch in range(2):
                run.record_epoch({"epoch": epoch, "rows": 10 * (rank + 1)})
        gathered: list[object] = [None] * world_size
        dist.all_gather_object(gathered, {"run_id": run.run_id, "epochs": len(run.epochs)})
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_every_rank_drives_a_tracker_and_the_job_is_one_run(tmp_path: Path) -> None:
    catalog, files, out = tmp_path / "lake.ducklake", tmp_path / "files", tmp_path / "ranks.json"
    LakehouseCatalog(catalog, files).close()
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _rank_main, args=(WORLD, free_port(), str(catalog), str(files), str(out)), nprocs=WORLD, join=True
    )
    ranks = json.loads(out.read_text())
    assert ranks[0]["run_id"] is not None
    assert ranks[1]["run_id"] is None  # rank 1 recorded nothing
    assert [r["epochs"] for r in ranks] == [2, 2]
    with LakehouseCatalog(catalog, files) as lake:
        rows = lake.con.execute("SELECT run_id, status FROM simulation_runs").fetchall()
        assert rows == [(ranks[0]["run_id"], "completed")]
        record = lake.get_run(ranks[0]["run_id"])
    assert record.config == {"config": {}, "seed": 3, "world_size": WORLD}
    assert record.metrics is not None
    assert [e["rows"] for e in record.metrics["loader_epochs"]] == [10, 10]  # rank 0's
