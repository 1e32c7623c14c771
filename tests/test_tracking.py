"""Run records: CatalogCallback and RunTracker against real catalogs, including a PostgreSQL outage."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.errors import CatalogError, ConfigurationError
from duckstream.lightning import CatalogCallback, DuckStreamDataModule
from duckstream.runs.tracking import RunTracker
from duckstream.services import PostgresCluster, PostgresService
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.conftest import numbers_table
from tests.test_lightning import IdRecorder, Interrupted, trainer


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[LakehouseCatalog]:
    """An embedded catalog holding `numbers` (ids 0..299)."""
    pq.write_table(numbers_table(0, 300), tmp_path / "numbers.parquet")
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as catalog:
        catalog.con.execute(
            f"CREATE TABLE numbers AS SELECT * FROM read_parquet('{tmp_path}/numbers.parquet')"
        )
        yield catalog


def runs(catalog: LakehouseCatalog) -> list[tuple[Any, ...]]:
    return catalog.con.execute("SELECT run_id, status FROM simulation_runs ORDER BY started_at").fetchall()


def test_callback_records_a_completed_run_with_its_snapshot_and_loader_statistics(
    lake: LakehouseCatalog, tmp_path: Path
) -> None:
    table = lake.table("numbers")
    lake.con.execute("INSERT INTO numbers SELECT * FROM numbers LIMIT 5")  # later writes stay unseen
    callback = CatalogCallback(lake, "numbers-fit", description="a test", config={"note": "x"})
    data = DuckStreamDataModule(table, batch_size=32, seed=9)
    model = IdRecorder(lr=0.05)
    trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model, datamodule=data)
    assert sorted(model.seen[1]) == list(range(300))
    assert callback.run_id is not None
    run = lake.get_run(callback.run_id)
    assert run.status == "completed"
    assert run.snapshots == {"train": {"table": "numbers", "version": table.version}}
    assert run.config is not None
    assert run.config["seed"] == 9
    assert run.config["world_size"] == 1
    assert run.config["config"]["hyperparameters"]["lr"] == 0.05
    assert run.config["config"]["note"] == "x"
    assert run.config["config"]["data"]["batch_size"] == 32
    assert run.metrics is not None
    epochs = run.metrics["loader_epochs"]
    assert [(e["epoch"], e["rows"], e["batches"]) for e in epochs] == [(0, 300, 10), (1, 300, 10)]
    assert all(0 <= e["wait_seconds"] <= e["seconds"] and e["rows_per_second"] > 0 for e in epochs)
    experiment = lake.register_experiment("numbers-fit")
    assert (experiment.experiment_id, experiment.description) == (run.experiment_id, "a test")


def test_callback_marks_the_run_failed_when_training_step_raises(
    lake: LakehouseCatalog, tmp_path: Path
) -> None:
    callback = CatalogCallback(lake, "numbers-fit")
    data = DuckStreamDataModule(lake.table("numbers"), batch_size=32)
    with pytest.raises(Interrupted):
        trainer(tmp_path, max_epochs=3, callbacks=[callback]).fit(
            IdRecorder(crash_at_step=15), datamodule=data
        )
    assert callback.run_id is not None
    run = lake.get_run(callback.run_id)
    assert run.status == "failed"
    assert run.error == "Interrupted: stopped on purpose at step 15"
    assert run.finished_at is not None
    assert run.metrics is not None
    assert [e["epoch"] for e in run.metrics["loader_epochs"]] == [0]  # the one finished epoch
    assert [status for _, status in runs(lake)] == ["failed"]


def test_callback_given_a_path_opens_and_closes_the_catalog(parquet_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "runs.ducklake"
    callback = CatalogCallback(path, "by-path", catalog_options={"data_path": tmp_path / "run-files"})
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(
        IdRecorder(), datamodule=DuckStreamDataModule(parquet_dir, batch_size=100)
    )
    # A file catalog has one writer: opening it here works only if the callback closed its own.
    with LakehouseCatalog(path, tmp_path / "run-files") as catalog:
        assert callback.run_id is not None
        run = catalog.get_run(callback.run_id)
        assert run.status == "completed"
        assert run.snapshots == {}  # read from plain Parquet files: no lake snapshot to name
    with pytest.raises(ConfigurationError, match="catalog_options"):
        CatalogCallback(catalog, "x", catalog_options={"data_path": "y"})


def test_a_catalog_given_by_its_path_alone_records_failed_runs(parquet_dir: Path, tmp_path: Path) -> None:
    path, files = tmp_path / "runs.ducklake", tmp_path / "own-files"
    LakehouseCatalog(path, files).close()  # made with a data path of its own, not <file>.files
    callback = CatalogCallback(path, "by-path")
    with pytest.raises(Interrupted):
        trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(
            IdRecorder(crash_at_step=2), datamodule=DuckStreamDataModule(parquet_dir, batch_size=100)
        )
    with pytest.raises(RuntimeError, match="diverged"), RunTracker(path, "by-path") as tracker:
        raise RuntimeError("diverged")
    assert callback.run_id is not None
    assert tracker.run_id is not None
    with LakehouseCatalog(path) as catalog:
        fitted, looped = catalog.get_run(callback.run_id), catalog.get_run(tracker.run_id)
    assert (fitted.status, fitted.error) == ("failed", "Interrupted: stopped on purpose at step 2")
    assert (looped.status, looped.error) == ("failed", "RuntimeError: diverged")
    assert fitted.experiment_id == looped.experiment_id


def test_a_data_path_the_catalog_does_not_store_stops_the_run_before_training(
    parquet_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, files, other = tmp_path / "runs.ducklake", tmp_path / "own-files", tmp_path / "other"
    LakehouseCatalog(path, files).close()
    options = {"data_path": other}
    both = rf"keeps its data files in {files}/, not in the data_path given \({other}/\)"
    with caplog.at_level(logging.WARNING, logger="duckstream"):
        with pytest.raises(CatalogError, match=both), RunTracker(path, "wrong", catalog_options=options):
            pass
        callback = CatalogCallback(path, "wrong", catalog_options=options)
        model = IdRecorder()
        with pytest.raises(CatalogError, match=both):
            trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(
                model, datamodule=DuckStreamDataModule(parquet_dir, batch_size=100)
            )
    assert model.seen == {}  # stopped at fit start
    assert callback.run_id is None
    assert not [r.getMessage() for r in caplog.records if r.name == "duckstream.runs.tracking"]
    with LakehouseCatalog(path) as catalog:  # nothing was left open, nothing was recorded
        assert catalog.con.execute("SELECT count(*) FROM simulation_runs").fetchone() == (0,)


def test_plain_loop_tracker_records_epochs_and_ends_with_the_loop(lake: LakehouseCatalog) -> None:
    table = lake.table("numbers")
    loader = DuckStreamLoader(DuckStreamDataset(table, batch_size=100, shuffle=True, seed=1))
    with RunTracker(lake, "plain", sources={"numbers": table}, seed=1, config={"lr": 0.1}) as run:
        for epoch in range(2):
            for _ in run.measure(loader, epoch):
                pass
    assert run.run_id is not None
    record = lake.get_run(run.run_id)
    assert record.status == "completed"
    assert record.snapshots == {"numbers": {"table": "numbers", "version": table.version}}
    assert record.config == {"config": {"lr": 0.1}, "seed": 1, "world_size": 1}
    assert record.metrics is not None
    assert [(e["rows"], e["batches"]) for e in record.metrics["loader_epochs"]] == [(300, 3), (300, 3)]

    with RunTracker(lake, "plain") as early:
        for step, _ in enumerate(early.measure(loader, 0)):
            if step == 1:
                break  # leaving the pass early still records what it took
    assert early.epochs[0]["rows"] == 200
    assert early.epochs[0]["batches"] == 2

    with pytest.raises(ZeroDivisionError), RunTracker(lake, "plain") as failing:
        _ = 1 / 0
    assert failing.run_id is not None
    assert lake.get_run(failing.run_id).error == "ZeroDivisionError: division by zero"
    with pytest.raises(ConfigurationError, match="start"):
        RunTracker(lake, "plain").record_epoch({"epoch": 0})


def test_run_metrics_updates_are_revisions_and_end_with_the_run(lake: LakehouseCatalog) -> None:
    experiment = lake.register_experiment("revisions")
    run = lake.register_run(experiment.experiment_id)
    for epoch in range(3):
        updated = lake.record_run_metrics(run.run_id, {"epoch": epoch})
        assert (updated.status, updated.metrics) == ("running", {"epoch": epoch})
    failed = lake.fail_run(run.run_id, "out of memory", metrics={"epoch": 2, "partial": True})
    assert (failed.status, failed.error, failed.metrics) == (
        "failed",
        "out of memory",
        {"epoch": 2, "partial": True},
    )
    revisions = lake.con.execute(
        "SELECT revision, status FROM simulation_run_log WHERE run_id = ? ORDER BY revision", [run.run_id]
    ).fetchall()
    assert revisions == [(0, "running"), (1, "running"), (2, "running"), (3, "running"), (4, "failed")]
    with pytest.raises(CatalogError, match="already failed"):
        lake.record_run_metrics(run.run_id, {"epoch": 3})


def test_a_catalog_that_refuses_writes_never_stops_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, files = tmp_path / "ro.ducklake", tmp_path / "ro-files"
    LakehouseCatalog(path, files).close()
    with LakehouseCatalog(path, files, read_only=True) as catalog, caplog.at_level(logging.WARNING):
        tracker = RunTracker(catalog, "refused", reconcile_timeout=60)
        tracker.start()
        tracker.record_epoch({"epoch": 0})
        tracker.complete()
        assert tracker.flush() is True  # nothing waits: a refusal is not an outage
    assert (tracker.run_id, tracker.pending) == (None, 0)
    dropped = [r.getMessage() for r in caplog.records if "dropping that write" in r.getMessage()]
    assert len(dropped) == 3
    assert "read-only" in dropped[0]
    assert "was not registered" in dropped[1]


@pytest.mark.services
def test_a_wrong_catalog_password_is_said_at_once_not_waited_out(
    postgres_server: PostgresService, pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = postgres_server
    wrong = f"postgresql://{server.user}:not-the-password-789@{server.host}:{server.port}/{pg_database}"
    began = time.monotonic()
    options = {"data_path": tmp_path / "files"}
    with (
        caplog.at_level(logging.WARNING, logger="duckstream"),
        RunTracker(wrong, "denied", catalog_options=options) as tracker,
    ):
        tracker.record_epoch({"epoch": 0, "rows": 10})
    # reconcile_timeout is 30 s: an outage would be waited out for that long at the end
    assert time.monotonic() - began < 15
    assert (tracker.run_id, tracker.pending) == (None, 0)
    shown = [r.getMessage() for r in caplog.records if r.name == "duckstream.runs.tracking"]
    assert shown
    assert "CatalogError" in shown[0]
    assert "password authentication failed" in shown[0]
    assert not any("unreachable" in m for m in shown)
    assert not any("not-the-password-789" in m or server.password in m for m in shown)


# --------------------------------------------------------------------------- catalog outage


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test alone, which the test stops and starts again."""
    root = Path(tempfile.mkdtemp(prefix="duckstream-outage-"))
    os.chmod(root, 0o755)  # the server may run as another OS user
    cluster = PostgresCluster(data_dir=root / "pg")
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


