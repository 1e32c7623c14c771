from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from duckstream.errors import DuckstreamError, QueryError, SourceError
from duckstream.query import LakehouseQuery
from tests.plans import plan_nodes, scan_filters


def test_reads_one_file_as_arrow_and_pandas(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        result = query.execute(
            f"SELECT id, label FROM read_parquet('{parquet_dir / 'part-1.parquet'}') ORDER BY id"
        )
        table = result.to_arrow()
        frame = result.to_pandas()
    assert table.num_rows == 100
    assert table.column("id").to_pylist() == list(range(100, 200))
    assert list(frame.columns) == ["id", "label"]
    assert frame["label"].iloc[0] == "even-100"


def test_glob_reads_every_file(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        rows = query.execute(
            f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM '{parquet_dir}/*.parquet'"
        ).fetchall()
    assert rows == [(300, 300, 0, 299)]


def test_schema_comes_back_with_arrow_types(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        schema = query.execute(f"SELECT * FROM '{parquet_dir}/*.parquet'").to_arrow().schema
    assert schema.field("id").type == pa.int64()
    assert schema.field("value").type == pa.float64()
    assert schema.field("label").type in (pa.string(), pa.large_string(), pa.string_view())
    # Parquet has no fixed-size list; DuckDB reads the column back as a plain list.
    vector = schema.field("vector").type
    assert pa.types.is_list(vector)
    assert vector.value_type == pa.float32()


def test_filter_is_pushed_into_the_parquet_scan(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        sql = f"SELECT label FROM '{parquet_dir}/*.parquet' WHERE id >= 250 AND value < 140"
        filters = scan_filters(query, sql)
        operators = [node["name"] for node in plan_nodes(query, sql)]
        assert query.execute(sql).to_arrow().num_rows == 30
    assert any("id>=250" in f for f in filters), filters
    assert any("value<140" in f for f in filters), filters
    assert "FILTER" not in operators


def test_register_source_names_the_files_source(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        patterns = query.register_source(parquet_dir)
        assert patterns == [str(parquet_dir / "**" / "*.parquet")]
        assert query.execute("SELECT count(*) FROM source").fetchall() == [(300,)]
        query.register_source([parquet_dir / "part-0.parquet", parquet_dir / "part-2.parquet"], "two")
        assert query.execute("SELECT count(*) FROM two").fetchall() == [(200,)]


def test_arrow_reader_streams_in_bounded_batches(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        reader = query.execute(f"SELECT * FROM '{parquet_dir}/*.parquet'").to_arrow_reader(64)
        sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 300
    assert max(sizes) <= 64


def test_statements_without_result_return_empty_results(tmp_path: Path) -> None:
    with LakehouseQuery(database=str(tmp_path / "db.duckdb")) as query:
        created = query.execute("CREATE TABLE t AS SELECT range AS i FROM range(5)")
        assert created.to_arrow().num_rows == 0
        assert created.fetchall() == []
        assert query.execute("SELECT sum(i) FROM t").fetchall() == [(10,)]


def test_parameters_are_bound(parquet_dir: Path) -> None:
    with LakehouseQuery() as query:
        rows = query.execute(f"SELECT count(*) FROM '{parquet_dir}/*.parquet' WHERE id < ?", [10]).fetchall()
    assert rows == [(10,)]


def test_missing_file_error_names_statement_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    with LakehouseQuery() as query, pytest.raises(QueryError) as raised:
        query.execute(f"SELECT * FROM '{missing}'")
    assert str(missing) in str(raised.value)
    assert raised.value.statement == f"SELECT * FROM '{missing}'"


def test_corrupt_file_error_names_the_file(parquet_dir: Path) -> None:
    corrupt = parquet_dir / "part-9.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    with LakehouseQuery() as query, pytest.raises(QueryError) as raised:
        query.execute(f"SELECT sum(id) FROM '{parquet_dir}/*.parquet'").to_arrow()
    assert str(corrupt) in raised.value.files
    assert "in statement: SELECT sum(id)" in str(raised.value)


def test_unknown_column_error_names_the_column(parquet_dir: Path) -> None:
    with LakehouseQuery() as query, pytest.raises(QueryError, match='"nope" not found'):
        query.execute(f"SELECT nope FROM '{parquet_dir}/*.parquet'")


def test_errors_raised_while_streaming_are_query_errors(parquet_dir: Path) -> None:
    sql = f"SELECT error('bad row ' || id) FROM '{parquet_dir}/*.parquet' WHERE id = 123"
    with LakehouseQuery() as query, pytest.raises(QueryError, match="bad row 123"):
        list(query.execute(sql).to_arrow_reader())


def test_sources_that_name_nothing_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with LakehouseQuery() as query:
        with pytest.raises(SourceError, match="no such file"):
            query.register_source(tmp_path / "nothing-here")
        with pytest.raises(SourceError, match="holds no"):
            query.register_source(tmp_path / "empty")
        with pytest.raises(SourceError, match="no files match"):
            query.register_source(str(tmp_path / "*.parquet"))
        with pytest.raises(SourceError, match="expected a path"):
            query.register_source([])


def test_closed_query_refuses_work_and_closes_twice() -> None:
    query = LakehouseQuery()
    query.close()
    query.close()
    with pytest.raises(DuckstreamError, match="closed"):
        query.execute("SELECT 1")
    assert "closed" in repr(query)


def test_context_exit_closes_the_connection() -> None:
    with LakehouseQuery() as query:
        con = query.con
    with pytest.raises(Exception, match=r"(?i)closed"):
        con.execute("SELECT 1")
