"""Load: eight readers stream one ``s3://`` lake table, each at the snapshot it pinned, while an
ingest appends to the same table. Real SeaweedFS and PostgreSQL; readers are processes of their
own, as ranks on other machines would be. Each reader must see exactly its snapshot's rows in
every epoch, however many appends commit while it reads."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.core.lake import LakeTable
from duckstream.services import PostgresService, S3Service
from duckstream.stream import stream_batches
from duckstream.sync import sync_from_hf

READERS = 8
EPOCHS = 3
BASE_ROWS = 20_000
MIN_APPENDS = 4
MAX_APPEND_SECONDS = 300  # appends go on until every reader is done, within this
APPEND_ROWS = 5_000
ROWS_PER_FILE = 2_500


def read_epochs(table: LakeTable, seed: int) -> dict[str, Any]:
    """Every epoch's ids (sorted) of ``table`` at its pinned snapshot, and the read speed."""
    epochs: list[list[int]] = []
    began = time.time()
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        ids = [
            i
            for batch in stream_batches(
                table,
                "SELECT id FROM source",
                shuffle=True,
                seed=seed,
                epoch=epoch,
                batch_size=512,
                threads=1,
            )
            for i in batch.column("id").to_pylist()
        ]
        epochs.append(sorted(ids))
    seconds = time.perf_counter() - started
    return {"version": table.version, "epochs": epochs, "seconds": seconds, "window": (began, time.time())}


def saved_dataset(path: Path, first: int, rows: int) -> Path:
    ids = range(first, first + rows)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"id": list(ids), "text": [f"row {i}" for i in ids]})}
    ).save_to_disk(str(path))
    return path


@pytest.mark.slow
def test_eight_readers_see_their_snapshot_while_an_ingest_appends(
    tmp_path: Path,
    s3_server: S3Service,
    s3_bucket: str,
    postgres_server: PostgresService,
    pg_database: str,
) -> None:
    keys: dict[str, Any] = {
        "s3_endpoint_url": s3_server.endpoint,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
    }
    with LakehouseCatalog(
        postgres_server.dsn(pg_database),
        f"s3://{s3_bucket}/lake",
        s3_server.endpoint,
        s3_server.access_key,
        s3_server.secret_key,
    ) as catalog:

        def ingest(index: int, first: int, rows: int) -> None:
            sync_from_hf(
                saved_dataset(tmp_path / f"hf-{index}", first, rows),
                "train",
                bucket=s3_bucket,
                prefix=f"ingest-{index}",
                rows_per_file=ROWS_PER_FILE,
                progress=False,
                catalog=catalog,
                table="events",
                key="id",
                **keys,
            )

        ingest(0, 0, BASE_ROWS)
        readers: list[Future[dict[str, Any]]] = []
        ingest_seconds: list[float] = []
        appends: list[tuple[float, float]] = []  # when each append began and committed
        started = time.perf_counter()
        with ProcessPoolExecutor(READERS, mp_context=multiprocessing.get_context("spawn")) as pool:
            readers += [pool.submit(read_epochs, catalog.table("events"), seed) for seed in range(4)]
            # The ingest keeps appending until every reader is done, so each reads while
            # snapshots newer than its own commit.
            append = 0
            deadline = time.time() + MAX_APPEND_SECONDS
            while append < MIN_APPENDS or (time.time() < deadline and not all(r.done() for r in readers)):
                append += 1
                begun, began = time.perf_counter(), time.time()
                ingest(append, BASE_ROWS + (append - 1) * APPEND_ROWS, APPEND_ROWS)
                ingest_seconds.append(time.perf_counter() - begun)
                appends.append((began, time.time()))
                if append in (2, 4):  # later readers pin later snapshots
                    readers += [
                        pool.submit(read_epochs, catalog.table("events"), 10 + append + k) for k in (0, 1)
                    ]
            results = [reader.result(timeout=600) for reader in readers]
        wall = time.perf_counter() - started
        expected = {
            result["version"]: [
                row[0]
                for row in catalog.con.execute(
                    f"SELECT id FROM events AT (VERSION => {int(result['version'])}) ORDER BY id"
                ).fetchall()
            ]
            for result in results
        }
        stored = catalog.con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    assert len(results) == READERS
    assert len(set(expected)) == 3  # three snapshots were read: before, and after two and four appends
    for result in results:
        rows = expected[result["version"]]
        assert len(rows) == len(set(rows))  # the ingest kept each key once
        for epoch in result["epochs"]:
            assert epoch == rows
    assert stored == (BASE_ROWS + append * APPEND_ROWS,) * 2
    for result in results:  # an append really ran while each reader read
        first, last = result["window"]
        assert any(start < last and end > first for start, end in appends)
    read = sum(len(r["epochs"][0]) * EPOCHS for r in results)
    speeds = ", ".join(f"{len(r['epochs'][0]) * EPOCHS / r['seconds']:,.0f}" for r in results)
    print(
        f"\n{READERS} readers x {EPOCHS} epochs over snapshots "
        f"{sorted({len(v) for v in expected.values()})} rows: {read:,} rows in {wall:.1f} s "
        f"({read / wall:,.0f} rows/s together; per reader "
        f"{speeds} rows/s); "
        f"{append} appends of {APPEND_ROWS:,} rows took {', '.join(f'{s:.1f}' for s in ingest_seconds)} s"
    )
