"""The COCO caption walkthrough, checked section by section against the generated data itself.

Expected values come from :func:`duckstream.demo.caption_table` computed in Python, never from
the SQL the walkthrough runs.
"""

from __future__ import annotations

import io
import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.demo import caption_table, run_walkthrough
from duckstream.demo.data import STOP_WORDS
from duckstream.demo.frame import Section, WalkthroughSettings
from duckstream.demo.patterns import EVOLVED_COLUMN, EVOLVED_TABLE, PATTERNS
from duckstream.demo.reports import BATCH_SIZE, QUALITY_CHECKS
from duckstream.demo.tiers import TIERS
from duckstream.errors import ConfigurationError, DuckstreamError
from duckstream.services import PostgresService, S3Service, free_port
from tests.dev_install import require
from tests.wandb_records import history, offline_run_files

for package in ("torch", "datasets", "wandb"):  # what the walkthrough runs on
    require(package)

IMAGES = 300

TITLES = (
    "Ingest",
    "Register an experiment and a run",
    "Schema of the lake table",
    "caption length histogram",
    "caption length in characters",
    "captions per image",
    "word counts",
    "Stream 5 rows",
    "Stream to Hugging Face",
    "Shuffled vs plain order",
    "Reshuffle per epoch",
    "W&B (offline)",
    "Quality profile",
    "Complete the run",
    "Pattern 1: Schema evolution",
    "Pattern 2: Time travel",
    "Pattern 3: Cross-plane join",
    "Pattern 4: Pushdown",
    "Pattern 5: Idempotent ingest",
    "Pattern 6: Analytics",
    "Pattern 7: Streamable tiers",
    "Why a lakehouse",
)
# What runs without a catalog: the sections on the raw Parquet tier.
RAW_TITLES = tuple(
    t
    for t in TITLES
    if t
    not in (
        "Register an experiment and a run",
        "Schema of the lake table",
        "W&B (offline)",
        "Quality profile",
        "Complete the run",
        "Pattern 1: Schema evolution",
        "Pattern 2: Time travel",
        "Pattern 3: Cross-plane join",
    )
)


@dataclass
class Walk:
    settings: WalkthroughSettings
    sections: dict[str, Section]
    text: str

    def section(self, title: str) -> Section:
        """The one section whose title contains ``title``."""
        matching = [section for key, section in self.sections.items() if title in key]
        assert len(matching) == 1, title
        return matching[0]

    def facts(self, title: str) -> Mapping[str, Any]:
        return self.section(title).facts


def walk(settings: WalkthroughSettings, titles: tuple[str, ...] = TITLES) -> Walk:
    printed: list[str] = []
    sections = run_walkthrough(settings, echo=printed.append)
    assert len(sections) == len(titles)
    by_title = {}
    for title in titles:
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
    # The held-out split is counted and explained, never synced.
    held_out = sum(r["split"] == "test" for r in caption_table(IMAGES, seed=3).to_pylist())
    assert facts["held_out"] == held_out > 0
    text = embedded.section("Ingest").text
    assert f"The 'test' split ({held_out:,} images) is saved but never synced" in text
    assert not list(Path(embedded.settings.raw_location).glob("test-*"))
    # The table names the files; their folder is printed once, so no cell holds a long path.
    table_lines = [line for line in text.splitlines() if ".parquet" in line and line.startswith("│")]
    assert len(table_lines) == 2
    assert all(embedded.settings.raw_location not in line for line in table_lines)
    assert "│ train-000000.parquet" in text


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


