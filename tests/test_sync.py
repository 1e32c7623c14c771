"""sync_from_hf on local datasets shaped like COCO Karpathy captions, to a folder and to S3."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

from duckstream.errors import ConfigurationError, SyncError
from duckstream.services import S3Service
from duckstream.stream import stream_batches
from duckstream.sync import SyncResult, sync_from_hf


def karpathy(rows: int, offset: int = 0) -> Any:
    ids = range(offset, offset + rows)
    return datasets.Dataset.from_dict(
        {
            "filepath": ["val2014" if i % 7 == 0 else "train2014" for i in ids],
            "sentids": [[5 * i + k for k in range(5)] for i in ids],
            "filename": [f"COCO_{i:012d}.jpg" for i in ids],
            "imgid": list(ids),
            "split": ["restval" if i % 3 == 0 else "train" for i in ids],
            "sentences": [[f"caption {k} of image {i}" for k in range(5)] for i in ids],
            "cocoid": [100_000 + i for i in ids],
            "url": [f"http://images.example/{i}.jpg" for i in ids],
        }
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DatasetDict saved with save_to_disk: train (3,000 rows) and val (200)."""
    path = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict({"train": karpathy(3_000), "val": karpathy(200, 10_000)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of data files that load_dataset reads (the Hub's loading path)."""
    path = tmp_path_factory.mktemp("hf-files")
    (path / "data").mkdir()
    karpathy(1_000).to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path


def read_ids(files: list[str], **storage: Any) -> list[int]:
    return [
        i for f in files for i in pq.read_table(f, columns=["imgid"], **storage).column("imgid").to_pylist()
    ]


def test_sync_to_a_folder_keeps_the_declared_schema(saved: Path, tmp_path: Path) -> None:
    result = sync_from_hf(saved, "train", dest=tmp_path / "out", rows_per_file=700, row_group_rows=100)
    assert (result.files_uploaded, result.rows_total, result.split) == (5, 3_000, "train")
    assert [Path(f).name for f in result.files] == [f"train-{i:06d}.parquet" for i in range(5)]
    assert read_ids(result.files) == list(range(3_000))
    assert result.bytes_total == sum(Path(f).stat().st_size for f in result.files)
    schema = pq.read_schema(result.files[0])
    expected = datasets.load_from_disk(str(saved))["train"].features.arrow_schema
    assert schema.remove_metadata() == expected.remove_metadata()  # lists stay lists
    assert pq.ParquetFile(result.files[0]).metadata.row_group(0).num_rows == 100


def test_rerun_after_success_uploads_nothing(saved: Path, tmp_path: Path) -> None:
    first = sync_from_hf(saved, "val", dest=tmp_path)
    again = sync_from_hf(saved, "val", dest=tmp_path)
    assert (first.files_uploaded, again.files_uploaded) == (1, 0)
    assert again.rows_total == first.rows_total == 200
    assert again.files == first.files


def test_max_samples_takes_the_first_rows(saved: Path, tmp_path: Path) -> None:
    result = sync_from_hf(saved, "train", dest=tmp_path, max_samples=250, rows_per_file=100)
    assert result.rows_total == 250
    assert read_ids(result.files) == list(range(250))


def test_the_datasets_loading_path_for_data_folders(data_files: Path, tmp_path: Path) -> None:
    result = sync_from_hf(data_files, "train", dest=tmp_path / "out")
    assert result.rows_total == 1_000
    assert sorted(read_ids(result.files)) == list(range(1_000))


def test_target_file_size_decides_rows_per_file(saved: Path, tmp_path: Path) -> None:
    result = sync_from_hf(saved, "train", dest=tmp_path, target_file_bytes=60_000, row_group_rows=100)
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in result.files]
    assert len(sizes) > 2
    assert len(set(sizes[:-1])) == 1  # every file but the last holds the same rows
    assert sizes[0] % 100 == 0


def test_row_groups_hold_about_8_mib_of_rows_unless_told(tmp_path: Path) -> None:
    # 20 KiB images: 409 a row group (8 MiB), not 8,192 (160 MB, read front to back by a
    # shuffled epoch); narrow rows keep 8,192. The manifest keeps the choice for a rerun.
    images = datasets.Dataset.from_dict(
        {"id": list(range(1_000)), "image": [bytes([i % 251]) * 20_480 for i in range(1_000)]}
    )
    images.save_to_disk(str(tmp_path / "images"))
    result = sync_from_hf(tmp_path / "images", "train", dest=tmp_path / "out", rows_per_file=900)
    first = pq.ParquetFile(result.files[0]).metadata
    per_group = 8 * 1024 * 1024 // (20_480 + 8 + 4)  # the image, the id, the binary's offset
    assert [first.row_group(g).num_rows for g in range(first.num_row_groups)] == [per_group, per_group, 82]
    manifest_path = tmp_path / "out" / "_duckstream_manifest-train.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["row_group_rows"] == per_group
    # A run that stopped after its first file: the rerun writes the rest in the row groups the
    # manifest holds (set apart here from what sizing would give), not sized anew.
    last = manifest["files"].pop()
    (tmp_path / "out" / last["name"]).unlink()
    manifest_path.write_text(json.dumps({**manifest, "complete": False, "row_group_rows": 30}))
    rerun = sync_from_hf(tmp_path / "images", "train", dest=tmp_path / "out", rows_per_file=900)
    assert rerun.files_uploaded == 1
    second = pq.ParquetFile(rerun.files[1]).metadata
    assert [second.row_group(g).num_rows for g in range(second.num_row_groups)] == [30, 30, 30, 10]
    narrow = sync_from_hf(tmp_path / "images", "train", dest=tmp_path / "told", row_group_rows=50)
    assert pq.ParquetFile(narrow.files[0]).metadata.row_group(0).num_rows == 50
    karpathy(9_000).save_to_disk(str(tmp_path / "captions"))
    captions = sync_from_hf(tmp_path / "captions", "train", dest=tmp_path / "captions-out")
    assert pq.ParquetFile(captions.files[0]).metadata.row_group(0).num_rows == 8_192


@pytest.mark.services
def test_sync_to_s3_and_rerun(saved: Path, s3_server: S3Service, s3_bucket: str) -> None:
    keys: dict[str, Any] = {
        "s3_endpoint_url": s3_server.endpoint,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
    }
    result = sync_from_hf(saved, "train", s3_bucket, "coco/karpathy", rows_per_file=1_000, **keys)
    assert (result.files_uploaded, result.rows_total, result.bucket, result.prefix) == (
        3,
        3_000,
        s3_bucket,
        "coco/karpathy",
    )
    assert result.files[0] == f"s3://{s3_bucket}/coco/karpathy/train-000000.parquet"
    listed = s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket, Prefix="coco/karpathy/")
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert names == ["_duckstream_manifest-train.json", *(f"train-{i:06d}.parquet" for i in range(3))]
    from duckstream.stream import stream_batches

    streamed = [
        i
        for b in stream_batches(
            f"s3://{s3_bucket}/coco/karpathy",
            "SELECT imgid FROM source",
            s3_endpoint=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
        )
        for i in b.column("imgid").to_pylist()
    ]
    assert streamed == list(range(3_000))
    again = sync_from_hf(saved, "train", s3_bucket, "coco/karpathy", rows_per_file=1_000, **keys)
    assert (again.files_uploaded, again.rows_total) == (0, 3_000)


@pytest.mark.slow
def test_a_killed_sync_resumes_with_every_row_once(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import time
        import pyarrow.parquet as pq
        from duckstream.sync import sync_from_hf
        write_table = pq.write_table
        def slow(*args, **kwargs):  # a slow disk, so the kill lands mid-way
            time.sleep(0.3)
            return write_table(*args, **kwargs)
        pq.write_table = slow
        sync_from_hf({str(saved)!r}, "train", dest={str(out)!r}, rows_per_file=300, row_group_rows=50)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    manifest = out / "_duckstream_manifest-train.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["files"]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = json.loads(manifest.read_text())
    assert not written["complete"]
    assert 2 <= len(written["files"]) < 10
    result = sync_from_hf(saved, "train", dest=out, rows_per_file=300, row_group_rows=50)
    assert result.files_uploaded == 10 - len(written["files"])
    assert result.rows_total == 3_000
    assert read_ids(result.files) == list(range(3_000))  # every row once, in order
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert leftovers == [] or all(name.endswith(".partial") for name in leftovers)
    parquet = sorted(p.name for p in out.glob("*.parquet"))
    assert parquet == [f"train-{i:06d}.parquet" for i in range(10)]


def test_unknown_split_names_the_splits(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(SyncError, match=r"no split 'test'; its splits are \['train', 'val'\]"):
        sync_from_hf(saved, "test", dest=tmp_path)
    assert not list(tmp_path.glob("*.parquet"))


def test_unknown_dataset_id_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SyncError, match="cannot load dataset 'no-such-user/no-such-dataset'"):
        sync_from_hf("no-such-user/no-such-dataset", "train", dest=tmp_path)
    assert not list(tmp_path.glob("*"))


def test_a_different_sync_into_the_same_place_is_refused(saved: Path, tmp_path: Path) -> None:
    sync_from_hf(saved, "val", dest=tmp_path)
    with pytest.raises(SyncError, match="records a sync of"):
        sync_from_hf(saved, "val", dest=tmp_path, max_samples=10)


def test_one_destination_exactly(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="exactly one destination"):
        sync_from_hf(saved, "val")
    with pytest.raises(ConfigurationError, match="exactly one destination"):
        sync_from_hf(saved, "val", bucket="b", dest=tmp_path)


@pytest.mark.services
def test_missing_bucket_and_no_write_permission(saved: Path, s3_server: S3Service, s3_bucket: str) -> None:
    with pytest.raises(SyncError, match="does not exist"):
        sync_from_hf(
            saved,
            "val",
            "no-such-bucket-here",
            "x",
            s3_endpoint_url=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
        )
    reader = s3_server.settings(read_only=True)
    with pytest.raises(SyncError, match="may not write") as raised:
        sync_from_hf(
            saved,
            "val",
            s3_bucket,
            "x",
            s3_endpoint_url=s3_server.endpoint,
            s3_access_key=reader.access_key,
            s3_secret_key=reader.secret_key,
        )
    assert str(reader.secret_key) not in str(raised.value)
    listed = s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket)
    assert listed.get("KeyCount", 0) == 0


def test_ingest_command(saved: Path, tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    code, text = run_cli(
        "ingest", str(saved), "--split", "val", "--dest", str(tmp_path), "--rows-per-file", "64"
    )
    assert code == 0
    assert text.startswith("val: 200 rows in 4 files")
    assert "4 written now" in text
    code, again = run_cli(
        "ingest", str(saved), "--split", "val", "--dest", str(tmp_path), "--rows-per-file", "64"
    )
    assert "0 written now" in again


def test_ingest_command_user_error_is_one_line(saved: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "duckstream.cli",
            "ingest",
            str(saved),
            "--split",
            "nope",
            "--dest",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("duckstream: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no split 'nope'" in result.stderr


def test_append_into_a_lake_table_adds_each_key_once(saved: Path, tmp_path: Path) -> None:
    from duckstream.catalog import LakehouseCatalog

    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "lake-files") as cat:
        first = sync_from_hf(
            saved, "train", dest=tmp_path / "a", max_samples=1_000, catalog=cat, table="captions", key="imgid"
        )
        again = sync_from_hf(
            saved, "train", dest=tmp_path / "a", max_samples=1_000, catalog=cat, table="captions", key="imgid"
        )
        # the table gained a column since: appends still match columns by name
        cat.con.execute("ALTER TABLE captions ADD COLUMN quality DOUBLE")
        more = sync_from_hf(
            saved, "train", dest=tmp_path / "b", max_samples=1_500, catalog=cat, table="captions", key="imgid"
        )
        rows = cat.con.execute("SELECT count(*), count(DISTINCT imgid), max(imgid) FROM captions").fetchall()
        kinds = cat.con.execute("SELECT column_name, column_type FROM (DESCRIBE captions)").fetchall()
        stored = [
            i
            for batch in stream_batches(cat.table("captions"), "SELECT imgid FROM source")
            for i in batch.column("imgid").to_pylist()
        ]
        source = [row["imgid"] for row in datasets.load_from_disk(str(saved))["train"].select(range(1_500))]
        # 20 files appended at once: DuckDB's parallel insert reorders them unless told not to
        sync_from_hf(
            saved, "train", dest=tmp_path / "d", rows_per_file=150, catalog=cat, table="many", key="imgid"
        )
        many = [
            i
            for batch in stream_batches(cat.table("many"), "SELECT imgid FROM source")
            for i in batch.column("imgid").to_pylist()
        ]
        everything = [row["imgid"] for row in datasets.load_from_disk(str(saved))["train"]]
    assert (first.files_uploaded, again.files_uploaded, more.rows_total) == (1, 0, 1_500)
    assert rows == [(1_500, 1_500, 1_499)]
    assert stored == source  # storage order is the dataset's order
    assert many == everything
    assert ("sentences", "VARCHAR[]") in kinds
    with pytest.raises(ConfigurationError, match="together"):
        sync_from_hf(saved, "val", dest=tmp_path / "c", table="captions")


# --------------------------------------------------------------------------- concurrent appends


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.services)])
def catalogs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens the catalog each appender uses: on PostgreSQL a catalog (a connection) of its own;
    a DuckDB-file catalog admits one writing catalog, so its appenders share that one."""
    from duckstream.catalog import LakehouseCatalog

    if request.param == "file":
        shared = LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "lake-files")
        yield lambda: shared
        shared.close()
        return
    server = request.getfixturevalue("postgres_server")
    dsn = server.dsn(request.getfixturevalue("pg_database"))
    opened: list[LakehouseCatalog] = []

    def open_one() -> LakehouseCatalog:
        opened.append(LakehouseCatalog(dsn, tmp_path / "lake-files"))
        return opened[-1]

    yield open_one
    for catalog in opened:
        catalog.close()


def in_lockstep(actions: list[Callable[[], Any]]) -> list[BaseException]:
    """Run ``actions`` on threads released together by a barrier; the errors they raised."""
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=60)
            action()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
        assert not thread.is_alive(), "an append did not finish in 240 s"
    return errors


def keyed_sync(saved: Path, dest: Path, rows: int, catalog: Any, table: str) -> SyncResult:
    return sync_from_hf(
        saved,
        "train",
        dest=dest,
        max_samples=rows,
        rows_per_file=500,
        catalog=catalog,
        table=table,
        key="imgid",
    )


@pytest.mark.slow
def test_concurrent_appends_of_overlapping_keys_store_each_key_once(
    saved: Path, tmp_path: Path, catalogs: Callable[[], Any]
) -> None:
    first, second = catalogs(), catalogs()
    for dest, rows in (("a", 2_000), ("b", 3_000)):
        sync_from_hf(saved, "train", dest=tmp_path / dest, max_samples=rows, rows_per_file=500)
    # The files are in place, so each call below only appends and the two appends start
    # together. One race can miss (a thread held up until the other committed): three tables.
    tables = [f"captions_{n}" for n in range(3)]
    for table in tables:
        sync_from_hf(saved, "val", dest=tmp_path / "base", catalog=first, table=table, key="imgid")
    for table in tables:
        errors = in_lockstep(
            [
                partial(keyed_sync, saved, tmp_path / "a", 2_000, first, table),
                partial(keyed_sync, saved, tmp_path / "b", 3_000, second, table),
            ]
        )
        assert errors == []
    count = "SELECT count(*), count(DISTINCT imgid) FROM {}"
    assert [first.con.execute(count.format(t)).fetchall() for t in tables] == [[(3_200, 3_200)]] * 3
    snapshot = first.current_snapshot()
    keyed_sync(saved, tmp_path / "a", 2_000, first, tables[0])
    keyed_sync(saved, tmp_path / "b", 3_000, second, tables[0])
    assert first.con.execute(count.format(tables[0])).fetchall() == [(3_200, 3_200)]
    assert first.current_snapshot() == snapshot  # a rerun adds nothing, not even an empty snapshot


@pytest.mark.slow
def test_concurrent_first_appends_create_the_table_once(
    saved: Path, tmp_path: Path, catalogs: Callable[[], Any]
) -> None:
    first, second = catalogs(), catalogs()
    for dest, rows in (("a", 2_000), ("b", 3_000)):
        sync_from_hf(saved, "train", dest=tmp_path / dest, max_samples=rows, rows_per_file=500)
    # Both create the table at once; DuckLake refuses the later commit, which must be retried.
    errors = in_lockstep(
        [
            lambda: keyed_sync(saved, tmp_path / "a", 2_000, first, "fresh"),
            lambda: keyed_sync(saved, tmp_path / "b", 3_000, second, "fresh"),
        ]
    )
    assert errors == []
    assert first.con.execute("SELECT count(*), count(DISTINCT imgid) FROM fresh").fetchall() == [
        (3_000, 3_000)
    ]
