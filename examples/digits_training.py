"""A real training run from the lakehouse: handwritten digits, a small CNN, a recorded run.

scikit-learn's bundled digits (1,797 real 8x8 images) are ingested into a DuckLake table of an
embedded catalog (a local catalog file and a local folder). A small CNN trains on the table
through ``DuckStreamDataModule``; ``CatalogCallback`` records the run (config, seed, the
snapshot it read, loader statistics, final metrics) and W&B logs offline. Afterwards the table
moves on (new rows), and the first epoch's batch order is rebuilt from the snapshot the run
row names: it is the same.

    python examples/digits_training.py --workdir /tmp/digits [--epochs 12] [--no-wandb]

Needs ``pip install 'duckstream[dev]'`` (torch, lightning, wandb, scikit-learn).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch import nn

from duckstream.catalog import LakehouseCatalog
from duckstream.lightning import CatalogCallback, DuckStreamDataModule, LoaderMetricsCallback
from duckstream.stream import DuckStreamDataset, DuckStreamLoader

TABLE = "digits"
# DuckLake stores the pixels as a list; casting to FLOAT[64] makes them one tensor per batch.
TRAIN_SQL = "SELECT id, pixels::FLOAT[64] AS pixels, label FROM source WHERE split = 'train'"
VAL_SQL = "SELECT id, pixels::FLOAT[64] AS pixels, label FROM source WHERE split = 'val'"
EXPERIMENT = "digits-cnn"


@dataclass(frozen=True)
class DigitsResult:
    """What one run of the example produced."""

    run_id: str
    snapshot: int  # the table snapshot the run trained on, as its catalog row names it
    val_accuracy: float
    first_epoch_batches: list[list[int]]  # ids of each training batch of epoch 0, in order
    reproduced: bool  # the snapshot and seed in the run row rebuild that order exactly


def digits_table() -> pa.Table:
    """scikit-learn's digits as rows: id, 64 pixels (0..16), label, and a fixed split."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    images = np.asarray(digits.data, dtype=np.float32)
    ids = np.arange(len(images), dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 64),
            "label": np.asarray(digits.target, dtype=np.int64),
            "split": pa.array(np.where(ids % 5 == 0, "val", "train")),  # 360 val, 1,437 train
        }
    )


def ingest(catalog: LakehouseCatalog) -> None:
    """Create the digits table once; a rerun finds it and writes nothing."""
    exists = catalog.con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = ?",
        [catalog.alias, TABLE],
    ).fetchone()
    if exists is not None and exists[0]:
        return
    rows = digits_table()
    catalog.con.register("digits_rows", rows)
    try:
        catalog.con.execute(
            f"CREATE TABLE {TABLE} AS SELECT id, pixels::FLOAT[] AS pixels, label, split FROM digits_rows"
        )
    finally:
        catalog.con.unregister("digits_rows")


class DigitsCNN(L.LightningModule):
    """Two convolutions and a linear head over 8x8 images."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )
        self.first_epoch_batches: list[list[int]] = []
        self._correct = 0
        self._seen = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(pixels.float().view(-1, 1, 8, 8) / 16.0)
        return logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 0:
            self.first_epoch_batches.append(batch["id"].tolist())
        loss = nn.functional.cross_entropy(self(batch["pixels"]), batch["label"])
        self.log("train_loss", loss, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        predicted = self(batch["pixels"]).argmax(dim=1)
        self._correct += int((predicted == batch["label"]).sum())
        self._seen += len(batch["label"])

    def on_validation_epoch_end(self) -> None:
        self.log("val_acc", self._correct / max(self._seen, 1))
        self._correct = self._seen = 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def first_epoch_order(
    catalog: LakehouseCatalog, snapshot: int, seed: int, batch_size: int
) -> list[list[int]]:
    """The ids of each epoch-0 training batch, rebuilt from the table at ``snapshot``."""
    dataset = DuckStreamDataset(
        catalog.table(TABLE, snapshot), TRAIN_SQL, batch_size=batch_size, shuffle=True, seed=seed
    )
    return [batch["id"].tolist() for batch in DuckStreamLoader(dataset)]


def run(
    workdir: str | os.PathLike[str],
    *,
    epochs: int = 12,
    batch_size: int = 64,
    seed: int = 0,
    use_wandb: bool = True,
) -> DigitsResult:
    """Ingest, train with the run recorded, then move the table on and rebuild epoch 0's order."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    with LakehouseCatalog(root / "digits.ducklake", root / "digits-files") as catalog:
        ingest(catalog)
        table = catalog.table(TABLE)  # pinned: later writes do not change what this run reads
        data = DuckStreamDataModule(
            table,
            val=DuckStreamDataset(table, VAL_SQL, batch_size=256),
            sql=TRAIN_SQL,
            batch_size=batch_size,
            seed=seed,
        )
        model = DigitsCNN()
        record = CatalogCallback(catalog, EXPERIMENT, description="small CNN on sklearn digits")
        logger: Any = False
        if use_wandb:
            from lightning.pytorch.loggers import WandbLogger

            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            logger = WandbLogger(project="duckstream-digits", save_dir=str(root), offline=True)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=logger,
            callbacks=[record, LoaderMetricsCallback()],
            deterministic=True,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(root),
        )
        trainer.fit(model, datamodule=data)
        if use_wandb:
            import wandb

            wandb.finish()
        assert record.run_id is not None
        row = catalog.get_run(record.run_id)
        assert row.snapshots is not None
        assert row.config is not None
        snapshot = int(row.snapshots["train"]["version"])
        # The table moves on: a later snapshot with more rows. The run's snapshot does not.
        catalog.con.execute(
            f"INSERT INTO {TABLE} SELECT id + 10000, pixels, label, split FROM {TABLE} WHERE id < 50"
        )
        again = first_epoch_order(catalog, snapshot, int(row.config["seed"]), batch_size)
        accuracy = float(trainer.callback_metrics["val_acc"])
    return DigitsResult(
        run_id=record.run_id,
        snapshot=snapshot,
        val_accuracy=accuracy,
        first_epoch_batches=model.first_epoch_batches,
        reproduced=again == model.first_epoch_batches,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", default="digits-lake", help="where the catalog, files and logs go")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-wandb", action="store_true", help="skip the offline W&B run")
    args = parser.parse_args(argv)
    result = run(
        args.workdir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        use_wandb=not args.no_wandb,
    )
    print(f"run {result.run_id}: trained on snapshot {result.snapshot} of {TABLE!r}")
    print(f"validation accuracy {result.val_accuracy:.4f}")
    print(f"first epoch rebuilt from the snapshot: {'same order' if result.reproduced else 'DIFFERENT'}")
    return 0 if result.reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
