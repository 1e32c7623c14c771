"""The COCO caption walkthrough, checked section by section against the generated data itself.

Expected values come from :func:`duckstream.demo.caption_table` computed in Python, never from
the SQL the walkthrough runs.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.demo import caption_table, run_walkthrough
from duckstream.devservices import PostgresService, S3Service
from duckstream.errors import ConfigurationError
from duckstream.walkthrough import Section, WalkthroughSettings
from duckstream.walkthrough_data import STOP_WORDS
from duckstream.walkthrough_patterns import CURATED_TABLE, EVOLVED_COLUMN
from duckstream.walkthrough_reports import BATCH_SIZE, QUALITY_CHECKS
from tests.wandb_records import history, offline_run_files

pytest.importorskip("torch")
pytest.importorskip("datasets")
pytest.importorskip("wandb")

IMAGES = 300

TITLES = (
    "Ingest",
    "Register an experiment and a run",
    "Schema of the lake table",
    "caption length histogram",
    "captions per image",
    "word counts",
    "Stream 5 rows",
    "Shuffled vs plain order",
    "W&B (offline)",
    "Quality profile",
    "Complete the run",
    "Schema evolution",
    "Time travel",
    "Cross-plane join",
    "Pushdown",
    "Idempotent ingest",
    "Analytics",
    "Streamable tiers",
)


@dataclass
class Walk:
    settings: WalkthroughSettings
    sections: dict[str, Section]
    text: str

    def facts(self, title: str) -> Mapping[str, Any]:
        return self.sections[title].facts


def walk(settings: WalkthroughSettings) -> Walk:
    printed: list[str] = []
    sections = run_walkthrough(settings, echo=printed.append)
    by_title = {}
    for title in TITLES:
        matching = [s for s in sections if title in s.title]
        assert len(matching) == 1, title
        by_title[title] = matching[0]
    return Walk(settings, by_title, "\n".join(printed))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    return walk(WalkthroughSettings(tmp_path_factory.mktemp("walk") / "demo", images=IMAGES, seed=3))


@pytest.fixture(scope="module")
def truth() -> list[dict[str, Any]]:
    """The generated rows the walkthrough ingests: Karpathy's train, restval and val splits."""
    rows = caption_table(IMAGES, seed=3).to_pylist()
    return [r for r in rows if r["split"] != "test"]


def words_of(caption: str) -> int:
    return len(caption.split(" "))


def captions(rows: list[dict[str, Any]]) -> list[str]:
    return [c for r in rows for c in r["sentences"]]


def storage_order(walked: Walk, where: str = "TRUE") -> list[int]:
    """imgid of the run's pinned table where ``where`` holds: data files in the catalog's order, rows in
    file order (the order an unshuffled stream promises)."""
    run = walked.facts("Register an experiment and a run")["run"]
    settings = walked.settings
    scan = f"captions AT (VERSION => {int(run.snapshots['captions'])})"
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        rows = cat.con.execute(f"SELECT imgid FROM {scan} WHERE {where} ORDER BY file_index, file_row_number")
        return [int(row[0]) for row in rows.fetchall()]


# --------------------------------------------------------------------------- sections


def test_every_section_prints_under_its_header(embedded: Walk) -> None:
    numbered = re.findall(r"^\s*(\d+)\. (.+)$", embedded.text, flags=re.M)
    assert [int(n) for n, _ in numbered] == list(range(1, len(TITLES) + 1))
    for (_, printed), title in zip(numbered, TITLES, strict=True):
        assert title in printed
    assert f"ran {len(TITLES)} sections" in embedded.text
    assert "│" in embedded.text  # results print as tables


