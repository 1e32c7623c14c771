"""examples/digits_training.py end to end on CPU: accuracy, the run row's snapshot, the batch order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
from tests.wandb_records import history, offline_run_files

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_training.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_training", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_digits_example_trains_records_and_reproduces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    example = load_example()
    result = example.run(tmp_path / "lake", epochs=8, seed=0)
    assert result.val_accuracy >= 0.95
    assert result.reproduced

    with LakehouseCatalog(
        tmp_path / "lake" / "digits.ducklake", tmp_path / "lake" / "digits-files"
    ) as catalog:
        run = catalog.get_run(result.run_id)
        assert run.status == "completed"
        assert run.snapshots is not None
        assert run.config is not None
        assert run.metrics is not None
        assert run.snapshots["train"] == {"table": "digits", "version": result.snapshot}
        assert run.metrics["val_acc"] == pytest.approx(result.val_accuracy)
        assert [e["rows"] for e in run.metrics["loader_epochs"]] == [1_437] * 8
        # The table moved on after the run; its snapshot still holds the 1,797 images it trained on.
        assert catalog.table("digits").version > result.snapshot
        pinned = catalog.con.execute(f"SELECT count(*) FROM digits AT (VERSION => {result.snapshot})")
        assert pinned.fetchall() == [(1_797,)]
        assert catalog.con.execute("SELECT count(*) FROM digits").fetchall() == [(1_847,)]
        # Rebuilt here, independently of the example, from what the run row says.
        dataset = DuckStreamDataset(
            catalog.table("digits", run.snapshots["train"]["version"]),
            example.TRAIN_SQL,
            batch_size=run.config["config"]["data"]["batch_size"],
            shuffle=True,
            seed=run.config["seed"],
        )
        rebuilt = [batch["id"].tolist() for batch in DuckStreamLoader(dataset)]
    assert rebuilt == result.first_epoch_batches
    assert sorted(i for batch in rebuilt for i in batch) == [i for i in range(1_797) if i % 5]
    # the offline W&B run holds the loader statistics of every epoch
    (run_file,) = offline_run_files(tmp_path / "lake")
    epochs = [row["loader/epoch"] for row in history(run_file) if "loader/epoch" in row]
    assert epochs == list(range(8))


def test_digits_table_holds_the_real_images() -> None:
    table = load_example().digits_table()
    assert table.num_rows == 1_797
    assert table.column("pixels").type.list_size == 64
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
    assert table.column("split").to_pylist().count("val") == 360
