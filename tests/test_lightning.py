"""DuckStreamDataModule under a real Lightning Trainer: epochs, len, DDP shares and mid-epoch resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

from duckstream.catalog import LakehouseCatalog
from duckstream.errors import ConfigurationError
from duckstream.lightning import CatalogCallback, DuckStreamDataModule, LoaderMetricsCallback
from duckstream.services import S3Service
from duckstream.stream import DuckStreamDataset
from tests.conftest import numbers_table, upload_dir

ROWS = 300  # the parquet_dir fixture: ids 0..299


class IdRecorder(L.LightningModule):
    """Trains one weight on `value` and records which ids each epoch's batches held."""

    def __init__(
        self, lr: float = 0.01, out_dir: str | None = None, crash_at_step: int | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}  # ids per epoch
        self.batches: list[list[int]] = []  # ids per training step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.hparams["crash_at_step"] is not None and self.global_step == self.hparams["crash_at_step"]:
            raise Interrupted(f"stopped on purpose at step {self.global_step}")
        self.seen.setdefault(self.current_epoch, []).extend(batch["id"].tolist())
        self.batches.append(batch["id"].tolist())
        loss: torch.Tensor = ((self.weight * batch["value"].float()) ** 2).mean()
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", ((self.weight * batch["value"].float()) ** 2).mean())

    def on_train_end(self) -> None:
        if self.hparams["out_dir"] is not None:
            path = Path(self.hparams["out_dir"]) / f"rank-{self.global_rank}.json"
            path.write_text(json.dumps({"seen": self.seen, "len": self.trainer.num_training_batches}))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class Interrupted(RuntimeError):
    """Raised inside training to cut a run short."""


def trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
    }
    options.update(kwargs)
    return L.Trainer(**options)


def test_each_epoch_reads_every_row_once_in_a_new_order(parquet_dir: Path, tmp_path: Path) -> None:
    data = DuckStreamDataModule(parquet_dir, val=parquet_dir, batch_size=32, seed=7)
    model = IdRecorder()
    fit = trainer(tmp_path, max_epochs=3)
    fit.fit(model, datamodule=data)
    for epoch in range(3):
        assert sorted(model.seen[epoch]) == list(range(ROWS))
    assert len({tuple(model.seen[epoch]) for epoch in range(3)}) == 3  # each epoch in an order of its own
    assert fit.num_training_batches == len(data.dataset("train")) == 10  # ceil(300 / 32)
    stats = data.meters["train"].epochs
    assert [s.epoch for s in stats] == [0, 1, 2]
    assert all((s.rows, s.batches) == (ROWS, 10) for s in stats)
    assert all(0 <= s.wait_seconds <= s.seconds for s in stats)
    # val is read in storage order, every pass the same
    val = DuckStreamDataset(parquet_dir, batch_size=32)
    assert [b["id"].tolist() for b in data.val_dataloader()] == [b["id"].tolist() for b in val]


def test_same_seed_same_epoch_orders_and_other_seed_another(parquet_dir: Path, tmp_path: Path) -> None:
    orders = []
    for seed in (3, 3, 4):
        model = IdRecorder()
        trainer(tmp_path).fit(model, datamodule=DuckStreamDataModule(parquet_dir, batch_size=50, seed=seed))
        orders.append(model.seen)
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[2][0]


def test_a_ready_dataset_split_is_used_as_given(parquet_dir: Path, tmp_path: Path) -> None:
    dataset = DuckStreamDataset(parquet_dir, "SELECT * FROM source WHERE id < 100", batch_size=10)
    data = DuckStreamDataModule(dataset)
    model = IdRecorder()
    trainer(tmp_path, max_epochs=1).fit(model, datamodule=data)
    assert model.seen[0] == list(range(100))  # its own settings: storage order, 10 batches
    assert data.dataset("train") is dataset
    with pytest.raises(ConfigurationError, match="no 'test' split"):
        data.dataset("test")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("num_workers", "save_every", "crash_at"),
    [
        (0, 4, 6),  # checkpoint after step 4 of epoch 0 (10 batches an epoch), crash at 6
        (0, 13, 15),  # in epoch 1
        (2, 10, 12),  # on the last batch of epoch 0, with two workers
        (0, None, 15),  # ModelCheckpoint's default: at the end of each epoch (step 10)
    ],
)
def test_resume_from_a_mid_epoch_checkpoint_repeats_and_loses_nothing(
    parquet_dir: Path, tmp_path: Path, num_workers: int, save_every: int | None, crash_at: int
) -> None:
    whole = IdRecorder()
    data = DuckStreamDataModule(parquet_dir, batch_size=32, seed=5, num_workers=num_workers)
    trainer(tmp_path / "whole", max_epochs=3).fit(whole, datamodule=data)

    checkpoints = tmp_path / "ckpt"
    first = IdRecorder(crash_at_step=crash_at)
    saver = ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=save_every, save_top_k=-1)
    saved_at = save_every or 10
    data = DuckStreamDataModule(parquet_dir, batch_size=32, seed=5, num_workers=num_workers)
    with pytest.raises(Interrupted):
        trainer(tmp_path / "first", max_epochs=3, callbacks=[saver], enable_checkpointing=True).fit(
            first, datamodule=data
        )
    (saved,) = sorted(checkpoints.glob("*.ckpt"))
    assert f"step={saved_at}" in saved.name
    state = torch.load(saved, weights_only=False)
    assert state["DuckStreamDataModule"]["train"]["epoch"] == (saved_at - 1) // 10

    second = IdRecorder()
    data = DuckStreamDataModule(parquet_dir, batch_size=32, seed=5, num_workers=num_workers)
    trainer(tmp_path / "second", max_epochs=3).fit(second, datamodule=data, ckpt_path=saved)

    # what the first run trained on up to the checkpoint, then what the resumed run trained on
    assert len(first.batches) == crash_at
    assert first.batches[:saved_at] + second.batches == whole.batches
    assert len(whole.batches) == 30
    for epoch in range(3):
        assert sorted(whole.seen[epoch]) == list(range(ROWS))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch_size=st.sampled_from([16, 32, 50]),
    taken_count=st.integers(0, 20),
    load_after_loader=st.booleans(),
)
def test_data_module_state_round_trips_into_a_new_module(
    parquet_dir: Path, batch_size: int, taken_count: int, load_after_loader: bool
) -> None:
    def module() -> DuckStreamDataModule:
        return DuckStreamDataModule(parquet_dir, batch_size=batch_size, seed=5)

    whole = [b["id"].tolist() for b in module().train_dataloader()]
    data = module()
    assert data.state_dict() == {}
    batches = iter(data.train_dataloader())
    taken = [next(batches)["id"].tolist() for _ in range(min(taken_count, len(whole)))]
    state = data.state_dict()
    assert json.loads(json.dumps(state)) == state
    again = module()
    if load_after_loader:  # Lightning may create the loader before or after restoring
        loader = again.train_dataloader()
        again.load_state_dict(state)
    else:
        again.load_state_dict(state)
        loader = again.train_dataloader()
    rest = [b["id"].tolist() for b in loader]
    assert taken + rest == whole  # all taken: the rest of that epoch is empty
    following = [i for b in loader for i in b["id"].tolist()]  # the next pass is the next epoch
    assert sorted(following) == list(range(ROWS))
    assert following != [i for b in whole for i in b]


