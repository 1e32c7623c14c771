"""Profiles and the read-only session over ``s3://`` sources on the real SeaweedFS server."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.devservices import PostgresService, S3Service
from duckstream.errors import RefusedStatementError
from duckstream.quality import LakehouseDeps, profile
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
        with pytest.raises(Exception, match=r"(?i)permission|disabled"):
            deps.query_engine().execute(
                f"COPY (SELECT 1) TO 's3://{s3_bucket}/mixed/evil.parquet'"
            ).fetchall()
    keys = [o["Key"] for o in s3_server.boto3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not any("evil" in k for k in keys)


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
