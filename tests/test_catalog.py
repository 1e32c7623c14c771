"""LakehouseCatalog on the embedded default and on PostgreSQL + S3: the lakehouse patterns,
run tracking, pinned tables as stream sources, and bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream import redact as redact_module
from duckstream.catalog import LakehouseCatalog, refused_credentials
from duckstream.core.lake import open_pinned
from duckstream.core.world import World
from duckstream.errors import CatalogError, ConfigurationError, DuckstreamError
from duckstream.services import PostgresService, S3Service
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, stream_batches
from tests.conftest import upload_dir
from tests.plans import plan_nodes


@dataclass
class Lake:
    """One backend: how to open its catalog and where its raw Parquet lives."""

    open: Callable[[], LakehouseCatalog]
    raw: str  # a glob of the raw Parquet files
    secrets: tuple[str, ...]


def captions(start: int, stop: int) -> pa.Table:
    ids = list(range(start, stop))
    return pa.table(
        {
            "imgid": pa.array(ids, pa.int64()),
            "split": pa.array(["val" if i % 10 == 0 else "train" for i in ids]),
            "caption": pa.array([" ".join(["word"] * (3 + i % 9)) for i in ids]),
        }
    )


@pytest.fixture(params=["embedded", "postgres-s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(2):
        pq.write_table(
            captions(index * 500, (index + 1) * 500), raw / f"part-{index}.parquet", row_group_size=100
        )
    if request.param == "embedded":
        yield Lake(
            lambda: LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files"), f"{raw}/*.parquet", ()
        )
        return
    s3: S3Service = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    pg: PostgresService = request.getfixturevalue("postgres_server")
    database: str = request.getfixturevalue("pg_database")
    upload_dir(s3.boto3_client(), bucket, "raw", raw)
    yield Lake(
        lambda: LakehouseCatalog(
            pg.dsn(database), f"s3://{bucket}/lake", s3.endpoint, s3.access_key, s3.secret_key
        ),
        f"s3://{bucket}/raw/*.parquet",
        (pg.password, s3.secret_key, s3.access_key),
    )


def ids(batches: Any) -> list[int]:
    return [i for b in batches for i in b.column("imgid").to_pylist()]


# --------------------------------------------------------------------------- the patterns


def test_only_a_postgres_catalog_loads_the_postgres_extension(lake: Lake) -> None:
    def loaded(con: Any) -> set[str]:
        rows = con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
        return {name for (name,) in rows}

    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        table = cat.table("captions")
        postgres = cat.location.kind == "postgres"
        assert ("postgres_scanner" in loaded(cat.con)) is postgres
        assert {"ducklake", "httpfs"} <= loaded(cat.con)
    # With the catalog closed, a pinned table opens a connection of its own.
    con = open_pinned(table)
    try:
        assert ("postgres_scanner" in loaded(con)) is postgres
        assert con.execute(f"SELECT count(*) FROM {table.scan}").fetchone() == (1_000,)
    finally:
        con.close()


def test_schema_evolution_keeps_the_first_files(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        before = cat.con.execute("SELECT data_file FROM ducklake_list_files('lake', 'captions')").fetchall()
        cat.con.execute("ALTER TABLE captions ADD COLUMN words INTEGER")
        after_add = cat.con.execute(
            "SELECT data_file FROM ducklake_list_files('lake', 'captions')"
        ).fetchall()
        cat.con.execute("UPDATE captions SET words = len(string_split(caption, ' '))")
        assert after_add == before  # ADD COLUMN rewrote no Parquet file
        rows = cat.con.execute("SELECT count(*), count(words), max(words) FROM captions").fetchall()
        assert rows == [(1_000, 1_000, 11)]


def test_time_travel_shows_the_table_before_the_column(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        version = cat.current_snapshot()
        cat.con.execute("ALTER TABLE captions ADD COLUMN words INTEGER")
        old = [
            r[0]
            for r in cat.con.execute(f"DESCRIBE SELECT * FROM captions AT (VERSION => {version})").fetchall()
        ]
        new = [r[0] for r in cat.con.execute("DESCRIBE SELECT * FROM captions").fetchall()]
    assert "words" not in old
    assert "words" in new


def test_cross_plane_join_of_runs_and_data(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        experiment = cat.register_experiment("splits", "one run per split")
        for split in ("train", "val"):
            cat.register_run(experiment.experiment_id, config={"split": split, "lr": 0.01})
        rows = cat.con.execute(
            """SELECT r.config->>'split' AS split, count(c.imgid) AS images
               FROM simulation_runs r JOIN captions c ON c.split = (r.config->>'split')
               GROUP BY ALL ORDER BY split"""
        ).fetchall()
    assert rows == [("train", 900), ("val", 100)]


def test_predicate_pushdown_into_the_lake_scan(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        nodes = plan_nodes(cat.con, "SELECT caption FROM captions WHERE imgid > 900 AND split = 'val'")
    scans = [n for n in nodes if "SCAN" in n["name"]]
    filters = " ".join(str(n.get("extra_info", {}).get("Filters", "")) for n in scans)
    assert "imgid>900" in filters
    assert "split='val'" in filters


def test_incremental_ingest_adds_nothing_the_second_time(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(
            f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}') WHERE imgid < 600"
        )
        ingest = f"""INSERT INTO captions SELECT s.* FROM read_parquet('{lake.raw}') s
                     ANTI JOIN captions c ON c.imgid = s.imgid"""
        cat.con.execute(ingest)
        first = cat.con.execute("SELECT count(*) FROM captions").fetchone()
        files = cat.con.execute("SELECT data_file FROM ducklake_list_files('lake', 'captions')").fetchall()
        cat.con.execute(ingest)
        second = cat.con.execute("SELECT count(*) FROM captions").fetchone()
        assert first == second == (1_000,)
        # the second run wrote nothing: no new data file either
        assert (
            cat.con.execute("SELECT data_file FROM ducklake_list_files('lake', 'captions')").fetchall()
            == files
        )


def test_analytics_over_the_same_files(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        histogram = cat.con.execute(
            "SELECT len(string_split(caption, ' ')) AS words, count(*) FROM captions GROUP BY 1 ORDER BY 1"
        ).fetchall()
        raw = cat.con.execute(
            f"SELECT len(string_split(caption, ' ')) AS words, count(*) FROM read_parquet('{lake.raw}') "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert histogram == raw
    assert sum(n for _, n in histogram) == 1_000


def test_streamable_tiers_each_registered_and_streamed(lake: Lake) -> None:
    tiers = {
        "short": "len(string_split(caption, ' ')) <= 5",
        "medium": "len(string_split(caption, ' ')) BETWEEN 6 AND 8",
        "long": "len(string_split(caption, ' ')) >= 9",
    }
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        table = cat.table("captions")
        seen: Counter[int] = Counter()
        for name, predicate in tiers.items():
            experiment = cat.register_experiment(f"tier-{name}")
            run = cat.register_run(
                experiment.experiment_id,
                config={"tier": name, "where": predicate},
                snapshots={"captions": table.version},
            )
            dataset = DuckStreamDataset(
                table, f"SELECT imgid, caption FROM source WHERE {predicate}", batch_size=50, shuffle=True
            )
            streamed = [
                i for batch in DuckStreamLoader(dataset, num_workers=2) for i in batch["imgid"].tolist()
            ]
            assert len(streamed) == dataset.num_rows
            seen.update(streamed)
            done = cat.complete_run(run.run_id, metrics={"rows": len(streamed)})
            assert done.metrics == {"rows": len(streamed)}
        assert seen == Counter(range(1_000))  # the tiers partition the table
        runs = cat.con.execute(
            "SELECT count(*) FROM simulation_runs "
            "WHERE status = 'completed' AND (config->>'tier') IS NOT NULL"
        ).fetchone()
        assert runs == (3,)


def test_pinned_table_keeps_its_rows_through_later_writes(lake: Lake) -> None:
    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        cat.con.execute("INSERT INTO captions VALUES (5000, 'train', 'small inlined insert')")
        cat.con.execute("DELETE FROM captions WHERE imgid < 5")
        pinned = cat.table("captions")
        expected = Counter([*range(5, 1_000), 5000])
        cat.con.execute("INSERT INTO captions VALUES (6000, 'train', 'another small one')")
        cat.con.execute("INSERT INTO captions SELECT imgid + 10000, split, caption FROM captions")
        cat.con.execute("UPDATE captions SET caption = 'changed' WHERE imgid < 300")
        cat.con.execute("DELETE FROM captions WHERE imgid BETWEEN 700 AND 750")
        cat.con.execute("CALL ducklake_merge_adjacent_files('lake')")
        seen: Counter[int] = Counter()
        for rank in range(2):
            for worker in range(2):
                seen.update(
                    ids(
                        stream_batches(
                            pinned,
                            "SELECT imgid, caption FROM source",
                            world=World(rank, 2, worker, 2),
                            shuffle=True,
                            even="drop",
                        )
                    )
                )
        assert seen == expected  # 996 rows: divisible by 2, nothing padded or dropped
        captions_at_pin = {
            r["caption"]
            for b in stream_batches(
                pinned,
                "SELECT caption FROM source WHERE imgid = 10",
            )
            for r in b.to_pylist()
        }
        assert captions_at_pin == {"word word word word"}  # not the later UPDATE
        current = cat.table("captions")
        assert current.version > pinned.version
        total = cat.con.execute("SELECT count(*) FROM captions").fetchone()
        assert total is not None
        assert (
            len(
                ids(
                    stream_batches(
                        current,
                    )
                )
            )
            == total[0]
        )


def test_pinned_table_streams_with_two_ranks_and_two_workers_through_the_loader(lake: Lake) -> None:
    from tests.adapters.resume_check import as_rank

    with lake.open() as cat:
        cat.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{lake.raw}')")
        pinned = cat.table("captions")
        cat.con.execute("DELETE FROM captions WHERE imgid >= 900")
        per_rank = []
        for rank in range(2):
            with as_rank(rank, 2):
                dataset = DuckStreamDataset(pinned, "SELECT imgid FROM source", batch_size=64, shuffle=True)
                per_rank.append(
                    [i for b in DuckStreamLoader(dataset, num_workers=2) for i in b["imgid"].tolist()]
                )
    assert len(per_rank[0]) == len(per_rank[1]) == 500
    assert sorted(per_rank[0] + per_rank[1]) == list(range(1_000))


def test_a_user_column_named_filename_streams_like_any_other(lake: Lake) -> None:
    # COCO tables have a `filename` column, which hides DuckLake's virtual column of that name.
    with lake.open() as cat:
        cat.con.execute(
            f"CREATE TABLE images AS SELECT imgid, 'COCO_' || imgid || '.jpg' AS filename "
            f"FROM read_parquet('{lake.raw}')"
        )
        cat.con.execute(
            "INSERT INTO images SELECT imgid + 1000, 'COCO_' || (imgid + 1000) || '.jpg' FROM images"
        )
        cat.con.execute("INSERT INTO images VALUES (5000, 'COCO_5000.jpg')")  # inlined
        cat.con.execute("DELETE FROM images WHERE imgid BETWEEN 100 AND 149")
        pinned = cat.table("images")
        expected = Counter([*range(100), *range(150, 2_000), 5000])
        for num_workers in (0, 2):
            dataset = DuckStreamDataset(
                pinned, "SELECT imgid, filename FROM source", batch_size=128, shuffle=True
            )
            rows = [
                (i, name)
                for batch in DuckStreamLoader(dataset, num_workers=num_workers)
                for i, name in zip(batch["imgid"].tolist(), batch["filename"], strict=True)
            ]
            assert Counter(i for i, _ in rows) == expected
            assert all(name == f"COCO_{i}.jpg" for i, name in rows)
        filtered = stream_batches(pinned, "SELECT imgid FROM source WHERE filename LIKE 'COCO_1%.jpg'")
        assert sorted(i for b in filtered for i in b.column("imgid").to_pylist()) == sorted(
            i for i in expected if str(i).startswith("1")
        )


def test_a_catalog_file_recreated_at_the_same_path_is_not_read_from_a_stale_copy(tmp_path: Path) -> None:
    # Workers read a cached copy of a catalog file's metadata; a new catalog at the same path
    # (same table, same snapshot number) must not be served the old copy.
    cache = tmp_path / "cache"
    for generation in range(2):
        folder = tmp_path / "lake"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        with LakehouseCatalog(folder / "lake.ducklake", folder / "files") as cat:
            cat.con.execute(f"CREATE TABLE t AS SELECT range + {generation * 1000} AS id FROM range(300)")
            dataset = DuckStreamDataset(cat.table("t"), batch_size=100, cache_dir=cache)
            ids = sorted(i for b in DuckStreamLoader(dataset, num_workers=2) for i in b["id"].tolist())
        assert ids == list(range(generation * 1000, generation * 1000 + 300))


# --------------------------------------------------------------------------- the data path


def _stream_ids(table: Any) -> list[int]:
    # Two workers: each attaches the catalog itself, from the pickled table.
    dataset = DuckStreamDataset(table, batch_size=100)
    return sorted(i for b in DuckStreamLoader(dataset, num_workers=2) for i in b["id"].tolist())


def test_a_file_catalog_reopens_by_its_path_alone_with_the_data_path_it_stores(tmp_path: Path) -> None:
    path, files = tmp_path / "lake.ducklake", tmp_path / "own-files"
    with LakehouseCatalog(path, files) as cat:
        cat.con.execute("CREATE TABLE t AS SELECT range AS id FROM range(300)")
    with LakehouseCatalog(path) as cat:
        assert cat.location.data_path == f"{files}/"
        cat.con.execute("INSERT INTO t SELECT range + 300 FROM range(300)")
        assert _stream_ids(cat.table("t")) == list(range(600))
        experiment = cat.register_experiment("by-path")
        assert cat.fail_run(cat.register_run(experiment.experiment_id).run_id, "x").status == "failed"
    with LakehouseCatalog(path, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM t").fetchone() == (600,)
    assert len(list(files.rglob("*.parquet"))) == 2  # the second write went where the first did
    assert not (tmp_path / "lake.ducklake.files").exists()


def test_a_data_path_other_than_the_stored_one_is_refused_at_open(tmp_path: Path) -> None:
    path, files, other = tmp_path / "lake.ducklake", tmp_path / "own-files", tmp_path / "other"
    LakehouseCatalog(path, files).close()
    for read_only in (False, True):
        with pytest.raises(CatalogError) as refused:
            LakehouseCatalog(path, other, read_only=read_only)
        message = str(refused.value)
        assert f"keeps its data files in {files}/" in message
        assert f"not in the data_path given ({other}/)" in message
        assert "open it without data_path" in message
    assert not other.exists()


def test_a_new_catalog_file_opened_by_its_path_keeps_its_files_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "lake.ducklake"
    with LakehouseCatalog(path) as cat:
        assert cat.location.data_path == f"{path}.files/"
        cat.con.execute("CREATE TABLE t AS SELECT range AS id FROM range(300)")
    assert len(list(Path(f"{path}.files").rglob("*.parquet"))) == 1
    with pytest.raises(CatalogError, match="holds no DuckLake catalog to open read-only"):
        LakehouseCatalog(tmp_path / "missing.ducklake", read_only=True)


@pytest.mark.services
def test_a_postgres_catalog_reopens_by_its_dsn_alone(
    postgres_server: PostgresService, pg_database: str, tmp_path: Path
) -> None:
    dsn, files = postgres_server.dsn(pg_database), tmp_path / "pg-files"
    with LakehouseCatalog(dsn, files) as cat:
        cat.con.execute("CREATE TABLE t AS SELECT range AS id FROM range(300)")
    with LakehouseCatalog(dsn) as cat:  # read-write
        assert cat.location.data_path == f"{files}/"
        cat.con.execute("INSERT INTO t SELECT range + 300 FROM range(300)")
        assert _stream_ids(cat.table("t")) == list(range(600))
        experiment = cat.register_experiment("by-dsn")
        run = cat.complete_run(cat.register_run(experiment.experiment_id).run_id)
        assert run.status == "completed"
    assert len(list(files.rglob("*.parquet"))) == 2
    with pytest.raises(CatalogError) as refused:
        LakehouseCatalog(dsn, tmp_path / "elsewhere")
    assert f"keeps its data files in {files}/" in str(refused.value)
    assert postgres_server.password not in str(refused.value)
    fresh = postgres_server.create_database(f"{pg_database}_new")
    with pytest.raises(ConfigurationError, match="a new one needs data_path") as refused_new:
        LakehouseCatalog(fresh)
    with pytest.raises(CatalogError, match="holds no DuckLake catalog to open read-only") as refused_ro:
        LakehouseCatalog(fresh, read_only=True)
    for raised in (refused_new, refused_ro):
        assert postgres_server.password not in str(raised.value)


# --------------------------------------------------------------------------- run tracking


def test_runs_register_complete_and_fail(lake: Lake) -> None:
    with lake.open() as cat:
        experiment = cat.register_experiment("digits", "a small CNN")
        assert cat.register_experiment("digits").experiment_id == experiment.experiment_id
        ok = cat.register_run(experiment.experiment_id, sim_index=3, config={"lr": 0.1}, s3_prefix="s3://b/x")
        assert (ok.status, ok.sim_index, ok.config, ok.finished_at) == ("running", 3, {"lr": 0.1}, None)
        done = cat.complete_run(ok.run_id, metrics={"accuracy": 0.97})
        assert done.status == "completed"
        assert done.finished_at is not None
        assert done.finished_at >= done.started_at
        bad = cat.register_run(experiment.experiment_id)
        failed = cat.fail_run(bad.run_id, ValueError("loss was nan"))
        assert (failed.status, failed.error) == ("failed", "ValueError: loss was nan")
        with pytest.raises(CatalogError, match="already completed"):
            cat.complete_run(ok.run_id)
        with pytest.raises(CatalogError, match="no experiment"):
            cat.register_run("no-such-experiment")
        with pytest.raises(CatalogError, match="no run"):
            cat.get_run("nope")
        statuses = cat.con.execute(
            "SELECT status, count(*) FROM simulation_runs GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert statuses == [("completed", 1), ("failed", 1)]
        assert len({ok.run_id, bad.run_id}) == 2
        assert experiment.experiment_id not in (ok.run_id, bad.run_id)


def test_repr_and_errors_hide_secrets(lake: Lake) -> None:
    with lake.open() as cat:
        shown = repr(cat) + repr(cat.table("simulation_run_log"))
        with pytest.raises(CatalogError) as raised:
            cat.table("no_such_table")
        assert "no_such_table" in str(raised.value)
        with pytest.raises(CatalogError, match="no snapshot 999"):
            cat.table("simulation_run_log", version=999)
    for secret in lake.secrets:
        assert secret not in shown + str(raised.value)


# --------------------------------------------------------------------------- safety and errors


def test_expired_and_cleaned_snapshot_is_an_error_not_a_wrong_result(tmp_path: Path) -> None:
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as cat:
        cat.con.execute("CREATE TABLE t AS SELECT range AS id FROM range(1000)")
        old = cat.table("t")
        cat.con.execute("DELETE FROM t WHERE id < 500")
        cat.con.execute("CALL ducklake_rewrite_data_files('lake', 't', delete_threshold => 0.0)")
        cat.con.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
        cat.con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
        with pytest.raises(CatalogError, match=r"expired|no longer exist"):
            stream_batches(old)
        with pytest.raises(CatalogError, match=f"no snapshot {old.version}|expired"):
            cat.table("t", version=old.version)


def test_a_second_writer_on_a_file_catalog_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "lake.ducklake"
    with LakehouseCatalog(path, tmp_path / "files"):
        script = textwrap.dedent(
            f"""
            import logging
            from duckstream.catalog import LakehouseCatalog
            from duckstream.errors import DuckstreamError
            logging.basicConfig(level=logging.INFO)
            try:
                LakehouseCatalog({str(path)!r}, {str(tmp_path / "files")!r})
            except DuckstreamError as exc:
                print("ERROR", exc)
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        # In this process too, a second catalog on the file is refused the same way.
        with pytest.raises(CatalogError, match=r"already open for writing in this process.*use that"):
            LakehouseCatalog(path, tmp_path / "files")
    assert result.stdout.startswith("ERROR"), result.stdout + result.stderr
    assert "open for writing in another process" in result.stdout
    assert "read_only=True" in result.stdout
    # at once: the other writer keeps the file until it closes, so waiting would only delay this
    assert "retry" not in result.stderr