def test_caption_length_in_characters(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    def summary(lengths: list[int]) -> dict[str, Any]:
        ordered = sorted(lengths)

        def lower(q: float) -> int:  # DuckDB's quantile_disc: the value at floor((n - 1) * q)
            return ordered[math.floor((len(ordered) - 1) * q)]

        return {
            "n": len(lengths),
            "min": ordered[0],
            "p10": lower(0.1),
            "median": statistics.median(lengths),
            "mean": pytest.approx(statistics.mean(lengths), abs=0.005),
            "p90": lower(0.9),
            "max": ordered[-1],
            "std": pytest.approx(statistics.stdev(lengths), abs=0.005),
        }

    stats = embedded.facts("caption length in characters")["stats"]
    assert stats == {
        "every caption": summary([len(c) for c in captions(truth)]),
        "first of each image": summary([len(r["sentences"][0]) for r in truth]),
    }


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


def test_hugging_face_egress_streams_the_limit_query(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    import datasets

    facts = embedded.facts("Stream to Hugging Face")
    assert facts["type"] is datasets.IterableDataset
    by_id = {r["imgid"]: r for r in truth}
    first = storage_order(embedded)[:5]
    assert facts["rows"] == [
        {
            "imgid": i,
            "split": by_id[i]["split"],
            "captions": len(by_id[i]["sentences"]),
            "first_caption": by_id[i]["sentences"][0],
        }
        for i in first
    ]
    assert "datasets.iterable_dataset.IterableDataset" in embedded.section("Stream to Hugging Face").text


def test_stream_batches_reshuffles_per_epoch(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    epochs = embedded.facts("Reshuffle per epoch")["epochs"]
    flat = {name: [i for batch in batches for i in batch] for name, batches in epochs.items()}
    ids = sorted(r["imgid"] for r in truth)
    assert all(sorted(order) == ids for order in flat.values())
    assert flat["epoch 0"] != flat["epoch 1"] != flat["epoch 2"]
    assert flat["epoch 1 again"] == flat["epoch 1"]
    assert flat["epoch 0"] != storage_order(embedded)
    assert [len(b) for b in epochs["epoch 0"]] == [256] * (len(ids) // 256) + [len(ids) % 256]


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
    assert facts["old_columns"] == ["imgid", "split", "captions"]
    assert facts["new_columns"] == [*facts["old_columns"], EVOLVED_COLUMN]
    assert facts["before"] < facts["added_at"] <= facts["after"]
    assert facts["filled"] == len(truth)
    settings = embedded.settings
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        values = dict(cat.con.execute(f"SELECT imgid, {EVOLVED_COLUMN} FROM {EVOLVED_TABLE}").fetchall())
        # The evolution happens beside the training table, which keeps its columns.
        captions_now = [row[0] for row in cat.con.execute("DESCRIBE captions").fetchall()]
    assert captions_now == caption_table(1).schema.names
    assert set(values) == {r["imgid"] for r in truth}
    for row in truth:
        mean = sum(words_of(c) for c in row["sentences"]) / len(row["sentences"])
        assert values[row["imgid"]] == pytest.approx(mean)


def test_time_travel_streams_the_pinned_snapshot(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    facts = embedded.facts("Time travel")
    train = [r for r in truth if r["split"] in ("train", "restval")]
    run = embedded.facts("Register an experiment and a run")["run"]
    evolved = embedded.facts("Schema evolution")
    history = [(h["table"], h["snapshot"], h["rows"], h["columns"]) for h in facts["history"]]
    assert history == [
        ("captions", history[0][1], len(train), 8),
        ("captions", run.snapshots["captions"], len(truth), 8),
        (EVOLVED_TABLE, evolved["before"], len(truth), 3),
        (EVOLVED_TABLE, evolved["after"], len(truth), 4),
    ]
    assert history[0][1] < run.snapshots["captions"]
    assert facts["pinned_rows"] == len(truth)
    assert facts["pinned_columns"] == caption_table(1).schema.names


def test_cross_plane_join_counts_the_runs_data(embedded: Walk, truth: list[dict[str, Any]]) -> None:
    joined = embedded.facts("Cross-plane join")["joined"]
    run = embedded.facts("Register an experiment and a run")["run"]
    assert len(joined) == 1
    assert run.run_id.startswith(joined[0]["run"])
    train = [r for r in truth if r["split"] == "train"]
    assert joined[0]["images"] == len(train)
    assert joined[0]["captions"] == len(captions(train))
    assert joined[0]["status"] == "completed"
    assert joined[0]["snapshot"] == run.snapshots["captions"]


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
    assert sorted(per_split) == sorted({r["split"] for r in truth})  # every split the lake holds
    for split, stats in per_split.items():
        rows = [r for r in truth if r["split"] == split]
        texts = captions(rows)
        assert stats["images"] == len(rows)
        assert stats["captions"] == len(texts)
        assert stats["max_words"] == max(words_of(c) for c in texts)
        assert stats["avg_words"] == pytest.approx(sum(words_of(c) for c in texts) / len(texts), abs=0.005)


def tier_rows(truth: list[dict[str, Any]]) -> dict[str, list[int]]:
    """imgid of each caption-length tier, from the generated first captions."""
    bounds = {"short": (0, 40), "medium": (40, 60), "long": (60, 10**6)}
    return {
        name: [r["imgid"] for r in truth if low <= len(r["sentences"][0]) < high]
        for name, (low, high) in bounds.items()
    }


def test_tiers_are_recorded_runs_streamed_by_caption_length(
    embedded: Walk, truth: list[dict[str, Any]]
) -> None:
    facts = embedded.facts("Pattern 7")
    assert facts["recorded"] is True
    assert [t.name for t in TIERS] == list(facts["tiers"])
    expected = tier_rows(truth)
    assert sum(map(len, expected.values())) == len(truth)  # every image in exactly one tier
    run = embedded.facts("Register an experiment and a run")["run"]
    settings = embedded.settings
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        recorded = {
            row[0]: row[1:]
            for row in cat.con.execute(
                """SELECT e.name, r.run_id, r.status, (r.metrics->>'images')::INT, r.snapshots->>'captions'
                   FROM simulation_runs r JOIN experiments e USING (experiment_id)
                   WHERE e.name LIKE 'coco-captions-%'"""
            ).fetchall()
        }
    for tier in TIERS:
        got = facts["tiers"][tier.name]
        assert [row["imgid"] for row in got["rows"]] == sorted(
            expected[tier.name], key=storage_order(embedded).index
        )
        assert all(row["chars"] == len(row["first_caption"]) for row in got["rows"])
        assert got["images"] == len(expected[tier.name])
        assert recorded[tier.experiment] == (
            got["run_id"],
            "completed",
            len(expected[tier.name]),
            str(run.snapshots["captions"]),
        )


def test_the_closing_table_points_at_each_pattern(embedded: Walk) -> None:
    where = embedded.facts("Why a lakehouse")["where"]
    numbered = re.findall(r"^\s*(\d+)\. (.+)$", embedded.text, flags=re.M)
    number_of = {title: int(n) for n, title in numbered}
    for name, _, title in PATTERNS:
        expected = str(number_of[next(t for t in number_of if t.startswith(title))])
        if title.startswith("Pattern 6"):
            olap = [n for t, n in number_of.items() if t.startswith("OLAP:")]
            expected += f"; also {olap[0]}-{olap[-1]}"
        assert where[name] == expected
    assert len(PATTERNS) == 7


# --------------------------------------------------------------------------- reruns, CLI, example


# A timing's row in a table: its label names a duration, a rate or a share of the time.
_TIMED_ROW = re.compile(
    r"^(│ \S*(?:seconds|wait_seconds|rows_per_second|rows_per_s|wait_fraction)\s*│).*│$", flags=re.M
)


def printed_figures(walked: Walk) -> list[tuple[str, str]]:
    """Each section's title and text, less what differs between two runs by nature: run ids,
    timings, W&B's offline run folder (named by its start time), and the count of files the
    sync wrote (the first run writes them, a rerun finds them whole)."""
    run_ids = [walked.facts("Register an experiment and a run")["run"].run_id]
    run_ids += [tier["run_id"] for tier in walked.facts("Pattern 7")["tiers"].values()]
    figures = []
    for section in walked.sections.values():
        text = section.text
        for run_id in run_ids:
            text = text.replace(run_id, "<run>").replace(run_id[:8], "<run>")
        text = _TIMED_ROW.sub(r"\1 <timing> │", text)
        text = re.sub(r"took [^;]+;", "took <timing>;", text)
        text = re.sub(r"offline-run-\S+", "<offline run>", text)
        text = re.sub(r"^(│ \w+\s+│)\s+\d+ (│.*\.parquet)", r"\1 <written> \2", text, flags=re.M)
        # Masked cells change the widths of their tables.
        figures.append((section.title, re.sub(r" +", " ", re.sub(r"─+", "─", text))))
    return figures


@pytest.mark.slow
def test_a_second_run_reuses_everything_and_prints_the_same_figures(tmp_path: Path) -> None:
    settings = WalkthroughSettings(tmp_path / "demo", images=60)
    first = walk(settings)
    second = walk(settings)
    assert printed_figures(second) == printed_figures(first)
    # What the masks hide is as expected: a new run, nothing written again.
    assert [r.files_uploaded for r in first.facts("Ingest")["results"].values()] == [1, 1]
    assert [r.files_uploaded for r in second.facts("Ingest")["results"].values()] == [0, 0]
    total = sum(r.rows_total for r in first.facts("Ingest")["results"].values())
    assert second.facts("Idempotent ingest")["rows_after"] == total
    runs = [w.facts("Register an experiment and a run")["run"] for w in (first, second)]
    assert runs[0].experiment_id == runs[1].experiment_id
    assert runs[0].run_id != runs[1].run_id
    assert runs[0].snapshots == runs[1].snapshots  # the same data, the same pinned snapshot
    # The evolution happened once; the second run finds its snapshots as the first left them.
    assert second.facts("Schema evolution") == first.facts("Schema evolution")
    # The stream cache holds one run's catalog copies, not one more per run.
    copies = list(settings.stream_cache.glob("catalog-*.duckdb"))
    assert len(copies) == 1
    with LakehouseCatalog(settings.catalog_location, settings.lake_data, read_only=True) as cat:
        statuses = cat.con.execute(
            "SELECT status, count(*) FROM simulation_runs GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    assert statuses == [("completed", 2 * (1 + len(TIERS)))]


@pytest.mark.slow
def test_without_an_answering_catalog_the_raw_tier_sections_run(tmp_path: Path) -> None:
    silent = f"postgresql://ducklake:pw@127.0.0.1:{free_port()}/ducklake"  # nothing listens there
    settings = WalkthroughSettings(tmp_path / "demo", images=IMAGES, seed=3, catalog=silent)
    walked = walk(settings, RAW_TITLES)
    assert "No catalog: PostgreSQL at 127.0.0.1:" in walked.text
    assert "does not answer" in walked.text
    truth = [r for r in caption_table(IMAGES, seed=3).to_pylist() if r["split"] != "test"]
    # The queries read the raw tier under the lake table's name.
    assert walked.facts("Ingest")["lake_rows"] == dict(Counter(r["split"] for r in truth))
    assert walked.facts("captions per image")["images_by_count"] == dict(
        sorted(Counter(len(r["sentences"]) for r in truth).items())
    )
    raw_order = [i for f in sorted_raw_files(walked) for i in pq.read_table(f).column("imgid").to_pylist()]
    assert [row["imgid"] for row in walked.facts("Stream to Hugging Face")["rows"]] == raw_order[:5]
    tiers = walked.facts("Pattern 7")
    assert tiers["recorded"] is False
    expected = tier_rows(truth)
    for tier in TIERS:
        got = tiers["tiers"][tier.name]
        assert (got["run_id"], got["status"]) == (None, None)
        assert sorted(row["imgid"] for row in got["rows"]) == expected[tier.name]
    assert "runs not recorded: no catalog" in walked.section("Pattern 7").text
    where = walked.facts("Why a lakehouse")["where"]
    assert [where[name] for name, _, _ in PATTERNS[:3]] == ["not shown: needs the catalog"] * 3
    assert not (tmp_path / "demo" / "catalog.ducklake").exists()


def sorted_raw_files(walked: Walk) -> list[str]:
    return sorted(f for r in walked.facts("Ingest")["results"].values() for f in r.files)


@pytest.mark.services
def test_a_catalog_that_refuses_is_an_error_not_a_fallback(
    tmp_path: Path, postgres_server: PostgresService, pg_database: str
) -> None:
    refused = postgres_server.dsn(pg_database).replace(postgres_server.password, "wrong-password")
    settings = WalkthroughSettings(tmp_path / "demo", images=IMAGES, catalog=refused)
    with pytest.raises(DuckstreamError, match="password authentication failed") as raised:
        run_walkthrough(settings, echo=lambda _: None)
    assert "wrong-password" not in str(raised.value)


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
    tiers = result.facts("Pattern 7")["tiers"]
    assert {name: sorted(r["imgid"] for r in tier["rows"]) for name, tier in tiers.items()} == tier_rows(
        truth
    )
    assert {tier["status"] for tier in tiers.values()} == {"completed"}
    assert [r.files_uploaded for r in result.facts("Idempotent ingest")["again"].values()] == [0, 0]
    assert result.facts("Complete the run")["run"].status == "completed"
    assert not (tmp_path / "demo" / "catalog.ducklake").exists()
    for secret in (postgres_server.password, s3_server.secret_key, s3_server.access_key):
        assert secret not in result.text
