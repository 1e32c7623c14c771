"""Walkthrough sections on lakehouse patterns 1 to 6 (schema evolution, time travel, cross-plane
joins, pushdown, idempotent ingest, analytics) and the closing table of all seven; pattern 7,
streamable tiers, lives in ``tiers``.

Every pattern leaves the lake table ``captions`` as it found it, so that a rerun streams the
same rows in the same order: schema evolution works on a table of its own, made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from duckstream.catalog import Run
from duckstream.demo.data import CAPTION_ROWS, EXPERIMENT, ingest
from duckstream.demo.frame import CAPTIONS_TABLE, INGEST_SPLITS, Lakehouse, Section, rows_table
from duckstream.engine import sql_literal
from duckstream.query import LakehouseQuery

__all__ = [
    "EVOLVED_COLUMN",
    "EVOLVED_TABLE",
    "PATTERNS",
    "analytics_section",
    "cross_plane_join_section",
    "idempotent_ingest_section",
    "lakehouse_patterns_section",
    "pushdown_section",
    "schema_evolution_section",
    "time_travel_section",
]

EVOLVED_TABLE = "caption_stats"
EVOLVED_COLUMN = "mean_words"

# The seven patterns: (name, what it gives, the title of the section that shows it).
PATTERNS = (
    (
        "1. schema evolution",
        "add a column; older snapshots keep their old columns",
        "Pattern 1: Schema evolution",
    ),
    (
        "2. time travel",
        "read any snapshot; a run streams the rows it was pinned to",
        "Pattern 2: Time travel",
    ),
    (
        "3. cross-plane join",
        "runs and data are tables: one SQL query joins them",
        "Pattern 3: Cross-plane join",
    ),
    ("4. pushdown", "read only the columns and row groups a query needs", "Pattern 4: Pushdown"),
    ("5. idempotent ingest", "rerun a sync: nothing written or added twice", "Pattern 5: Idempotent ingest"),
    ("6. analytics", "OLAP where the training data lives, no export", "Pattern 6: Analytics"),
    (
        "7. streamable tiers",
        "any SQL slice streams into training, its run recorded",
        "Pattern 7: Streamable tiers",
    ),
)


def _snapshots_changing(lake: Lakehouse, table: str, change: str) -> list[int]:
    """Snapshots whose ``change`` (e.g. tables_altered) names ``table``, oldest first."""
    alias = lake.recorded.alias
    table_id = lake.scalar(
        f"SELECT table_id FROM ducklake_table_info({sql_literal(alias)}) WHERE table_name = ?", [table]
    )
    rows = lake.query(
        f"""SELECT snapshot_id FROM {alias}.snapshots()
            WHERE list_contains(changes[?], ?) ORDER BY snapshot_id""",
        [change, str(table_id)],
    )
    return [int(v) for v in rows.column(0).to_pylist()]


def _columns_at(lake: Lakehouse, table: str, version: int) -> list[str]:
    described = lake.query(f"DESCRIBE SELECT * FROM {table} AT (VERSION => {int(version)})")
    return [str(name) for name in described.column(0).to_pylist()]


def schema_evolution_section(lake: Lakehouse) -> Section:
    # Made once and kept: a rerun finds every step done and writes nothing, like the ingest.
    lake.query(
        f"""CREATE TABLE IF NOT EXISTS {EVOLVED_TABLE} AS
            SELECT imgid, split, len(sentences) AS captions FROM {CAPTIONS_TABLE} ORDER BY imgid"""
    )
    lake.query(f"ALTER TABLE {EVOLVED_TABLE} ADD COLUMN IF NOT EXISTS {EVOLVED_COLUMN} DOUBLE")
    lake.query(
        f"""UPDATE {EVOLVED_TABLE} s
            SET {EVOLVED_COLUMN} = list_avg(list_transform(c.sentences, lambda t: len(string_split(t, ' '))))
            FROM {CAPTIONS_TABLE} c WHERE s.imgid = c.imgid AND s.{EVOLVED_COLUMN} IS NULL"""
    )
    added_at = _snapshots_changing(lake, EVOLVED_TABLE, "tables_altered")[0]
    before = max(v for v in _snapshots_changing(lake, EVOLVED_TABLE, "tables_inserted_into") if v < added_at)
    now = lake.last_change(EVOLVED_TABLE)
    old_columns, new_columns = _columns_at(lake, EVOLVED_TABLE, before), _columns_at(lake, EVOLVED_TABLE, now)
    filled = lake.scalar(f"SELECT count({EVOLVED_COLUMN}) FROM {EVOLVED_TABLE}")
    sample = lake.query(
        f"SELECT imgid, captions, round({EVOLVED_COLUMN}, 2) AS {EVOLVED_COLUMN} "
        f"FROM {EVOLVED_TABLE} ORDER BY imgid LIMIT 3"
    )
    versions = rows_table(
        [
            {
                "snapshot": version,
                "columns": ", ".join(columns),
                "has " + EVOLVED_COLUMN: EVOLVED_COLUMN in columns,
            }
            for version, columns in ((before, old_columns), (now, new_columns))
        ]
    )
    text = (
        f"CREATE TABLE {EVOLVED_TABLE} AS SELECT imgid, split, len(sentences) AS captions FROM "
        f"{CAPTIONS_TABLE} (snapshot {before}),\n"
        f"ALTER TABLE {EVOLVED_TABLE} ADD COLUMN {EVOLVED_COLUMN} DOUBLE (snapshot {added_at}),\n"
        f"then an UPDATE fills it for {filled:,} images:\n{lake.render(sample)}\n"
        f"The snapshot before the change still reads with its old columns:\n{lake.render(versions)}\n"
        "Each step runs once (IF NOT EXISTS, WHERE ... IS NULL): a rerun finds them done,\n"
        f"and {CAPTIONS_TABLE} itself never changes."
    )
    return Section(
        "Pattern 1: Schema evolution",
        text,
        {
            "added_at": added_at,
            "before": before,
            "after": now,
            "old_columns": old_columns,
            "new_columns": new_columns,
            "filled": filled,
        },
    )


def time_travel_section(lake: Lakehouse, run: Run) -> Section:
    from duckstream.stream import DuckStreamDataset

    pinned = int((run.snapshots or {})[CAPTIONS_TABLE])
    marks: Sequence[tuple[str, int, str]] = (
        (
            CAPTIONS_TABLE,
            _snapshots_changing(lake, CAPTIONS_TABLE, "tables_inserted_into")[0],
            "first insert",
        ),
        (CAPTIONS_TABLE, pinned, "the run's pinned snapshot"),
        *(
            (EVOLVED_TABLE, version, what)
            for version, what in (
                (_snapshots_changing(lake, EVOLVED_TABLE, "tables_inserted_into")[0], "made"),
                (lake.last_change(EVOLVED_TABLE), f"{EVOLVED_COLUMN} added and filled"),
            )
        ),
    )
    history = rows_table(
        [
            {
                "table": table,
                "snapshot": version,
                "what": what,
                "rows": lake.scalar(f"SELECT count(*) FROM {table} AT (VERSION => {version})"),
                "columns": len(_columns_at(lake, table, version)),
            }
            for table, version, what in marks
        ]
    )
    dataset = DuckStreamDataset(lake.pinned(run), batch_size=None, output="python", **lake.stream_keywords)
    first = next(iter(dataset))
    text = (
        f"SELECT count(*) FROM <table> AT (VERSION => n):\n{lake.render(history)}\n"
        f"catalog.table({CAPTIONS_TABLE!r}, version={pinned}) streams {dataset.num_rows:,} rows; "
        f"its first row has the columns\n{', '.join(first)}."
    )
    return Section(
        "Pattern 2: Time travel",
        text,
        {
            "history": history.to_pylist(),
            "pinned_rows": dataset.num_rows,
            "pinned_columns": list(first),
        },
    )


def cross_plane_join_section(lake: Lakehouse, run: Run) -> Section:
    joined = lake.query(
        f"""SELECT left(r.run_id, 8) AS run, r.status, r.config->>'split' AS split,
                   (r.snapshots->>'{CAPTIONS_TABLE}')::BIGINT AS snapshot,
                   count(c.imgid) AS images, sum(len(c.sentences))::BIGINT AS captions
            FROM experiments e
            JOIN simulation_runs r USING (experiment_id)
            JOIN (FROM {CAPTIONS_TABLE} AT (VERSION => {int((run.snapshots or {})[CAPTIONS_TABLE])})) c
              ON c.split = (r.config->>'split')
            WHERE e.name = ? AND r.run_id = ?
            GROUP BY ALL""",
        [EXPERIMENT, run.run_id],
    )
    text = (
        "The run tables (experiments, simulation_runs) are lake tables too: one query joins this run's\n"
        f"config with the rows of the snapshot it trained on:\n{lake.render(joined)}"
    )
    return Section("Pattern 3: Cross-plane join, runs x data", text, {"joined": joined.to_pylist()})


def _plan(query: LakehouseQuery, sql: str) -> str:
    return "\n".join(str(row[-1]) for row in query.execute(f"EXPLAIN {sql}").fetchall())


def pushdown_section(lake: Lakehouse, raw_files: list[str]) -> Section:
    with lake.query_engine() as query:
        query.register_source(raw_files)
        sql = "SELECT filename FROM source WHERE imgid BETWEEN 100 AND 199 AND split = 'restval'"
        plan = _plan(query, sql)
        row_groups, may_match = query.execute(
            """SELECT count(*) AS row_groups, count(*) FILTER (WHERE stats_min_value::BIGINT <= 199
                                                          AND stats_max_value::BIGINT >= 100) AS may_match
               FROM parquet_metadata(?) WHERE path_in_schema = 'imgid'""",
            [raw_files],
        ).fetchall()[0]
    text = (
        f"EXPLAIN {sql}\n\n{plan}\n"
        "The scan reads one column besides the filtered ones (Projections) and applies the WHERE "
        f"(Filters) itself;\nthe imgid statistics leave {may_match} of {row_groups} row groups to read."
    )
    return Section(
        "Pattern 4: Pushdown into the Parquet scan",
        text,
        {"plan": plan, "row_groups": row_groups, "row_groups_to_read": may_match},
    )


def idempotent_ingest_section(lake: Lakehouse) -> Section:
    rows_before = lake.scalar(f"SELECT count(*) FROM {CAPTIONS_TABLE}")
    again = {split: ingest(lake, split) for split in INGEST_SPLITS}
    rows_after = lake.scalar(f"SELECT count(*) FROM {CAPTIONS_TABLE}")
    kept = "the key imgid keeps the lake table" if lake.catalog is not None else "the raw tier stays"
    table = f"lake table {CAPTIONS_TABLE}" if lake.catalog is not None else f"raw view {CAPTIONS_TABLE}"
    shown = rows_table(
        [
            {"split": split, "files_written": r.files_uploaded, "rows_total": r.rows_total}
            for split, r in again.items()
        ]
        + [{"split": table, "files_written": 0, "rows_total": rows_after}]
    )
    text = (
        f"Rerunning every sync: the manifests say the files are whole, and {kept} from\n"
        f"growing ({rows_before:,} rows before, {rows_after:,} after):\n{lake.render(shown)}"
    )
    return Section(
        "Pattern 5: Idempotent ingest",
        text,
        {"again": again, "rows_before": rows_before, "rows_after": rows_after},
    )


def analytics_section(lake: Lakehouse) -> Section:
    per_split = lake.query(
        f"""SELECT split, count(DISTINCT imgid) AS images, count(*) AS captions,
                   round(avg(words), 2) AS avg_words, max(words) AS max_words,
                   round(avg(chars), 1) AS avg_chars,
                   count(DISTINCT lower(caption)) AS distinct,
                   round(100.0 * count(*) FILTER (WHERE caption ILIKE '%dog%') / count(*), 1) AS pct_dogs
            FROM ({CAPTION_ROWS}) GROUP BY split ORDER BY images DESC"""
    )
    return Section(
        "Pattern 6: Analytics across splits",
        lake.render(per_split),
        {"per_split": {row["split"]: row for row in per_split.to_pylist()}},
    )


def lakehouse_patterns_section(lake: Lakehouse, shown: Sequence[Section]) -> Section:
    """The closing table: each pattern, what it gives, and the section of this run that showed it."""
    numbers = {section.title: number for number, section in enumerate(shown, start=1)}
    olap = [str(n) for title, n in numbers.items() if title.startswith("OLAP:")]

    def where(title: str) -> str:
        found = [n for name, n in numbers.items() if name.startswith(title)]
        if not found:
            return "not shown: needs the catalog"
        also = f"; also {olap[0]}-{olap[-1]}" if title.startswith("Pattern 6") and olap else ""
        return f"{found[0]}{also}"

    table = rows_table(
        [
            {"pattern": name, "what it gives": gives, "shown in section": where(title)}
            for name, gives, title in PATTERNS
        ]
    )
    text = (
        "Parquet files you own, a catalog that versions them, and DuckDB to read them: the same data\n"
        f"serves SQL, training streams and run records.\n{lake.render(table)}"
    )
    facts: dict[str, Any] = {"where": {name: where(title) for name, _, title in PATTERNS}}
    return Section("Why a lakehouse: the seven patterns", text, facts)
