"""A DuckStreamMix as the train split of DuckStreamDataModule, recorded by CatalogCallback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from duckstream.catalog import LakehouseCatalog
from duckstream.lightning import CatalogCallback, DuckStreamDataModule
from duckstream.stream import DuckStreamDataset, DuckStreamMix
from tests.conftest import numbers_table
from tests.test_lightning import IdRecorder, Interrupted, trainer

ALL_IDS = set(range(300)) | set(range(1000, 1060))


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[LakehouseCatalog]:
    """An embedded catalog holding `numbers` (ids 0..299), and a Parquet tier (ids 1000..1059)."""
    pq.write_table(numbers_table(0, 300), tmp_path / "numbers.parquet")
    (tmp_path / "tier").mkdir()
    pq.write_table(numbers_table(1000, 1060), tmp_path / "tier" / "part-0.parquet")
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as catalog:
        catalog.con.execute(
            f"CREATE TABLE numbers AS SELECT * FROM read_parquet('{tmp_path}/numbers.parquet')"
        )
        yield catalog


def mix(lake: LakehouseCatalog, tier: Path) -> DuckStreamMix:
    table = lake.table("numbers")
    return DuckStreamMix(
        [
            DuckStreamDataset(
                table, "SELECT id, value FROM source WHERE id < 200", batch_size=16, shuffle=True
            ),
            DuckStreamDataset(
                table, "SELECT id, value FROM source WHERE id >= 200", batch_size=16, shuffle=True
            ),
            DuckStreamDataset(tier, "SELECT id, value FROM source", batch_size=16, shuffle=True),
        ],
        [0.5, 0.3, 0.2],
        seed=4,
        names=["low", "high", "tier"],
    )


def test_a_mix_trains_each_source_once_per_epoch_and_is_recorded(
    lake: LakehouseCatalog, tmp_path: Path
) -> None:
    callback = CatalogCallback(lake, "mix-fit")
    data = DuckStreamDataModule(mix(lake, tmp_path / "tier"))
    model = IdRecorder()
    trainer(tmp_path / "fit", max_epochs=2, callbacks=[callback]).fit(model, datamodule=data)
    for epoch in (0, 1):
        assert Counter(model.seen[epoch]) == Counter(ALL_IDS)
    assert model.seen[0] != model.seen[1]
    assert callback.run_id is not None
    run = lake.get_run(callback.run_id)
    assert run.status == "completed"
    assert run.snapshots is not None
    assert sorted(run.snapshots) == ["train/high", "train/low", "train/tier"]
    assert "numbers" in str(run.snapshots["train/low"]["scan"])
    assert run.snapshots["train/tier"]["scan"] is None
    assert run.snapshots["train/tier"]["rows"] == 60
    assert run.config is not None
    assert run.config["config"]["data"]["mix"]["sources"] == ["low", "high", "tier"]
    assert run.metrics is not None
    epochs = run.metrics["loader_epochs"]
    # batches of 16 rows of one source each: 200 -> 13, 100 -> 7, 60 -> 4
    assert [e["sources"] for e in epochs] == [{"low": 13, "high": 7, "tier": 4}] * 2
    assert all(e["batches"] == 24 and e["rows"] == 360 for e in epochs)


def test_a_mix_resumes_from_a_mid_epoch_checkpoint(lake: LakehouseCatalog, tmp_path: Path) -> None:
    tier = tmp_path / "tier"
    whole = IdRecorder()
    trainer(tmp_path / "whole", max_epochs=2).fit(whole, datamodule=DuckStreamDataModule(mix(lake, tier)))
    checkpoints = tmp_path / "ckpt"
    first = IdRecorder(crash_at_step=35)
    saver = ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=30, save_top_k=-1)
    with pytest.raises(Interrupted):
        trainer(tmp_path / "first", max_epochs=2, callbacks=[saver], enable_checkpointing=True).fit(
            first, datamodule=DuckStreamDataModule(mix(lake, tier))
        )
    (saved,) = sorted(checkpoints.glob("*.ckpt"))
    state = torch.load(saved, weights_only=False)
    assert state["DuckStreamDataModule"]["train"]["kind"] == "mix"
    second = IdRecorder()
    trainer(tmp_path / "second", max_epochs=2).fit(
        second, datamodule=DuckStreamDataModule(mix(lake, tier)), ckpt_path=saved
    )
    # saved after 24 batches of epoch 0 and 6 of epoch 1: the resumed run goes on exactly as the
    # uninterrupted one did
    assert first.batches[:30] + second.batches == whole.batches
    resumed = [i for batch in first.batches[24:30] + second.batches for i in batch]
    assert Counter(resumed) == Counter(ALL_IDS)


def test_per_source_counts_reach_the_metrics() -> None:
    from duckstream.runs.loader_stats import EpochStats
    from duckstream.runs.metrics import loader_metrics

    stats = EpochStats(0, 10, 2, 1.0, 0.1, sources={"low": 1, "tier": 1})
    metrics = loader_metrics(stats)
    assert metrics["loader/source/low"] == metrics["loader/source/tier"] == 1.0
    assert stats.as_dict()["sources"] == {"low": 1, "tier": 1}
    assert "sources" not in EpochStats(0, 10, 2, 1.0, 0.1).as_dict()
