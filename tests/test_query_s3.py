"""LakehouseQuery against the real SeaweedFS S3 server the fixtures start."""

from __future__ import annotations

from pathlib import Path

import pytest

from duckstream.errors import S3AccessError
from duckstream.query import LakehouseQuery
from duckstream.services import S3Service
from tests.conftest import upload_dir
from tests.plans import scan_filters

pytestmark = pytest.mark.services


@pytest.fixture
def s3_data(s3_server: S3Service, s3_bucket: str, parquet_dir: Path) -> str:
    """``s3://bucket/data`` holding the three files of ``parquet_dir``."""
    upload_dir(s3_server.boto3_client(), s3_bucket, "data", parquet_dir)
    return f"s3://{s3_bucket}/data"


def open_query(s3: S3Service) -> LakehouseQuery:
    return LakehouseQuery(s3.endpoint, s3.access_key, s3.secret_key)


def test_reads_a_file_on_s3(s3_server: S3Service, s3_data: str) -> None:
    with open_query(s3_server) as query:
        table = query.execute(f"SELECT id FROM read_parquet('{s3_data}/part-2.parquet')").to_arrow()
    assert sorted(table.column("id").to_pylist()) == list(range(200, 300))


def test_reads_an_s3_glob(s3_server: S3Service, s3_data: str) -> None:
    with open_query(s3_server) as query:
        rows = query.execute(
            f"SELECT count(*), sum(id), count(DISTINCT filename) "
            f"FROM read_parquet('{s3_data}/*.parquet', filename = true)"
        ).fetchall()
    assert rows == [(300, sum(range(300)), 3)]


def test_schema_over_s3(s3_server: S3Service, s3_data: str) -> None:
    with open_query(s3_server) as query:
        described = query.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{s3_data}/*.parquet')"
        ).fetchall()
    assert described == [
        ("id", "BIGINT"),
        ("value", "DOUBLE"),
        ("label", "VARCHAR"),
        ("vector", "FLOAT[]"),
    ]


def test_predicate_pushdown_over_s3(s3_server: S3Service, s3_data: str) -> None:
    sql = f"SELECT label FROM '{s3_data}/*.parquet' WHERE id BETWEEN 10 AND 19"
    with open_query(s3_server) as query:
        filters = scan_filters(query, sql)
        labels = query.execute(sql).to_arrow().column("label").to_pylist()
    pushed = " ".join(filters)
    assert "id>=10" in pushed, filters
    assert "id<=19" in pushed, filters
    assert sorted(labels) == sorted(f"even-{i}" if i % 2 == 0 else f"odd-{i}" for i in range(10, 20))


def test_register_source_on_an_s3_prefix(s3_server: S3Service, s3_data: str) -> None:
    with open_query(s3_server) as query:
        patterns = query.register_source(s3_data)
        assert patterns == [f"{s3_data}/**/*.parquet"]
        assert query.execute("SELECT count(*) FROM source").fetchall() == [(300,)]


def test_environment_supplies_endpoint_and_keys(
    s3_server: S3Service, s3_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUCKSTREAM_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    with LakehouseQuery() as query:
        assert query.execute(f"SELECT count(*) FROM '{s3_data}/*.parquet'").fetchall() == [(300,)]


def test_writes_parquet_to_s3(s3_server: S3Service, s3_bucket: str) -> None:
    target = f"s3://{s3_bucket}/written/out.parquet"
    with open_query(s3_server) as query:
        query.execute(f"COPY (SELECT range AS i FROM range(1000)) TO '{target}'")
        assert query.execute(f"SELECT sum(i) FROM '{target}'").fetchall() == [(499500,)]


@pytest.mark.parametrize("wrong", ["secret", "both"])
def test_wrong_credentials_give_a_clear_error_without_secrets(
    s3_server: S3Service, s3_data: str, wrong: str
) -> None:
    bad_key = "WRONGACCESSKEY42" if wrong == "both" else s3_server.access_key
    bad_secret = "wrong-secret-value-0123456789"
    with LakehouseQuery(s3_server.endpoint, bad_key, bad_secret) as query:
        with pytest.raises(S3AccessError) as raised:
            query.execute(f"SELECT count(*) FROM '{s3_data}/part-0.parquet'").fetchall()
        shown = " ".join(
            [
                str(raised.value),
                repr(raised.value),
                raised.value.engine_message,
                raised.value.statement,
                repr(query),
            ]
        )
    assert "refused the request" in str(raised.value)
    assert s3_server.endpoint_url in str(raised.value)
    assert "part-0.parquet" in str(raised.value)
    for secret in (bad_key, bad_secret, s3_server.secret_key):
        assert secret not in shown
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_read_only_identity_cannot_write(s3_server: S3Service, s3_data: str) -> None:
    settings = s3_server.settings(read_only=True)
    with LakehouseQuery(settings.endpoint, settings.access_key, settings.secret_key) as query:
        assert query.execute(f"SELECT count(*) FROM '{s3_data}/*.parquet'").fetchall() == [(300,)]
        with pytest.raises(S3AccessError):
            query.execute(f"COPY (SELECT 1 AS i) TO '{s3_data}/forbidden.parquet'")
