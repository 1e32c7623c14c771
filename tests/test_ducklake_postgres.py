"""The PostgreSQL fixture proven end to end: a DuckLake catalog on it, its data on S3."""

from __future__ import annotations

import pytest

from duckstream.engine import sql_literal
from duckstream.query import LakehouseQuery
from duckstream.services import PostgresService, S3Service

pytestmark = pytest.mark.services


def test_ducklake_on_postgres_with_data_on_s3_round_trips_a_table(
    s3_server: S3Service, s3_bucket: str, postgres_server: PostgresService, pg_database: str
) -> None:
    attach = (
        f"ATTACH {sql_literal('ducklake:postgres:' + postgres_server.libpq(pg_database))} AS lake "
        f"(DATA_PATH 's3://{s3_bucket}/lake/')"
    )
    with LakehouseQuery(s3_server.endpoint, s3_server.access_key, s3_server.secret_key) as query:
        query.execute(attach)
        query.execute(
            "CREATE TABLE lake.samples AS "
            "SELECT range AS id, 'sample-' || range AS name, [range, range * 2] AS pair FROM range(1000)"
        )
        query.execute("INSERT INTO lake.samples SELECT 1000, 'late', [1, 2]")
        first = query.execute("SELECT count(*), sum(id) FROM lake.samples").fetchall()
        files = query.execute("SELECT data_file FROM ducklake_list_files('lake', 'samples')").fetchall()
        query.execute("DETACH lake")

    assert first == [(1001, sum(range(1001)))]
    assert files
    assert all(f.startswith(f"s3://{s3_bucket}/lake/") for (f,) in files)

    # The Parquet objects are on the S3 server...
    objects = s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket, Prefix="lake/")
    keys = [obj["Key"] for obj in objects.get("Contents", [])]
    assert keys
    assert all(key.endswith(".parquet") for key in keys)
    # ...and the catalog is in PostgreSQL, readable by plain SQL.
    with postgres_server.connect(pg_database) as conn:
        tables = conn.execute("SELECT table_name FROM ducklake_table").fetchall()
    assert ("samples",) in tables

    # A fresh session sees the same table through the catalog.
    with LakehouseQuery(s3_server.endpoint, s3_server.access_key, s3_server.secret_key) as query:
        query.execute(attach.replace(f"(DATA_PATH 's3://{s3_bucket}/lake/')", "(READ_ONLY)"))
        rows = query.execute(
            "SELECT id, name, pair FROM lake.samples WHERE id IN (0, 999, 1000) ORDER BY id"
        ).fetchall()
    assert rows == [(0, "sample-0", [0, 0]), (999, "sample-999", [999, 1998]), (1000, "late", [1, 2])]