class Outage(L.Callback):
    """Stops the catalog's server when epoch ``stop_at`` starts, starts it when ``start_at`` ends."""

    def __init__(self, cluster: PostgresCluster, stop_at: int, start_at: int) -> None:
        self.cluster, self.stop_at, self.start_at = cluster, stop_at, start_at

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.stop_at:
            self.cluster.stop()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.start_at:
            self.cluster.start()


@pytest.mark.slow
@pytest.mark.services
def test_a_catalog_outage_during_training_leaves_training_done_and_the_run_reconciled(
    own_postgres: PostgresCluster, parquet_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = own_postgres.service
    assert service is not None
    dsn = service.dsn()
    files = tmp_path / "lake-files"
    # The server is down from the start of epoch 1 until the end of epoch 2; the callback's
    # own hook for epoch 2 runs before the restart, so epochs 1 and 2 wait in its queue.
    callback = CatalogCallback(dsn, "outage", catalog_options={"data_path": files})
    outage = Outage(own_postgres, stop_at=1, start_at=2)
    model = IdRecorder()
    data = DuckStreamDataModule(parquet_dir, batch_size=50, seed=2)
    with caplog.at_level(logging.WARNING, logger="duckstream"):
        trainer(tmp_path, max_epochs=4, callbacks=[callback, outage]).fit(model, datamodule=data)
    assert sorted(model.seen) == [0, 1, 2, 3]  # training went on
    assert all(sorted(ids) == list(range(300)) for ids in model.seen.values())
    warnings = [r.getMessage() for r in caplog.records if r.name == "duckstream.runs.tracking"]
    assert any("catalog unreachable" in w and "record epoch 1" in w for w in warnings)
    assert any("reachable again" in w for w in warnings)
    assert not any(service.password in w for w in warnings)
    assert callback.tracker is not None
    assert callback.tracker.pending == 0
    with LakehouseCatalog(dsn, files) as catalog:
        assert callback.run_id is not None
        run = catalog.get_run(callback.run_id)
        assert run.status == "completed"
        assert run.metrics is not None
        assert [e["epoch"] for e in run.metrics["loader_epochs"]] == [0, 1, 2, 3]
        revisions = catalog.con.execute(
            "SELECT status FROM simulation_run_log WHERE run_id = ? ORDER BY revision", [run.run_id]
        ).fetchall()
    # registration, four epoch records replayed in order, the end
    assert [s for (s,) in revisions] == ["running"] * 5 + ["completed"]


@pytest.mark.slow
@pytest.mark.services
def test_a_run_registered_while_the_catalog_is_down_is_recorded_when_it_returns(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    service = own_postgres.service
    assert service is not None
    dsn, files = service.dsn(), tmp_path / "lake-files"
    LakehouseCatalog(dsn, files).close()  # the catalog exists; then its server goes away
    own_postgres.stop()
    tracker = RunTracker(dsn, "late", catalog_options={"data_path": files}, reconcile_timeout=0)
    tracker.start()
    tracker.record_epoch({"epoch": 0, "rows": 10})
    assert (tracker.run_id, tracker.pending) == (None, 2)
    assert tracker.flush(timeout=0) is False
    own_postgres.start()
    tracker.complete({"accuracy": 1.0})
    assert tracker.pending == 0
    tracker.close()
    with LakehouseCatalog(dsn, files) as catalog:
        assert tracker.run_id is not None
        run = catalog.get_run(tracker.run_id)
    assert run.status == "completed"
    assert run.metrics == {"accuracy": 1.0, "loader_epochs": [{"epoch": 0, "rows": 10}]}
