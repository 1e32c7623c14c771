"""Profiles and the read-only session over ``s3://`` sources on the real SeaweedFS server."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.errors import QueryError, RefusedStatementError
from duckstream.quality import LakehouseDeps, profile
from duckstream.services import PostgresService, S3Service
from tests.conftest import upload_dir
from tests.quality.data import mixed_table, write_parts

pytestmark = pytest.mark.services


@pytest.fixture
def s3_data(s3_server: S3Service, s3_bucket: str, tmp_path: Path) -> tuple[str, pa.Table]:
    table = mixed_table()
    directory = write_parts(tmp_path / "mixed", table)
    client = s3_server.boto3_client()
    upload_dir(client, s3_bucket, "mixed", directory)
    upload_dir(client, s3_bucket, "private", directory)
    return f"s3://{s3_bucket}/mixed", table


def test_profile_of_an_s3_prefix(s3_server: S3Service, s3_data: tuple[str, pa.Table]) -> None:
    uri, table = s3_data
    report = profile(
        uri,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        checks=["not_null:imgid"],
    )
    assert report.source == uri
    assert report.total_rows == table.num_rows
    assert report.null_counts == {n: table.column(n).null_count for n in table.column_names}
    assert report.checks[0].offending == table.column("imgid").null_count
    again = profile(
        f"{uri}/*.parquet",
        s3_endpoint=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    assert again.distinct_counts == report.distinct_counts


def test_read_only_session_over_s3(
    s3_server: S3Service, s3_data: tuple[str, pa.Table], s3_bucket: str
) -> None:
    uri, table = s3_data
    with LakehouseDeps(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, sources={"captions": uri}
    ) as deps:
        session = deps.session()
        assert session.run("SELECT count(*) AS n FROM captions").rows == [{"n": table.num_rows}]
        for sql in (
            f"SELECT * FROM read_parquet('s3://{s3_bucket}/private/*.parquet')",
            f"COPY (SELECT 1) TO 's3://{s3_bucket}/mixed/evil.parquet'",
        ):
            with pytest.raises(RefusedStatementError):
                session.run(sql)
        # even past the statement check, the engine cannot reach other objects
        with pytest.raises(Exception, match=r"(?i)permission|disabled"):
            deps.query_engine().execute(
                f"SELECT * FROM read_parquet('s3://{s3_bucket}/private/*.parquet')"
            ).fetchall()
        evil = f"COPY (SELECT 1) TO 's3://{s3_bucket}/mixed/evil.parquet'"
        with pytest.raises(RefusedStatementError, match="only SELECT"):
            deps.query_engine().execute(evil)
        with pytest.raises(RefusedStatementError, match="gives out no DuckDB connection"):
            deps.query_engine().con.execute(evil)
        with pytest.raises(duckdb.PermissionException):  # nor could the connection itself
            deps.query_engine()._connection().execute(evil)
    keys = [o["Key"] for o in s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not any("evil" in k for k in keys)


@pytest.mark.parametrize(
    ("given", "read_as", "rows"),
    [
        ("mixed", "mixed/**/*.parquet", 65),
        ("mixed/", "mixed/**/*.parquet", 65),
        ("mixed/**/*.parquet", "mixed/**/*.parquet", 65),
        ("mixed/part-*.parquet", "mixed/part-*.parquet", 60),
    ],
)
def test_an_s3_source_reads_by_its_uri_and_nothing_beside_it(
    s3_server: S3Service,
    s3_bucket: str,
    s3_data: tuple[str, pa.Table],
    tmp_path: Path,
    given: str,
    read_as: str,
    rows: int,
) -> None:
    """Users' notebooks read the source by its own s3:// URI or glob; the objects beside it stay
    out of reach: a prefix starting with the same name, a non-Parquet object in the prefix, an
    object the glob does not match, another bucket. Nothing is written."""
    _, table = s3_data
    client = s3_server.boto3_client()
    upload_dir(client, s3_bucket, "mixed-private", write_parts(tmp_path / "beside", table, parts=1))
    client.put_object(Bucket=s3_bucket, Key="mixed/notes.csv", Body=b"user,password\nroot,hunter2\n")
    client.put_object(Bucket=s3_bucket, Key="mixed/holdout/x.parquet", Body=_parquet(table.slice(0, 5)))
    other = f"{s3_bucket}-other"
    client.create_bucket(Bucket=other)
    try:
        client.put_object(Bucket=other, Key="mixed/part-0.parquet", Body=_parquet(table))
        before = _objects(client, s3_bucket)
        bucket = f"s3://{s3_bucket}"
        keys = (s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
        with LakehouseDeps(*keys, sources={"captions": f"{bucket}/{given}"}) as deps:
            session, engine = deps.session(), deps.query_engine()
            for sql in (
                "SELECT count(*) AS n FROM captions",
                f"SELECT count(*) AS n FROM read_parquet('{bucket}/{read_as}')",
                f"SELECT count(*) AS n FROM '{bucket}/{read_as}'",
            ):
                assert session.run(sql).rows == [{"n": rows}]
                assert engine.execute(sql).fetchall() == [(rows,)]
            one = f"SELECT count(*) FROM read_parquet('{bucket}/mixed/part-1.parquet')"
            assert engine.execute(one).fetchall() == [(20,)]
            beside = [
                f"read_parquet('{bucket}/mixed-private/part-0.parquet')",
                f"read_parquet('{bucket}/mixed*/**/*.parquet')",
                f"read_parquet('{bucket}/**/*.parquet')",
                f"read_csv('{bucket}/mixed/notes.csv')",
                f"read_text('{bucket}/mixed/notes.csv')",
                f"read_parquet('s3://{other}/mixed/part-0.parquet')",
                f"read_parquet('{bucket}/private/*.parquet')",
            ]
            if rows == 60:
                beside.append(f"read_parquet('{bucket}/mixed/holdout/x.parquet')")
            for scan in beside:
                sql = f"SELECT count(*) AS n FROM {scan}"
                with pytest.raises(RefusedStatementError, match="outside the session's sources"):
                    session.run(sql)
                with pytest.raises(QueryError, match=r"(?i)permission"):
                    engine.execute(sql).fetchall()
            for sql in (
                f"COPY (SELECT 42 AS evil) TO '{bucket}/{read_as}'",
                f"COPY (SELECT 42 AS evil) TO '{bucket}/mixed/part-0.parquet' (FORMAT parquet)",
            ):
                with pytest.raises(RefusedStatementError, match="only SELECT"):
                    engine.execute(sql)
        assert _objects(client, s3_bucket) == before
    finally:
        for key in _objects(client, other):
            client.delete_object(Bucket=other, Key=key)
        client.delete_bucket(Bucket=other)


def _objects(client: Any, bucket: str) -> dict[str, str]:
    """Each object's key and ETag: what changes if anything is written."""
    return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_lake_table_on_postgres_and_s3(
    s3_server: S3Service, s3_bucket: str, postgres_server: PostgresService, pg_database: str, tmp_path: Path
) -> None:
    table = mixed_table(40).drop_columns(["meta"])
    raw = tmp_path / "raw.parquet"
    pq.write_table(table, raw)
    keys = (s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    with LakehouseCatalog(postgres_server.dsn(pg_database), f"s3://{s3_bucket}/lake", *keys) as catalog:
        catalog.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{raw}')")
        pinned = catalog.table("captions")
        catalog.con.execute("DELETE FROM captions WHERE imgid < 10")
        report = profile(pinned, s3_endpoint=keys[0], s3_access_key=keys[1], s3_secret_key=keys[2])
        assert report.total_rows == 40
        with LakehouseDeps(*keys, sources={"captions": pinned}) as deps:
            assert deps.session().run("SELECT count(*) AS n FROM captions").rows == [{"n": 40}]
            with pytest.raises(RefusedStatementError):
                deps.session().run(f"SELECT * FROM read_parquet('{raw}')")
