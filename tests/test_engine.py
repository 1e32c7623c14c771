from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from duckstream import engine
from duckstream.errors import ConfigurationError, ExtensionError, QueryError
from duckstream.storage import S3Settings

NO_S3 = S3Settings.resolve(environ={})


@pytest.mark.parametrize("name", engine.ALL_EXTENSIONS)
def test_extensions_load_from_their_pip_packages(name: str) -> None:
    path = engine.extension_path(name)
    assert path is not None
    assert path.is_file()
    assert f"v{duckdb.__version__}" in path.parts
    con = engine.connect(s3=NO_S3, extensions=[name])
    loaded = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?", [name]).fetchone()
    assert loaded == (True,)
    con.close()


def test_an_extension_without_package_falls_back_to_install_and_says_what_to_pip() -> None:
    # No pip package ships 'spatial' here and nothing can be downloaded: the fallback INSTALL
    # runs and fails, and the error names the package that would provide the binary.
    assert engine.extension_path("spatial") is None
    with pytest.raises(ExtensionError, match=r"duckdb-extension-spatial==\d"):
        engine.connect(s3=NO_S3, extensions=["spatial"])


def test_threads_and_memory_limit_are_applied() -> None:
    con = engine.connect(s3=NO_S3, threads=3, memory_limit="1GB", extensions=())
    assert con.execute("SELECT current_setting('threads')").fetchone() == (3,)
    memory = con.execute("SELECT current_setting('memory_limit')").fetchone()
    assert memory is not None
    assert memory[0].startswith(("953.6 MiB", "1000.0 MB", "1.0 GB"))
    con.close()


def test_invalid_threads_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="threads must be at least 1, found 0"):
        engine.connect(s3=NO_S3, threads=0)


def test_s3_secret_is_created_and_duckdb_does_not_show_it() -> None:
    s3 = S3Settings.resolve("127.0.0.1:1", "engine-key-1", "engine-secret-1", environ={})
    con = engine.connect(s3=s3)
    rows = con.execute("SELECT name, type, secret_string FROM duckdb_secrets()").fetchall()
    assert [(name, kind) for name, kind, _ in rows] == [(engine.S3_SECRET_NAME, "s3")]
    assert "engine-secret-1" not in rows[0][2]
    assert "endpoint=127.0.0.1:1" in rows[0][2]
    con.close()


def test_no_secret_without_credentials_or_endpoint() -> None:
    con = engine.connect(s3=NO_S3)
    assert con.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)
    con.close()


def test_opening_a_bad_database_path_is_a_clear_error(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "x.duckdb"
    with pytest.raises(ConfigurationError, match="could not open DuckDB database"):
        engine.connect(str(missing_dir), s3=NO_S3)


def test_query_error_names_statement_and_file_and_hides_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    sql = f"SELECT * FROM '{bad}' -- password=hunter2-pw"
    con = duckdb.connect()
    with pytest.raises(duckdb.Error) as raised:
        con.execute(sql).fetchall()
    error = engine.query_error(raised.value, sql)
    assert isinstance(error, QueryError)
    assert str(bad) in error.files
    assert str(bad) in str(error)
    assert "in statement: SELECT * FROM" in str(error)
    assert "hunter2-pw" not in str(error) + error.statement + error.engine_message


def test_sql_literal_escapes_quotes() -> None:
    assert engine.sql_literal("it's") == "'it''s'"
    assert duckdb.sql(f"SELECT {engine.sql_literal(chr(39) * 3)}").fetchone() == ("'''",)
