"""Walkthrough sections on lakehouse patterns: schema evolution, time travel, cross-plane joins,
pushdown, idempotent ingest, analytics and streamable tiers."""

from __future__ import annotations

from typing import Any

from duckstream.catalog import Run
from duckstream.engine import sql_literal
from duckstream.query import LakehouseQuery
from duckstream.walkthrough import CAPTIONS_TABLE, INGEST_SPLITS, Lakehouse, Section, rows_table, short
from duckstream.walkthrough_data import CAPTION_ROWS, EXPERIMENT, ingest

__all__ = [
    "CURATED_TABLE",
    "EVOLVED_COLUMN",
    "analytics_section",
    "cross_plane_join_section",
    "idempotent_ingest_section",
    "pushdown_section",
    "schema_evolution_section",
    "tiers_section",
    "time_travel_section",
]

EVOLVED_COLUMN = "mean_words"
CURATED_TABLE = "caption_texts"


def _pinned_version(run: Run) -> int:
    return int((run.snapshots or {})[CAPTIONS_TABLE])


def _snapshots_changing(lake: Lakehouse, change: str) -> list[int]:
    """Snapshots whose ``change`` (e.g. tables_altered) names the captions table, oldest first."""
    table_id = lake.scalar(
        f"SELECT table_id FROM ducklake_table_info({sql_literal(lake.catalog.alias)}) WHERE table_name = ?",
        [CAPTIONS_TABLE],
    )
    rows = lake.query(
        f"""SELECT snapshot_id FROM {lake.catalog.alias}.snapshots()
            WHERE list_contains(changes[?], ?) ORDER BY snapshot_id""",
        [change, str(table_id)],
    )
    return [int(v) for v in rows.column(0).to_pylist()]


def _columns_at(lake: Lakehouse, version: int) -> list[str]:
    described = lake.query(f"DESCRIBE SELECT * FROM {CAPTIONS_TABLE} AT (VERSION => {int(version)})")
    return [str(name) for name in described.column(0).to_pylist()]


def schema_evolution_section(lake: Lakehouse) -> Section:
    lake.query(f"ALTER TABLE {CAPTIONS_TABLE} ADD COLUMN IF NOT EXISTS {EVOLVED_COLUMN} DOUBLE")
    lake.query(
        f"""UPDATE {CAPTIONS_TABLE}
            SET {EVOLVED_COLUMN} = list_avg(list_transform(sentences, lambda s: len(string_split(s, ' '))))
            WHERE {EVOLVED_COLUMN} IS NULL"""
    )
    added_at = _snapshots_changing(lake, "tables_altered")[0]
    before, now = added_at - 1, lake.catalog.current_snapshot()
    old_columns, new_columns = _columns_at(lake, before), _columns_at(lake, now)
    filled = lake.scalar(f"SELECT count({EVOLVED_COLUMN}) FROM {CAPTIONS_TABLE}")
    sample = lake.query(
        f"SELECT imgid, len(sentences) AS captions, round({EVOLVED_COLUMN}, 2) AS {EVOLVED_COLUMN} "
        f"FROM {CAPTIONS_TABLE} ORDER BY imgid LIMIT 3"
    )
    versions = rows_table(
        [
            {
                "snapshot": before,
                "columns": len(old_columns),
                "has " + EVOLVED_COLUMN: EVOLVED_COLUMN in old_columns,
            },
            {
                "snapshot": now,
                "columns": len(new_columns),
                "has " + EVOLVED_COLUMN: EVOLVED_COLUMN in new_columns,
            },
        ]
    )
    text = (
        f"ALTER TABLE {CAPTIONS_TABLE} ADD COLUMN {EVOLVED_COLUMN} DOUBLE (snapshot {added_at}), then an "
        f"UPDATE fills it for {filled:,} images:\n{lake.render(sample)}\n"
        f"The snapshot before the change still reads with its old columns:\n{lake.render(versions)}"
    )
    return Section(
        "Schema evolution",
        text,
        {"added_at": added_at, "before": before, "old_columns": old_columns, "new_columns": new_columns},
    )


def time_travel_section(lake: Lakehouse, run: Run) -> Section:
    from duckstream.stream import DuckStreamDataset

    first_insert = _snapshots_changing(lake, "tables_inserted_into")[0]
    pinned, now = _pinned_version(run), lake.catalog.current_snapshot()
    marks = {"first insert (train split)": first_insert, "the run's pinned snapshot": pinned, "now": now}
    history = rows_table(
        [
            {
                "snapshot": version,
                "what": name,
                "rows": lake.scalar(f"SELECT count(*) FROM {CAPTIONS_TABLE} AT (VERSION => {version})"),
                "columns": len(_columns_at(lake, version)),
            }
            for name, version in marks.items()
        ]
    )
    dataset = DuckStreamDataset(
        lake.catalog.table(CAPTIONS_TABLE, version=pinned),
        batch_size=None,
        output="python",
        **lake.stream_keywords,
    )
    first = next(iter(dataset))
    text = (
        f"SELECT count(*) FROM {CAPTIONS_TABLE} AT (VERSION => n):\n{lake.render(history)}\n"
        f"catalog.table({CAPTIONS_TABLE!r}, version={pinned}) streams {dataset.num_rows:,} rows; "
        f"its first row has the columns {', '.join(first)}."
    )
    return Section(
        "Time travel",
        text,
        {
            "rows": dict(
                zip(history.column("what").to_pylist(), history.column("rows").to_pylist(), strict=True)
            ),
            "versions": marks,
            "pinned_rows": dataset.num_rows,
            "pinned_columns": list(first),
        },
    )