def test_bad_arguments_are_refused(parquet_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="train"):
        DuckStreamDataModule(None)
    with pytest.raises(ConfigurationError, match="num_workers"):
        DuckStreamDataModule(parquet_dir, num_workers=-1)
    with pytest.raises(ConfigurationError, match="batch_size"):
        DuckStreamDataModule(parquet_dir, batch_size=0)


@pytest.mark.services
def test_column_statistics_reach_the_store_the_data_module_reads(
    parquet_dir: Path, tmp_path: Path, s3_server: S3Service, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing in the environment points at the store: only the data module's keywords do.
    for name in ("DUCKSTREAM_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DUCKSTREAM_S3_RETRY_SECONDS", "5")  # a read sent elsewhere fails soon
    upload_dir(s3_server.boto3_client(), s3_bucket, "numbers", parquet_dir)
    uri = f"s3://{s3_bucket}/numbers/"
    keys: dict[str, Any] = {
        "s3_endpoint": s3_server.endpoint,  # host:port, the seed's form
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
    }
    sql = "SELECT avg(id) AS mean_id, count(*) AS row_count FROM source"
    expected = {"data/mean_id": 149.5, "data/row_count": 300.0}

    from_module = LoaderMetricsCallback(column_sql=sql)
    trainer(tmp_path, max_epochs=1, callbacks=[from_module]).fit(
        IdRecorder(), datamodule=DuckStreamDataModule(uri, batch_size=100, **keys)
    )
    assert from_module.logged[0] == expected

    # A ready dataset as the train split: a column_source given apart is read with its settings.
    ready = DuckStreamDataset(uri, batch_size=100, **keys)
    apart = LoaderMetricsCallback(column_sql=sql, column_source=uri)
    trainer(tmp_path, max_epochs=1, callbacks=[apart]).fit(
        IdRecorder(), datamodule=DuckStreamDataModule(ready)
    )
    assert apart.logged[0] == expected


# --------------------------------------------------------------------------- DDP, two processes

ODD_ROWS = 301  # two ranks: one row of padding


@pytest.mark.slow
def test_ddp_two_cpu_processes_each_read_their_exact_share(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    pq.write_table(numbers_table(0, 120), source / "a.parquet", row_group_size=40)
    pq.write_table(numbers_table(120, ODD_ROWS), source / "b.parquet", row_group_size=40)
    out = tmp_path / "out"
    out.mkdir()
    data = DuckStreamDataModule(str(source), batch_size=16, seed=3)
    model = IdRecorder(out_dir=str(out))
    runs = tmp_path / "runs.ducklake"
    record = CatalogCallback(runs, "ddp", catalog_options={"data_path": tmp_path / "run-files"})
    fit = trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=2, callbacks=[record])
    fit.fit(model, datamodule=data)
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    share = (ODD_ROWS + 1) // 2
    for epoch in ("0", "1"):
        per_rank = [r["seen"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == share
        union = per_rank[0] + per_rank[1]
        assert set(union) == set(range(ODD_ROWS))
        assert len(union) - len(set(union)) == 1  # the padded row
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]
    assert [r["len"] for r in ranks] == [-(-share // 16)] * 2  # Lightning's count of batches per rank
    # one run, registered by rank 0 only, that knows it ran on two processes
    with LakehouseCatalog(runs, tmp_path / "run-files") as catalog:
        (run_id,) = [r for (r,) in catalog.con.execute("SELECT run_id FROM simulation_runs").fetchall()]
        run = catalog.get_run(run_id)
    assert run.status == "completed"
    assert run.config is not None
    assert run.config["world_size"] == 2
    assert run.metrics is not None
    assert [(e["rows"], e["batches"]) for e in run.metrics["loader_epochs"]] == [(share, 10)] * 2


def test_without_lightning_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from duckstream.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "lightning", None)  # imports as if it were not installed
    monkeypatch.delitem(sys.modules, "duckstream.lightning")
    with pytest.raises(MissingDependencyError, match=r"pip install 'duckstream\[lightning\]'"):
        importlib.import_module("duckstream.lightning")
