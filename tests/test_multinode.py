"""A multi-node rehearsal: two ``torchrun`` nodes on loopback, two ranks each (gloo, CPU).

The job is set up as the README's "Multi-node training" section says: the same command and the
same environment on every node (S3 endpoint and keys as variables, c10d rendezvous), the catalog
DSN and data path passed in code. It trains with Lightning on a DuckLake table pinned to a
snapshot, its catalog in the real PostgreSQL and its files on the real SeaweedFS S3 server,
while later writes have moved the table on. Each rank is tests/multinode_worker.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.services import PostgresService, S3Service, free_port
from tests.conftest import numbers_table

pytestmark = [pytest.mark.slow, pytest.mark.services]

NODES = 2
PER_NODE = 2
WORLD = NODES * PER_NODE
EPOCHS = 2
BATCH = 32
TIMEOUT_S = 180  # the whole job; a hang fails with every node's output
REPO = Path(__file__).resolve().parent.parent
# The launcher as users run it; `python -m torch.distributed.run` is the same program.
_TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN = [str(_TORCHRUN)] if _TORCHRUN.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _make_table(catalog: LakehouseCatalog) -> tuple[int, list[int]]:
    """A table of several files with deletes; its snapshot then and the ids it holds there. A
    later insert moves the table on, so a read at the current snapshot would differ."""
    catalog.con.register("numbers_src", numbers_table(0, 1_000).drop_columns(["vector"]))
    try:
        catalog.con.execute("CREATE TABLE numbers AS SELECT * FROM numbers_src WHERE id < 400")
        catalog.con.execute("INSERT INTO numbers SELECT * FROM numbers_src WHERE id >= 400 AND id < 700")
        catalog.con.execute("INSERT INTO numbers SELECT * FROM numbers_src WHERE id >= 700")
        catalog.con.execute("DELETE FROM numbers WHERE id % 97 = 5")
        pinned = catalog.table("numbers").version
        ids = [i for (i,) in catalog.con.execute("SELECT id FROM numbers ORDER BY id").fetchall()]
        catalog.con.execute("INSERT INTO numbers SELECT id + 5000, value, label FROM numbers_src")
    finally:
        catalog.con.unregister("numbers_src")
    assert catalog.current_snapshot() > pinned
    return pinned, ids


def _launch(commands: list[list[str]], env: dict[str, str], logs: Path) -> list[tuple[int | None, str]]:
    """Start one torchrun per node and wait for all, at most TIMEOUT_S; each node's exit code
    (None: killed, still running at the deadline) and output. Once a node fails the others get
    20 s more: they would wait for their peer. Nodes still running are killed with their ranks."""
    procs, logfiles = [], []
    for node, command in enumerate(commands):
        logfiles.append(logs / f"node-{node}.log")
        with logfiles[-1].open("wb") as sink:
            procs.append(
                subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    deadline = time.monotonic() + TIMEOUT_S
    killed: set[int] = set()
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes):
                deadline = min(deadline, time.monotonic() + 20)
            time.sleep(0.5)
    finally:
        for node, p in enumerate(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # this torchrun's session: it and its ranks
                p.wait()
                killed.add(node)
    return [
        (None if node in killed else p.returncode, log.read_text("utf-8", "replace"))
        for node, (p, log) in enumerate(zip(procs, logfiles, strict=True))
    ]


def test_two_torchrun_nodes_train_on_a_pinned_lake_table_once_planned_and_registered_once(
    s3_server: S3Service,
    s3_bucket: str,
    postgres_server: PostgresService,
    pg_database: str,
    tmp_path: Path,
) -> None:
    dsn = postgres_server.dsn(pg_database)
    data_path = f"s3://{s3_bucket}/lake"
    keys = (s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    with LakehouseCatalog(dsn, data_path, *keys) as catalog:
        pinned, expected = _make_table(catalog)
    out = tmp_path / "out"
    out.mkdir()
    experiment = f"multinode-{uuid.uuid4().hex[:8]}"

    env = dict(os.environ)
    env.update(
        {
            "DUCKSTREAM_S3_ENDPOINT": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("AWS_SESSION_TOKEN", None)
    command = [
        *TORCHRUN,
        f"--nnodes={NODES}",
        f"--nproc-per-node={PER_NODE}",
        f"--rdzv-id=multinode-{uuid.uuid4().hex[:8]}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "-m",
        "tests.multinode_worker",
        f"--dsn={dsn}",
        f"--data-path={data_path}",
        "--table=numbers",
        f"--version={pinned}",
        f"--experiment={experiment}",
        f"--epochs={EPOCHS}",
        f"--batch-size={BATCH}",
        f"--out={out}",
    ]
    started = time.monotonic()
    results = _launch([command] * NODES, env, tmp_path)
    took = time.monotonic() - started
    if any(code != 0 for code, _ in results):
        story = "\n\n".join(
            f"----- node {node}: "
            + (f"still running after {TIMEOUT_S} s, killed" if code is None else f"exit code {code}")
            + f" -----\n{output}"
            for node, (code, output) in enumerate(results)
        )
        pytest.fail(f"the torchrun job failed after {took:.0f} s:\n{story}", pytrace=False)

    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(WORLD)]
    # Four ranks of one gloo job, two on each node, each node its own torchrun.
    assert [r["rank"] for r in ranks] == list(range(WORLD))
    assert {(r["node"], r["local_rank"]) for r in ranks} == {
        (n, i) for n in range(NODES) for i in range(PER_NODE)
    }
    assert all(r["world_size"] == WORLD and r["backend"] == "gloo" for r in ranks)
    agents = {(r["node"], r["agent"]) for r in ranks}  # a rank's parent is its node's torchrun
    assert len(agents) == NODES
    assert len({agent for _, agent in agents}) == NODES

    # Only rank 0 planned the table (one catalog scan of its files at the snapshot); every rank
    # reads that one plan, at the pinned snapshot.
    assert ranks[0]["planned"] == [pinned]
    assert all(r["planned"] == [] for r in ranks[1:])
    assert len({r["fingerprint"] for r in ranks}) == 1
    assert {r["scan"] for r in ranks} == {f'lake."numbers" AT (VERSION => {pinned})'}
    assert len(ranks[0]["files"]) >= 3  # one data file per insert at least, all on the S3 server
    assert all(f.startswith(f"{data_path}/") for f in ranks[0]["files"])

    # Each epoch every row of the snapshot exactly once, plus the padding even="pad" promises:
    # every rank the same number of rows, ceil(rows / ranks), the few extra ones repeated rows.
    share = -(-len(expected) // WORLD)
    padding = share * WORLD - len(expected)
    assert padding > 0  # the table does not share out evenly: the ranks are evened
    for epoch in map(str, range(EPOCHS)):
        per_rank = [r["seen"][epoch] for r in ranks]
        assert [len(ids) for ids in per_rank] == [share] * WORLD
        counts = Counter(i for ids in per_rank for i in ids)
        assert sorted(counts) == expected  # nothing written after the snapshot, nothing deleted
        assert sorted(counts.values(), reverse=True)[: padding + 1] == [2] * padding + [1]
        assert all(len(set(ids)) == len(ids) for ids in per_rank)  # no rank reads a row twice
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]  # shuffled anew each epoch
    assert all(r["len"] == -(-share // BATCH) for r in ranks)

    # One run in the catalog, registered by rank 0 alone, pinned to the snapshot the job read.
    assert ranks[0]["run_id"] is not None
    assert all(r["run_id"] is None for r in ranks[1:])
    with LakehouseCatalog(dsn, None, *keys) as catalog:
        rows = catalog.con.execute(
            "SELECT r.run_id FROM simulation_runs r JOIN experiments e USING (experiment_id) "
            "WHERE e.name = ?",
            [experiment],
        ).fetchall()
        everything = catalog.con.execute("SELECT count(*) FROM simulation_runs").fetchall()
        assert rows == [(ranks[0]["run_id"],)]
        assert everything == [(1,)]
        run = catalog.get_run(ranks[0]["run_id"])
    assert run.status == "completed"
    assert run.snapshots == {"train": {"table": "numbers", "version": pinned}}
    assert run.config is not None
    assert run.config["world_size"] == WORLD
    assert run.config["config"]["job"] == "multinode"
    assert run.metrics is not None
    assert [e["rows"] for e in run.metrics["loader_epochs"]] == [share] * EPOCHS
