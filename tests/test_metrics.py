"""Loader and column statistics to Weights & Biases, offline: no network, no API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import wandb
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import WandbLogger

from duckstream.errors import ConfigurationError
from duckstream.lightning import DuckStreamDataModule, LoaderMetricsCallback
from duckstream.runs.loader_stats import EpochStats, LoaderMeter
from duckstream.runs.metrics import column_statistics, loader_metrics, log_metrics
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.test_lightning import IdRecorder, trainer
from tests.wandb_records import history, offline_run_files

LOADER_KEYS = {
    "loader/rows",
    "loader/batches",
    "loader/seconds",
    "loader/wait_seconds",
    "loader/rows_per_second",
    "loader/wait_fraction",
}


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "wandb"
    directory.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(directory))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield directory
    if wandb.run is not None:
        wandb.finish()


def test_loader_metrics_name_every_statistic() -> None:
    stats = EpochStats(epoch=2, rows=300, batches=10, seconds=1.5, wait_seconds=0.3)
    metrics = loader_metrics(stats)
    assert set(metrics) == LOADER_KEYS
    assert metrics["loader/rows_per_second"] == pytest.approx(200.0)
    assert metrics["loader/wait_fraction"] == pytest.approx(0.2)
    assert set(loader_metrics(stats, prefix="train/")) == {
        k.replace("loader/", "train/") for k in LOADER_KEYS
    }


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), max_size=30), st.integers(0, 5))
def test_the_meter_counts_what_passes_through(sizes: list[int], epoch: int) -> None:
    meter = LoaderMeter(len)
    items = [[0] * size for size in sizes]
    assert list(meter.measure(items, epoch)) == items
    (stats,) = meter.epochs
    assert (stats.epoch, stats.rows, stats.batches) == (epoch, sum(sizes), len(sizes))
    assert 0 <= stats.wait_seconds <= stats.seconds
    assert meter.current() == stats


def test_an_abandoned_pass_is_kept_and_the_next_pass_is_separate() -> None:
    meter = LoaderMeter(len)
    first = meter.measure([[1, 2], [3]], 0)
    next(first)  # the consumer stops after one item, never closing the pass
    running = meter.current()
    assert running is not None
    assert (running.rows, running.batches) == (2, 1)
    assert list(meter.measure([[1], [2], [3]], 1)) == [[1], [2], [3]]
    assert [(s.epoch, s.rows, s.batches) for s in meter.epochs] == [(0, 2, 1), (1, 3, 3)]
    first.close()  # closing the old pass late changes nothing
    assert len(meter.epochs) == 2


def test_column_statistics_of_a_one_row_query(parquet_dir: Path) -> None:
    table = ds.dataset(parquet_dir).to_table()
    metrics = column_statistics(
        parquet_dir,
        "SELECT avg(length(label)) AS label_length, max(id) AS max_id, count(*) AS n FROM source",
    )
    expected = pc.mean(pc.utf8_length(table["label"])).as_py()
    assert metrics == {"data/label_length": pytest.approx(expected), "data/max_id": 299.0, "data/n": 300.0}
    with pytest.raises(ConfigurationError, match="exactly one row"):
        column_statistics(parquet_dir, "SELECT id FROM source WHERE id < 3")
    with pytest.raises(ConfigurationError, match=r"'label'.*expected a number"):
        column_statistics(parquet_dir, "SELECT min(label) AS label FROM source")


def test_log_metrics_refuses_what_cannot_log() -> None:
    with pytest.raises(ConfigurationError, match="wandb run or a Lightning logger"):
        log_metrics(object(), {"a": 1.0})


def test_a_plain_wandb_run_offline_gets_each_epochs_loader_statistics(
    parquet_dir: Path, wandb_offline: Path
) -> None:
    run = wandb.init(project="duckstream-test", dir=str(wandb_offline))
    loader = DuckStreamLoader(DuckStreamDataset(parquet_dir, batch_size=64, shuffle=True))
    meter = LoaderMeter()
    for epoch in range(2):
        for _ in meter.measure(loader, epoch):
            pass
        stats = meter.current()
        assert stats is not None
        log_metrics(run, loader_metrics(stats), step=epoch)
    run.finish()
    (run_file,) = offline_run_files(wandb_offline)
    rows = [row for row in history(run_file) if "loader/rows" in row]
    assert len(rows) == 2
    assert all(set(row) >= LOADER_KEYS for row in rows)
    assert [(row["loader/rows"], row["loader/batches"]) for row in rows] == [(300, 5), (300, 5)]


@pytest.mark.slow
def test_lightning_wandb_logger_offline_gets_loader_and_column_statistics(
    parquet_dir: Path, tmp_path: Path, wandb_offline: Path
) -> None:
    logger = WandbLogger(project="duckstream-test", save_dir=str(wandb_offline), offline=True)
    callback = LoaderMetricsCallback(column_sql="SELECT avg(length(label)) AS label_length FROM source")
    fit: L.Trainer = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[callback])
    fit.fit(IdRecorder(), datamodule=DuckStreamDataModule(parquet_dir, batch_size=32))
    wandb.finish()
    (run_file,) = offline_run_files(wandb_offline)
    rows = history(run_file)
    loader_rows = [row for row in rows if "loader/rows" in row]
    assert [row["loader/epoch"] for row in loader_rows] == [0, 1]
    assert all(set(row) >= LOADER_KEYS and row["loader/rows"] == 300 for row in loader_rows)
    assert all(row["loader/rows_per_second"] > 0 for row in loader_rows)
    (column_row,) = [row for row in rows if "data/label_length" in row]
    labels = ds.dataset(parquet_dir).to_table()["label"]
    assert column_row["data/label_length"] == pytest.approx(pc.mean(pc.utf8_length(labels)).as_py())
