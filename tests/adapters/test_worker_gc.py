"""A DataLoader worker freezes the objects it inherited (adapters.worker_gc); the training
process's collector is left alone."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.stream import DuckStreamDataset, DuckStreamLoader


def frozen_objects(item: Any) -> int:
    return gc.get_freeze_count()


def test_a_worker_freezes_what_it_inherited_and_the_training_process_does_not(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": list(range(64))}), tmp_path / "part.parquet")
    dataset = DuckStreamDataset(tmp_path, "SELECT id FROM source", batch_size=8, transform=frozen_objects)
    before = gc.get_freeze_count()
    in_workers = list(DuckStreamLoader(dataset, num_workers=2))
    assert len(in_workers) == 8
    assert all(count > before for count in in_workers)
    assert gc.get_freeze_count() == before
    assert list(DuckStreamLoader(dataset, num_workers=0)) == [before] * 8
