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
from duckstream.demo import LAKE_RENAMES, caption_table, run_walkthrough
from duckstream.devservices import PostgresService, S3Service
from duckstream.errors import ConfigurationError
from duckstream.walkthrough import Section, WalkthroughSettings
from duckstream.walkthrough_data import STOP_WORDS
from duckstream.walkthrough_patterns import CURATED_TABLE, EVOLVED_COLUMN

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
    """imgid of the run's pinned table where ``where`` holds: data files in path order, rows in
    file order (the order an unshuffled stream promises)."""
    run = walked.facts("Register an experiment and a run")["run"]
    settings = walked.settings
    scan = f"captions AT (VERSION => {int(run.snapshots['captions'])})"
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        rows = cat.con.execute(f"SELECT imgid FROM {scan} WHERE {where} ORDER BY filename, file_row_number")
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
    assert done.snapshots == run.snapshots


def test_schema_is_the_karpathy_schema(embedded: Walk) -> None:
    columns = embedded.facts("Schema of the lake table")["columns"]
    expected = [LAKE_RENAMES.get(n, n) for n in caption_table(1).schema.names]
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


def test_wandb_offline_run_holds_the_metrics(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("W&B (offline)")
    assert facts["rows"] == len(truth)
    assert facts["batches"] == -(-len(truth) // 128)
    assert facts["rows_per_s"] > 0
    assert facts["histogram"] == embedded.facts("caption length histogram")["histogram"]
    summary = facts["summary"]
    assert summary["loader/epoch_rows"] == len(truth)
    assert summary["loader/epoch_rows_per_s"] == pytest.approx(facts["rows_per_s"])
    histogram = summary["data/caption_words"]
    assert histogram["_type"] == "histogram"
    assert histogram["values"] == list(facts["histogram"].values())
    assert len(histogram["bins"]) == len(facts["histogram"]) + 1
    run_dir = Path(facts["run_dir"])
    assert run_dir.is_relative_to(embedded.settings.directory)
    assert "offline-run" in run_dir.name
    assert any(p.suffix == ".wandb" and p.stat().st_size > 0 for p in run_dir.iterdir())


def test_quality_profile_counts_nulls_and_distinct_values(
    embedded: Walk, truth: list[dict[str, Any]]
) -> None:
    facts = embedded.facts("Quality profile")
    assert facts["total_rows"] == len(truth)
    assert facts["total_columns"] == 8
    assert set(facts["null_counts"].values()) == {0}
    distinct = facts["distinct_counts"]
    assert distinct["imgid"] == len(truth)
    assert distinct["split"] == len({r["split"] for r in truth})
    assert distinct["filepath"] == len({r["filepath"] for r in truth})
    assert [r["imgid"] for r in facts["sample_rows"]] == sorted(r["imgid"] for r in truth)[:3]


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
    assert "image_file" in scan
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
    assert result.facts("Quality profile")["total_rows"] == len(truth)
    assert list(result.facts("Streamable tiers")["rows"].values())[:2] == [len(truth), len(truth)]
    assert [r.files_uploaded for r in result.facts("Idempotent ingest")["again"].values()] == [0, 0]
    assert result.facts("Complete the run")["run"].status == "completed"
    assert not (tmp_path / "demo" / "catalog.ducklake").exists()
    for secret in (postgres_server.password, s3_server.secret_key, s3_server.access_key):
        assert secret not in result.text