@pytest.mark.services
def test_a_refused_password_is_known_where_a_secret_masks_part_of_the_reason(
    postgres_server: PostgresService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registered secret that happens to occur inside PostgreSQL's words ("au***tication")
    # must not turn a refused password into an outage to wait out.
    monkeypatch.setattr(redact_module, "_registered", {*redact_module._registered, "then"})
    wrong = f"postgresql://ducklake:wrong-password-123@127.0.0.1:{postgres_server.port}/ducklake"
    began = time.monotonic()
    with pytest.raises(CatalogError, match="PostgreSQL refused the credentials") as raised:
        LakehouseCatalog(wrong, tmp_path / "files")
    assert refused_credentials(raised.value)
    assert time.monotonic() - began < 10
    assert "wrong-password-123" not in str(raised.value)


@pytest.mark.services
def test_unreachable_and_wrong_password_postgres(postgres_server: PostgresService, tmp_path: Path) -> None:
    from duckstream.services import free_port

    wrong = f"postgresql://ducklake:wrong-password-123@127.0.0.1:{postgres_server.port}/ducklake"
    with pytest.raises(CatalogError) as raised:
        LakehouseCatalog(wrong, tmp_path / "files")
    assert "wrong-password-123" not in str(raised.value)
    assert "password authentication failed" in str(raised.value)
    assert "check the user and password" in str(raised.value)
    down = f"postgresql://ducklake:secret-pw-456@127.0.0.1:{free_port()}/ducklake"
    with pytest.raises(DuckstreamError) as unreachable:
        LakehouseCatalog(down, tmp_path / "files")
    assert "secret-pw-456" not in str(unreachable.value)
    assert "connect" in str(unreachable.value).lower()


def _register_many(dsn: str, data_path: str, experiment: str, count: int, out: str) -> None:
    with LakehouseCatalog(dsn, data_path) as cat:
        exp = cat.register_experiment(experiment)
        run_ids = [cat.register_run(exp.experiment_id, sim_index=i).run_id for i in range(count)]
        for run_id in run_ids[::2]:
            cat.complete_run(run_id)
    Path(out).write_text(json.dumps({"experiment": exp.experiment_id, "runs": run_ids}))


@pytest.mark.services
@pytest.mark.slow
def test_two_processes_register_runs_concurrently_on_postgres(
    postgres_server: PostgresService, pg_database: str, tmp_path: Path
) -> None:
    import multiprocessing

    dsn = postgres_server.dsn(pg_database)
    with LakehouseCatalog(dsn, str(tmp_path / "files")):
        pass  # create the tables once, as a deployment would
    context = multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"out-{i}.json") for i in range(2)]
    workers = [
        context.Process(target=_register_many, args=(dsn, str(tmp_path / "files"), "shared", 6, out))
        for out in outs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
        assert worker.exitcode == 0
    results = [json.loads(Path(out).read_text()) for out in outs]
    assert results[0]["experiment"] == results[1]["experiment"]  # get-or-create agreed
    with LakehouseCatalog(dsn, str(tmp_path / "files")) as cat:
        rows = cat.con.execute(
            "SELECT status, count(*) FROM simulation_runs GROUP BY 1 ORDER BY 1"
        ).fetchall()
        experiments = cat.con.execute("SELECT count(*) FROM experiments").fetchone()
    assert rows == [("completed", 6), ("running", 6)]
    assert experiments == (1,)


@pytest.mark.services
def test_commits_that_collide_are_retried(
    postgres_server: PostgresService, pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two catalogs record a run each in lockstep: PostgreSQL holds both commits at the insert of
    # the next snapshot until both wait there, so both claim the same snapshot id and one loses.
    # DuckLake's own retries are off, so the collision reaches the catalog, which must retry.
    import psycopg

    dsn, files = postgres_server.dsn(pg_database), tmp_path / "files"
    with LakehouseCatalog(dsn, files) as setup:
        experiment = setup.register_experiment("collide").experiment_id
    with (
        LakehouseCatalog(dsn, files) as first,
        LakehouseCatalog(dsn, files) as second,
        ThreadPoolExecutor(2) as pool,
        psycopg.connect(dsn, autocommit=True) as watcher,
    ):
        for catalog in (first, second):
            catalog.con.execute("SET ducklake_max_retry_count = 0")
        with psycopg.connect(dsn) as holder:
            holder.execute("LOCK TABLE ducklake_snapshot IN EXCLUSIVE MODE")
            futures = [pool.submit(catalog.register_run, experiment) for catalog in (first, second)]
            waiting = 0
            for _ in range(1200):  # until both commits wait on the lock (at most a minute)
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    [pg_database],
                ).fetchone()[0]  # type: ignore[index]
                if waiting == 2 or any(f.done() for f in futures):
                    break
                time.sleep(0.05)
            assert waiting == 2, "the two commits never met"
            with caplog.at_level(logging.INFO, logger="duckstream"):
                holder.commit()  # both go on: one commits, the other collides
                runs = [future.result(timeout=120) for future in futures]
        recorded = first.con.execute("SELECT run_id FROM simulation_runs ORDER BY run_id").fetchall()
    assert sorted((run.run_id,) for run in runs) == recorded
    retries = [r.getMessage() for r in caplog.records if "commit conflict" in r.getMessage()]
    assert len(retries) == 1, retries


@pytest.mark.services
@pytest.mark.slow
def test_racing_registrations_of_one_name_agree_on_its_id(
    postgres_server: PostgresService, pg_database: str, tmp_path: Path
) -> None:
    # Two catalogs register each new name in lockstep. A registration whose transaction began
    # first but committed second used to win the name after the other had already returned its
    # own id, which then named no experiment.
    dsn, files = postgres_server.dsn(pg_database), tmp_path / "files"
    barrier = threading.Barrier(2)

    def register(catalog: LakehouseCatalog, name: str) -> str:
        barrier.wait(timeout=60)
        experiment = catalog.register_experiment(name)
        catalog.register_run(experiment.experiment_id)
        return experiment.experiment_id

    with (
        LakehouseCatalog(dsn, files) as first,
        LakehouseCatalog(dsn, files) as second,
        ThreadPoolExecutor(2) as pool,
    ):
        for round_ in range(40):
            name = f"race-{round_}"
            futures = [pool.submit(register, catalog, name) for catalog in (first, second)]
            returned = [future.result(timeout=120) for future in futures]
            assert returned[0] == returned[1], f"round {round_}"
            assert first.register_experiment(name).experiment_id == returned[0]
        rows = first.con.execute("SELECT count(*), count(DISTINCT name) FROM experiments").fetchone()
    assert rows == (40, 40)