def test_ingest_writes_parquet_and_fills_the_lake_table(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Ingest")
    train = [r for r in truth if r["split"] in ("train", "restval")]
    val = [r for r in truth if r["split"] == "val"]
    results = facts["results"]
    assert results["train"].rows_total == len(train)
    assert results["validation"].rows_total == len(val)
    assert results["train"].files_uploaded == len(results["train"].files) > 1
    ids = [i for f in results["train"].files for i in pq.read_table(f).column("imgid").to_pylist()]
    assert ids == [r["imgid"] for r in train]
    assert facts["lake_rows"] == dict(Counter(r["split"] for r in truth))


def test_the_run_is_registered_pinned_and_completed(embedded: Walk) -> None:
    run = embedded.facts("Register an experiment and a run")["run"]
    assert run.status == "running"
    assert run.config["split"] == "train"
    done = embedded.facts("Complete the run")["run"]
    assert done.run_id == run.run_id
    assert done.status == "completed"
    assert done.metrics["epoch_rows_per_s"] > 0
    assert done.metrics["loader_epochs"][0]["rows"] > 0
    assert done.snapshots == run.snapshots


def test_schema_is_the_karpathy_schema(embedded: Walk) -> None:
    columns = embedded.facts("Schema of the lake table")["columns"]
    expected = caption_table(1).schema.names
    assert list(columns) == expected
    assert columns["sentences"] == "VARCHAR[]"
    assert columns["imgid"] == "BIGINT"


def test_olap_sections_match_the_data(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    texts = captions(truth)
    assert embedded.facts("caption length histogram")["histogram"] == dict(
        sorted(Counter(words_of(c) for c in texts).items())
    )
    assert embedded.facts("captions per image")["images_by_count"] == dict(
        sorted(Counter(len(r["sentences"]) for r in truth).items())
    )
    words = [w.strip(".").lower() for c in texts for w in c.split(" ")]
    counts = Counter(w for w in words if w not in STOP_WORDS)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    facts = embedded.facts("word counts")
    assert list(facts["top"].items()) == top
    assert (facts["words"], facts["vocabulary"]) == (len(words), len(set(words)))


def test_five_rows_stream_in_storage_order(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Stream 5 rows")
    train = {r["imgid"]: r for r in truth if r["split"] in ("train", "restval")}
    assert facts["num_rows"] == len(train)
    first = storage_order(embedded, "split IN ('train', 'restval')")[:5]
    assert facts["rows"] == [
        {
            "imgid": i,
            "split": train[i]["split"],
            "captions": len(train[i]["sentences"]),
            "first_caption": train[i]["sentences"][0],
        }
        for i in first
    ]


def test_shuffled_orders_are_seeded_permutations(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    orders = list(embedded.facts("Shuffled vs plain order")["orders"].values())
    plain, shuffled, again, next_epoch = orders
    assert plain == storage_order(embedded)
    assert sorted(plain) == sorted(r["imgid"] for r in truth)
    assert shuffled == again
    assert shuffled != plain
    assert next_epoch != shuffled
    assert sorted(shuffled) == sorted(next_epoch) == sorted(plain)


def test_loader_statistics_are_the_epoch_the_loader_streamed(
    embedded: Walk, truth: list[dict[str, Any]]
) -> None:
    facts = embedded.facts("W&B (offline)")
    stats = facts["stats"]
    assert (stats.epoch, stats.rows, stats.batches) == (0, len(truth), -(-len(truth) // BATCH_SIZE))
    assert facts["rows"] == len(truth)
    assert facts["rows_per_s"] == stats.rows_per_second > 0
    assert 0 < stats.wait_seconds <= stats.seconds
    assert facts["wait_seconds"] == stats.wait_seconds
    # Recorded on the walkthrough's own run while it runs, then kept when it completes.
    run = embedded.facts("Register an experiment and a run")["run"]
    recorded = facts["recorded_run"]
    assert (recorded.run_id, recorded.status) == (run.run_id, "running")
    assert recorded.metrics == {"loader_epochs": [stats.as_dict()]} == facts["run_metrics"]
    done = embedded.facts("Complete the run")["run"]
    assert done.metrics["loader_epochs"] == [stats.as_dict()]
    assert done.metrics["epoch_rows_per_s"] == round(stats.rows_per_second, 1)


def test_wandb_offline_run_holds_the_metrics(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("W&B (offline)")
    stats = facts["stats"]
    words = [words_of(c) for c in captions(truth)]
    chars = [len(c) for c in captions(truth)]
    expected = {
        "loader/rows": len(truth),
        "loader/batches": stats.batches,
        "loader/rows_per_second": pytest.approx(stats.rows_per_second, rel=1e-3),
        "loader/seconds": pytest.approx(stats.seconds, abs=1e-5),
        "loader/wait_seconds": pytest.approx(stats.wait_seconds, abs=1e-5),
        "loader/wait_fraction": pytest.approx(stats.wait_fraction, abs=1e-5),
        "data/captions": len(words),
        "data/caption_words_mean": pytest.approx(sum(words) / len(words)),
        "data/caption_words_min": min(words),
        "data/caption_words_max": max(words),
        "data/caption_chars_mean": pytest.approx(sum(chars) / len(chars)),
    }
    assert facts["logged"] == expected
    assert facts["histogram"] == embedded.facts("caption length histogram")["histogram"]
    summary = facts["summary"]
    assert {key: summary[key] for key in expected} == expected
    histogram = summary["data/caption_words"]
    assert histogram["_type"] == "histogram"
    assert histogram["values"] == list(facts["histogram"].values())
    assert len(histogram["bins"]) == len(facts["histogram"]) + 1
    run_dir = Path(facts["run_dir"])
    assert run_dir.is_relative_to(embedded.settings.directory)
    assert "offline-run" in run_dir.name
    # What the offline run file holds: one step (the epoch) with every metric and the histogram.
    run_files = [f for f in offline_run_files(embedded.settings.directory / "wandb") if f.parent == run_dir]
    assert len(run_files) == 1
    rows = history(run_files[0])
    assert len(rows) == 1
    assert rows[0]["_step"] == stats.epoch
    assert {key: rows[0][key] for key in expected} == expected
    # The histogram's fields are nested keys there.
    assert rows[0]["data/caption_words/_type"] == "histogram"
    assert rows[0]["data/caption_words/values"] == list(facts["histogram"].values())


def test_quality_profile_of_the_pinned_table(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Quality profile")
    report = facts["report"]
    names = caption_table(1).schema.names
    lake_rows = truth
    run = embedded.facts("Register an experiment and a run")["run"]
    assert report.source == f"lake table captions at snapshot {run.snapshots['captions']}"
    assert report.total_rows == len(truth)
    assert report.total_columns == len(names)
    assert report.null_counts == {n: sum(r[n] is None for r in lake_rows) for n in names}

    def distinct(name: str) -> int:
        return len({tuple(v) if isinstance(v, list) else v for r in lake_rows if (v := r[name]) is not None})

    assert report.distinct_counts == {n: distinct(n) for n in names}
    ids = [r["imgid"] for r in truth]
    assert report.key == ["imgid"]
    assert report.duplicate_count == len(ids) - len(set(ids))
    sizes = [len(r["sentences"]) for r in truth]
    sentences = report.column("sentences").length
    assert (sentences.min, sentences.max) == (min(sizes), max(sizes))
    assert (report.column("imgid").min, report.column("imgid").max) == (min(ids), max(ids))
    assert len(report.sample_rows) == 5
    assert all(row["imgid"] in set(ids) for row in report.sample_rows)
    results = {c.check: (c.passed, c.offending) for c in report.checks}
    not_five = sum(n != 5 for n in sizes)
    assert not_five > 0  # the generated data has images with 6 or 7 captions, as COCO does
    assert results == {
        "not_null:imgid": (True, 0),
        "unique:imgid": (True, 0),
        "values:split:train,val,test,restval": (True, 0),
        "length:sentences:1:10": (True, 0),
        "rows:1:": (True, 0),
        "length:sentences:5:5": (False, not_five),
    }
    assert list(results) == list(QUALITY_CHECKS)
    text = embedded.sections["Quality profile"].text
    assert f"FAIL  length:sentences:5:5  ({not_five:,} offending)" in text
    assert "key imgid: 0 duplicate rows" in text
    html = Path(facts["html"])
    assert html.is_relative_to(embedded.settings.directory)
    page = html.read_text(encoding="utf-8")
    assert "<h1>Data quality: lake table captions" in page
    assert "length:sentences:5:5" in page
    assert str(html) in text


def test_schema_evolution_keeps_the_old_snapshot_readable(
    embedded: Walk, truth: list[dict[str, Any]]
) -> None:
    facts = embedded.facts("Schema evolution")
    assert EVOLVED_COLUMN not in facts["old_columns"]
    assert facts["new_columns"] == [*facts["old_columns"], EVOLVED_COLUMN]
    settings = embedded.settings
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        values = dict(cat.con.execute(f"SELECT imgid, {EVOLVED_COLUMN} FROM captions").fetchall())
    for row in truth:
        mean = sum(words_of(c) for c in row["sentences"]) / len(row["sentences"])
        assert values[row["imgid"]] == pytest.approx(mean)


def test_time_travel_streams_the_pinned_snapshot(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Time travel")
    train = [r for r in truth if r["split"] in ("train", "restval")]
    rows = list(facts["rows"].values())
    assert rows == [len(train), len(truth), len(truth)]
    assert facts["pinned_rows"] == len(truth)
    assert EVOLVED_COLUMN not in facts["pinned_columns"]
    run = embedded.facts("Register an experiment and a run")["run"]
    assert facts["versions"]["the run's pinned snapshot"] == run.snapshots["captions"]


def test_cross_plane_join_counts_the_runs_data(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    joined = embedded.facts("Cross-plane join")["joined"]
    run = embedded.facts("Register an experiment and a run")["run"]
    mine = [row for row in joined if run.run_id.startswith(row["run"])]
    assert len(mine) == 1
    train = [r for r in truth if r["split"] == "train"]
    assert mine[0]["images"] == len(train)
    assert mine[0]["captions"] == len(captions(train))
    assert mine[0]["status"] == "completed"


def test_pushdown_plan_shows_projection_and_filters(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Pushdown")
    plan = facts["plan"]
    scan = plan[plan.index("READ_PARQUET") :]
    assert "filename" in scan
    assert "sentences" not in scan
    assert "imgid>=100" in scan
    assert "split='restval'" in scan
    assert 0 < facts["row_groups_to_read"] < facts["row_groups"]


def test_ingest_is_idempotent(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Idempotent ingest")
    assert [r.files_uploaded for r in facts["again"].values()] == [0, 0]
    assert facts["rows_before"] == facts["rows_after"] == len(truth)
    first = embedded.facts("Ingest")["results"]
    assert [r.files for r in facts["again"].values()] == [r.files for r in first.values()]


def test_analytics_per_split(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    per_split = embedded.facts("Analytics")["per_split"]
    for split, stats in per_split.items():
        rows = [r for r in truth if r["split"] == split]
        texts = captions(rows)
        assert stats["images"] == len(rows)
        assert stats["captions"] == len(texts)
        assert stats["max_words"] == max(words_of(c) for c in texts)
        assert stats["avg_words"] == pytest.approx(sum(words_of(c) for c in texts) / len(texts), abs=0.005)


def test_tiers_stream_raw_lake_and_curated(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    rows = list(embedded.facts("Streamable tiers")["rows"].values())
    curated = {
        (r["imgid"], c)
        for r in truth
        if r["split"] in ("train", "restval")
        for c in r["sentences"]
        if 6 <= words_of(c) <= 12
    }
    assert rows == [len(truth), len(truth), len(curated)]
    assert CURATED_TABLE in embedded.text


# --------------------------------------------------------------------------- reruns, CLI, example


@pytest.mark.slow
def test_a_second_run_reuses_everything(tmp_path: Path) -> None:
    settings = WalkthroughSettings(tmp_path / "demo", images=60)
    first = walk(settings)
    second = walk(settings)
    assert [r.files_uploaded for r in second.facts("Ingest")["results"].values()] == [0, 0]
    total = sum(r.rows_total for r in first.facts("Ingest")["results"].values())
    assert second.facts("Idempotent ingest")["rows_after"] == total
    # The evolution happened once; the second run still finds the snapshot before it.
    assert second.facts("Schema evolution")["added_at"] == first.facts("Schema evolution")["added_at"]
    runs = [w.facts("Register an experiment and a run")["run"] for w in (first, second)]
    assert runs[0].experiment_id == runs[1].experiment_id
    assert runs[0].run_id != runs[1].run_id
    joined = second.facts("Cross-plane join")["joined"]
    assert [row["status"] for row in joined] == ["completed", "completed"]


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="at least 20 images"):
        WalkthroughSettings(Path("x"), images=5)
    with pytest.raises(ConfigurationError, match="postgresql://") as raised:
        WalkthroughSettings(Path("x"), catalog="mysql://u:hunter2@h/db")
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="bucket"):
        WalkthroughSettings(Path("x"), bucket="no_underscores")


def test_the_example_script_runs_the_walkthrough(tmp_path: Path) -> None:
    from examples.coco_caption_walkthrough import main

    out = io.StringIO()
    assert main(["--dir", str(tmp_path / "demo"), "--images", "40"], out=out) == 0
    text = out.getvalue()
    for title in TITLES:
        assert title in text
    assert (tmp_path / "demo" / "catalog.ducklake").is_file()


@pytest.mark.services
@pytest.mark.slow
def test_walkthrough_on_postgres_and_s3(
    tmp_path: Path, s3_server: S3Service, s3_bucket: str, postgres_server: PostgresService, pg_database: str
) -> None:
    settings = WalkthroughSettings(
        tmp_path / "demo",
        images=80,
        catalog=postgres_server.dsn(pg_database),
        bucket=s3_bucket,
        prefix="walk",
        s3_endpoint=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    result = walk(settings)
    truth = [r for r in caption_table(80).to_pylist() if r["split"] != "test"]
    results = result.facts("Ingest")["results"]
    assert all(f.startswith(f"s3://{s3_bucket}/walk/raw/") for r in results.values() for f in r.files)
    assert sum(r.rows_total for r in results.values()) == len(truth)
    listed = s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket, Prefix="walk/lake/")
    assert listed.get("KeyCount", 0) > 0  # the lake's data files are on S3 too
    assert result.facts("Time travel")["pinned_rows"] == len(truth)
    quality = result.facts("Quality profile")["report"]
    assert quality.total_rows == len(truth)
    assert [c.check for c in quality.checks if not c.passed] == ["length:sentences:5:5"]
    assert list(result.facts("Streamable tiers")["rows"].values())[:2] == [len(truth), len(truth)]
    assert [r.files_uploaded for r in result.facts("Idempotent ingest")["again"].values()] == [0, 0]
    assert result.facts("Complete the run")["run"].status == "completed"
    assert not (tmp_path / "demo" / "catalog.ducklake").exists()
    for secret in (postgres_server.password, s3_server.secret_key, s3_server.access_key):
        assert secret not in result.text