def cross_plane_join_section(lake: Lakehouse) -> Section:
    joined = lake.query(
        f"""SELECT left(r.run_id, 8) AS run, r.status, r.config->>'split' AS split,
                   (r.snapshots->>'{CAPTIONS_TABLE}')::BIGINT AS snapshot,
                   count(c.imgid) AS images, sum(len(c.sentences))::BIGINT AS captions
            FROM experiments e
            JOIN simulation_runs r USING (experiment_id)
            JOIN {CAPTIONS_TABLE} c ON c.split = (r.config->>'split')
            WHERE e.name = ?
            GROUP BY ALL ORDER BY min(r.started_at)""",
        [EXPERIMENT],
    )
    text = (
        "The run tables (experiments, simulation_runs) are lake tables too: one query joins a run's\n"
        f"config with the data it names:\n{lake.render(joined)}"
    )
    return Section("Cross-plane join: runs x data", text, {"joined": joined.to_pylist()})


def _plan(query: LakehouseQuery, sql: str) -> str:
    return "\n".join(str(row[-1]) for row in query.execute(f"EXPLAIN {sql}").fetchall())


def pushdown_section(lake: Lakehouse, raw_files: list[str]) -> Section:
    with lake.query_engine() as query:
        query.register_source(raw_files)
        sql = "SELECT filename FROM source WHERE imgid BETWEEN 100 AND 199 AND split = 'restval'"
        plan = _plan(query, sql)
        scanned = query.execute(
            """SELECT count(*) AS row_groups, count(*) FILTER (WHERE stats_min_value::BIGINT <= 199
                                                          AND stats_max_value::BIGINT >= 100) AS may_match
               FROM parquet_metadata(?) WHERE path_in_schema = 'imgid'""",
            [raw_files],
        ).fetchall()[0]
    text = (
        f"EXPLAIN {sql}\n\n{plan}\n"
        "The scan reads one column besides the filtered ones (Projections) and applies the WHERE "
        f"(Filters) itself;\nthe imgid statistics leave {scanned[1]} of {scanned[0]} row groups to read."
    )
    return Section(
        "Pushdown into the Parquet scan",
        text,
        {"plan": plan, "row_groups": scanned[0], "row_groups_to_read": scanned[1]},
    )


def idempotent_ingest_section(lake: Lakehouse) -> Section:
    rows_before = lake.scalar(f"SELECT count(*) FROM {CAPTIONS_TABLE}")
    again = {split: ingest(lake, split) for split in INGEST_SPLITS}
    rows_after = lake.scalar(f"SELECT count(*) FROM {CAPTIONS_TABLE}")
    shown = rows_table(
        [
            {"split": split, "files_written": r.files_uploaded, "rows_total": r.rows_total}
            for split, r in again.items()
        ]
        + [{"split": f"lake table {CAPTIONS_TABLE}", "files_written": 0, "rows_total": rows_after}]
    )
    text = (
        f"Rerunning every sync: the manifests say the files are whole, and the key imgid keeps the lake "
        f"table from\ngrowing ({rows_before:,} rows before, {rows_after:,} after):\n{lake.render(shown)}"
    )
    return Section(
        "Idempotent ingest",
        text,
        {"again": again, "rows_before": rows_before, "rows_after": rows_after},
    )


def analytics_section(lake: Lakehouse) -> Section:
    per_split = lake.query(
        f"""SELECT split, count(DISTINCT imgid) AS images, count(*) AS captions,
                   round(avg(words), 2) AS avg_words, max(words) AS max_words,
                   count(DISTINCT lower(caption)) AS distinct_captions,
                   round(100.0 * count(*) FILTER (WHERE caption ILIKE '%dog%') / count(*), 1) AS pct_dogs
            FROM ({CAPTION_ROWS}) GROUP BY split ORDER BY images DESC"""
    )
    return Section(
        "Analytics across splits",
        lake.render(per_split),
        {"per_split": {row["split"]: row for row in per_split.to_pylist()}},
    )


def tiers_section(lake: Lakehouse, raw_files: list[str]) -> Section:
    from duckstream.stream import DuckStreamDataset

    lake.query(
        f"""CREATE OR REPLACE TABLE {CURATED_TABLE} AS
            SELECT DISTINCT imgid, split, caption, words FROM ({CAPTION_ROWS})
            WHERE split IN ('train', 'restval') AND words BETWEEN 6 AND 12
            ORDER BY imgid, caption"""
    )
    tiers: dict[str, tuple[Any, str | None]] = {
        "raw Parquet (sync output)": (raw_files, "SELECT imgid, sentences[1] AS text FROM source"),
        f"lake table {CAPTIONS_TABLE}": (
            lake.catalog.table(CAPTIONS_TABLE),
            "SELECT imgid, sentences[1] AS text FROM source",
        ),
        f"curated lake table {CURATED_TABLE}": (
            lake.catalog.table(CURATED_TABLE),
            "SELECT imgid, caption AS text FROM source",
        ),
    }
    shown, counts = [], {}
    for name, (source, sql) in tiers.items():
        dataset = DuckStreamDataset(source, sql, batch_size=32, output="python", **lake.stream_keywords)
        first = next(iter(dataset))
        counts[name] = dataset.num_rows
        shown.append(
            {
                "tier": name,
                "rows": dataset.num_rows,
                "batches": len(dataset),
                "first batch": f"{len(first['imgid'])} rows; imgid {first['imgid'][0]}: "
                + short(first["text"][0], 40),
            }
        )
    text = (
        f"CREATE TABLE {CURATED_TABLE} AS: one row per train caption of 6 to 12 words, deduplicated.\n"
        "Each tier streams with DuckStreamDataset(source, sql, batch_size=32):\n"
        + lake.render(rows_table(shown))
    )
    return Section("Streamable tiers: raw -> lake -> curated", text, {"rows": counts})
