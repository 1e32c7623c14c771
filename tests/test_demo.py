"""The demo's caption dataset: Karpathy's shape, deterministic, every split present; the
walkthrough's refusal of a folder made with other parameters, its command's help and its tables."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.demo import (
    CAPTION_SCHEMA,
    caption_table,
    make_caption_dataset,
    run_walkthrough,
    save_caption_dataset,
)
from duckstream.demo.frame import WalkthroughSettings
from duckstream.demo.render import box_table
from duckstream.errors import ConfigurationError
from tests.dev_install import require


@settings(max_examples=40, deadline=None)
@given(images=st.integers(4, 400), seed=st.integers(0, 2**32 - 1))
def test_caption_table_has_karpathys_shape(images: int, seed: int) -> None:
    table = caption_table(images, seed=seed)
    assert table.schema == CAPTION_SCHEMA
    rows = table.to_pylist()
    assert [r["imgid"] for r in rows] == list(range(images))
    splits = Counter(r["split"] for r in rows)
    assert set(splits) == {"train", "restval", "val", "test"}
    assert splits["val"] == splits["test"] == max(1, round(images * 0.05))
    sentids = [i for r in rows for i in r["sentids"]]
    assert sentids == list(range(len(sentids)))  # one id per caption, in order, none shared
    for row in rows:
        assert 5 <= len(row["sentences"]) == len(row["sentids"]) <= 7
        assert all(s[0].isupper() and s.endswith(".") for s in row["sentences"])
        assert row["filepath"] == ("val2014" if row["split"] in ("val", "test") else "train2014")
        assert str(row["cocoid"]) in row["filename"]
        assert str(row["cocoid"]) in row["url"]
    assert caption_table(images, seed=seed) == table  # deterministic


def test_seeds_give_different_captions() -> None:
    a, b = caption_table(50, seed=1), caption_table(50, seed=2)
    assert a.column("sentences") != b.column("sentences")
    with pytest.raises(ValueError, match="at least 1"):
        caption_table(0)


def test_make_caption_dataset_splits_the_rows_into_files(tmp_path: Path) -> None:
    paths = make_caption_dataset(tmp_path, images=101, files=3, seed=4, row_group_size=16)
    assert [p.name for p in paths] == [f"captions-{i:06d}.parquet" for i in range(3)]
    read = [pq.read_table(p) for p in paths]
    assert sum(t.num_rows for t in read) == 101
    assert [i for t in read for i in t.column("imgid").to_pylist()] == list(range(101))
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 3  # 33 rows in groups of 16


def test_save_caption_dataset_groups_splits_like_the_hub(tmp_path: Path) -> None:
    datasets = require("datasets")
    path = save_caption_dataset(tmp_path / "saved", images=120, seed=5, renames={"filename": "image_file"})
    saved = datasets.load_from_disk(str(path))
    assert sorted(saved) == ["test", "train", "validation"]
    rows = caption_table(120, seed=5).to_pylist()
    expected = {
        "train": [r["imgid"] for r in rows if r["split"] in ("train", "restval")],
        "validation": [r["imgid"] for r in rows if r["split"] == "val"],
        "test": [r["imgid"] for r in rows if r["split"] == "test"],
    }
    assert {name: saved[name]["imgid"] for name in saved} == expected
    assert "image_file" in saved["train"].column_names
    assert "filename" not in saved["train"].column_names
    assert saved["train"].features["sentences"].feature.dtype == "string"


def test_a_folder_made_with_other_parameters_is_refused(tmp_path: Path) -> None:
    require("wandb")
    require("torch")
    (tmp_path / "walkthrough.json").write_text('{"images": 40, "seed": 0}')
    with pytest.raises(ConfigurationError, match="made with") as raised:
        run_walkthrough(WalkthroughSettings(tmp_path, images=60), echo=lambda _: None)
    assert "another folder" in str(raised.value)
    assert not (tmp_path / "hf-coco-karpathy").exists()


def test_demo_help_shows_the_defaults_but_never_the_catalog_password() -> None:
    env = {**os.environ, "DUCKSTREAM_CATALOG": "postgresql://ducklake:hunter2-secret@db:5432/lake"}
    result = subprocess.run(
        [sys.executable, "-m", "duckstream.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
    )
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for shown in (
        "--dir DIR the folder it works in (default duckstream-demo)",
        "(default 2000)",
        "seed of the generated dataset (default 0)",
        "(default duckstream-walkthrough)",
        "(default $DUCKSTREAM_CATALOG, else a catalog file under --dir)",
        "(default $DUCKSTREAM_S3_ENDPOINT;",
    ):
        assert shown in help_text
    assert "hunter2-secret" not in result.stdout


def test_box_tables_keep_every_cell_whole() -> None:
    path = "/home/someone/projects/with-a-long-name/duckstream-demo/raw/validation-000000.parquet"
    table = pa.table({"split": ["validation", "train"], "files": [1, 12], "path": [path, "short"]})
    lines = box_table(table).splitlines()
    assert lines[1].split("│")[1:-1] == ["   split    ", " files ", "path".center(len(path) + 2)]
    assert lines[3] == f"│ validation │     1 │ {path} │"
    assert lines[4] == f"│ train      │    12 │ {'short'.ljust(len(path))} │"
    assert len({len(line) for line in lines}) == 1  # one width: no cell wrapped onto a second line
    assert box_table(table, max_rows=1).splitlines()[-1] == "(1 more rows)"
