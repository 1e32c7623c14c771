"""One rank of the multi-node rehearsal in tests/test_multinode.py, started by ``torchrun``.

Every rank runs this same script in the same environment, as the README's "Multi-node training"
section tells users to: the S3 endpoint and keys come from ``DUCKSTREAM_S3_ENDPOINT``,
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, the catalog's DSN and data path from the
command line. Each rank opens the PostgreSQL catalog, pins the table at the given snapshot and
fits a Lightning model under DDP (gloo, CPU) with a ``CatalogCallback``; then it writes what it
saw to ``<out>/rank-<RANK>.json``: the ids of each epoch, how often it planned the lake table,
its plan's fingerprint and scan, and the run id its callback recorded.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from duckstream.catalog import LakehouseCatalog
from duckstream.core import lake_planning
from duckstream.lightning import CatalogCallback, DuckStreamDataModule
from duckstream.stream import DuckStreamDataset


class IdModel(L.LightningModule):
    """Fits one weight on ``value`` and keeps the ids of each epoch's batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}
        self.backend: str | None = None

    def on_train_start(self) -> None:
        self.backend = str(torch.distributed.get_backend())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch["id"].tolist())
        loss: torch.Tensor = ((self.weight * batch["value"].float() - 1.0) ** 2).mean()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.001)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    # Counts this process's plans of a lake table (each one queries the catalog for the table's
    # files at the snapshot), and plans them for real.
    planned: list[int] = []
    plan_lake = lake_planning.prepare_lake

    def counted(table: Any, *rest: Any, **options: Any) -> Any:
        planned.append(table.version)
        return plan_lake(table, *rest, **options)

    vars(lake_planning)["prepare_lake"] = counted

    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = int(os.environ["WORLD_SIZE"]) // local_world
    with LakehouseCatalog(args.dsn, args.data_path) as catalog:  # S3 settings from the environment
        table = catalog.table(args.table, version=args.version)
        data = DuckStreamDataModule(
            table,
            sql="SELECT id, value FROM source",
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            seed=7,
        )
        record = CatalogCallback(catalog, args.experiment, config={"job": "multinode"})
        trainer = L.Trainer(
            accelerator="cpu",
            strategy="ddp",
            devices=local_world,
            num_nodes=nodes,
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[record],
        )
        model = IdModel()
        trainer.fit(model, datamodule=data)
        dataset = data.dataset("train")
        assert isinstance(dataset, DuckStreamDataset)
        assert dataset.plan.lake is not None
        report = {
            "rank": trainer.global_rank,
            "env_rank": int(os.environ["RANK"]),
            "node": int(os.environ["GROUP_RANK"]),
            "local_rank": int(os.environ["LOCAL_RANK"]),
            "agent": os.getppid(),  # the torchrun of this rank's node
            "world_size": trainer.world_size,
            "backend": model.backend,
            "planned": planned,
            "fingerprint": dataset.plan.fingerprint,
            "scan": dataset.plan.lake.scan,
            "files": list(dataset.plan.files),
            "seen": model.seen,
            "len": trainer.num_training_batches,
            "run_id": record.run_id,
        }
    Path(args.out, f"rank-{report['env_rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
