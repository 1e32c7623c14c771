"""The read-only SQL session: every way out is refused with a readable reason, and the engine
itself (without the statement check) cannot write, read other files or change its settings."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.catalog import LakehouseCatalog
from duckstream.errors import ConfigurationError, DuckstreamError, QueryError, RefusedStatementError
from duckstream.quality import LakehouseDeps
from tests.dev_install import require
from tests.quality.data import mixed_table, write_parts


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the source (``mixed/``) and a file beside it no query may read."""
    path = tmp_path_factory.mktemp("readonly")
    write_parts(path / "mixed", mixed_table())
    (path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    return path


@pytest.fixture
def data(home: Path) -> tuple[Path, pa.Table]:
    return home / "mixed", mixed_table()


@pytest.fixture(scope="module")
def shared(home: Path) -> Iterator[LakehouseDeps]:
    with LakehouseDeps(sources={"captions": home / "mixed"}, max_rows=10, timeout_s=1.0) as deps:
        yield deps


@pytest.fixture
def deps(shared: LakehouseDeps) -> LakehouseDeps:
    return shared


def test_selects_over_the_sources(deps: LakehouseDeps, data: tuple[Path, pa.Table]) -> None:
    _, table = data
    session = deps.session()
    answer = session.run("SELECT count(*) AS n, count(DISTINCT split) AS s FROM captions")
    assert answer.rows == [{"n": table.num_rows, "s": 2}]
    assert not answer.truncated
    described = session.run("DESCRIBE captions")
    assert [r["column_name"] for r in described.rows] == table.column_names
    with_cte = session.run(
        "WITH t AS (SELECT imgid FROM captions WHERE imgid > 3) SELECT count(*) AS n FROM t"
    )
    assert with_cte.rows[0]["n"] == sum(
        1 for i in table.column("imgid").to_pylist() if i is not None and i > 3
    )


def test_row_limit(deps: LakehouseDeps, data: tuple[Path, pa.Table]) -> None:
    answer = deps.session().run("SELECT imgid FROM captions")
    assert len(answer.rows) == 10
    assert answer.truncated
    assert answer.row_limit == 10
    assert [r["imgid"] for r in answer.rows] == data[1].column("imgid").to_pylist()[:10]
    assert len(deps.session().run("SELECT * FROM range(100000000)").rows) == 10


ESCAPES = {
    "insert": "INSERT INTO captions VALUES (1)",
    "update": "UPDATE captions SET imgid = 0",
    "delete": "DELETE FROM captions",
    "create table": "CREATE TABLE t AS SELECT * FROM captions",
    "create view": "CREATE VIEW v AS SELECT 1",
    "create macro": "CREATE MACRO m(x) AS x",
    "drop": "DROP VIEW captions",
    "alter": "ALTER VIEW captions RENAME TO c2",
    "copy to": "COPY captions TO '{tmp}/out.csv'",
    "copy query to": "COPY (SELECT * FROM captions) TO '{tmp}/out.parquet' (FORMAT parquet)",
    "copy from": "COPY captions FROM '{tmp}/secret.csv'",
    "export": "EXPORT DATABASE '{tmp}/export'",
    "import": "IMPORT DATABASE '{tmp}/export'",
    "attach": "ATTACH '{tmp}/other.duckdb' AS other",
    "detach": "DETACH memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "reset": "RESET lock_configuration",
    "pragma": "PRAGMA threads = 1",
    "use": "USE system",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "vacuum": "VACUUM",
    "explain analyze": "EXPLAIN ANALYZE SELECT 1",
    "pivot (creates a type)": "PIVOT captions ON split",
    "secret": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "multi-statement": "SELECT 1; DROP VIEW captions",
    "cte that writes": "WITH x AS (SELECT 1) INSERT INTO captions SELECT * FROM x",
    "read_csv outside": "SELECT * FROM read_csv('{tmp}/secret.csv')",
    "read_csv /etc": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('{tmp}/secret.csv')",
    "read_parquet /etc": "SELECT * FROM read_parquet('/etc/x.parquet')",
    "glob": "SELECT * FROM glob('{tmp}/*')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('/etc/x.parquet')",
    "bare file name": "SELECT * FROM '{tmp}/secret.csv'",
    # DuckDB allows a glob only as the source names it (here {tmp}/mixed/**/*.parquet)
    "another glob over the source's files": "SELECT * FROM read_parquet('{tmp}/mixed/*.parquet')",
    "a glob over the source and beside it": "SELECT * FROM read_parquet('{tmp}/**/*.parquet')",
    "the sibling file by name": "SELECT * FROM '{tmp}/secret.csv'",
    "another table": "SELECT * FROM captions, other_table",
    "duckdb secrets": "SELECT * FROM duckdb_secrets()",
    "empty": "   ",
    "not sql": "DROP EVERYTHING NOW",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_every_escape_is_refused_with_a_reason(name: str, deps: LakehouseDeps, home: Path) -> None:
    sql = ESCAPES[name].format(tmp=home)
    with pytest.raises(QueryError) as caught:
        deps.session().run(sql)
    message = str(caught.value)
    assert message
    assert "\n" not in message
    if name not in ("not sql",):
        assert isinstance(caught.value, RefusedStatementError), message
        assert message.startswith("refused: ")
    # Nothing changed and nothing was written.
    assert deps.session().run("SELECT count(*) AS n FROM captions").rows == [{"n": 60}]
    assert sorted(p.name for p in home.iterdir()) == ["mixed", "secret.csv"]


def test_the_timeout_stops_a_long_query(deps: LakehouseDeps) -> None:
    with pytest.raises(RefusedStatementError, match="longer than the limit of 1 s"):
        deps.session().run("SELECT count(*) FROM range(1000000000000) a")
    assert deps.session().run("SELECT 1 AS one").rows == [{"one": 1}]  # the session still works


ENGINE_ESCAPES = [
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "SELECT * FROM read_csv('{tmp}/secret.csv')",
    "SELECT * FROM read_text('/etc/passwd')",
    "ATTACH '{tmp}/other.duckdb'",
    "INSTALL '{tpch}'",
    "INSTALL tpch FROM '{repository}'",
    "LOAD '{tpch}'",
    # (DuckDB itself never turns external access back on while a database runs.)
    "SET autoload_known_extensions = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "EXPORT DATABASE '{tmp}/export'",
]


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An extension duckstream never loads (tpch): its binary, and a local repository holding it."""
    package = require("duckdb_extension_tpch")
    version = f"v{duckdb.__version__}"
    binary = Path(next(iter(package.__path__)), "extensions", version, "tpch.duckdb_extension")
    repository = tmp_path_factory.mktemp("repository")
    platform = duckdb.connect().execute("PRAGMA platform").fetchall()[0][0]
    (repository / version / platform).mkdir(parents=True)
    shutil.copy(binary, repository / version / platform)
    return {"tpch": binary, "repository": repository}


@pytest.mark.parametrize("sql", ENGINE_ESCAPES)
def test_the_engine_itself_cannot_get_out(
    sql: str, deps: LakehouseDeps, home: Path, extension: dict[str, Path]
) -> None:
    """Read-only by construction: even SQL that skips the session's check stays inside, on the
    engine and on its DuckDB connection itself."""
    engine = deps.query_engine()
    with pytest.raises(DuckstreamError):
        engine.execute(sql.format(tmp=home, **extension)).fetchall()
    with pytest.raises(duckdb.Error):  # the connection the session locked, which no user gets
        engine._connection().execute(sql.format(tmp=home, **extension)).fetchall()
    assert sorted(p.name for p in home.iterdir()) == ["mixed", "secret.csv"]
    assert engine.execute("SELECT count(*) FROM captions").fetchall() == [(60,)]


@pytest.mark.parametrize("sql", ENGINE_ESCAPES)
def test_each_way_out_works_on_a_connection_left_unlocked(
    sql: str, tmp_path: Path, extension: dict[str, Path]
) -> None:
    """The ways out above are real: on a DuckDB connection nobody locked, each one succeeds."""
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    with duckdb.connect(config={"extension_directory": str(tmp_path / "extensions")}) as con:
        con.execute(sql.format(tmp=tmp_path, **extension))


def test_the_engine_gives_out_no_connection_that_could_overwrite_a_source(tmp_path: Path) -> None:
    # DuckDB's allowlist lets the connection write the very files it may read.
    path = tmp_path / "captions.parquet"
    pq.write_table(mixed_table(20).drop_columns(["meta"]), path)
    before = path.read_bytes()
    overwrite = f"COPY (SELECT 1 AS x) TO '{path}' (FORMAT parquet, USE_TMP_FILE false)"
    with LakehouseDeps(sources={"captions": path}) as deps:
        engine = deps.query_engine()
        with pytest.raises(RefusedStatementError, match="gives out no DuckDB connection"):
            engine.con.execute(overwrite)
        with pytest.raises(RefusedStatementError, match="only SELECT"):
            engine.execute(overwrite)
        assert engine.execute("SELECT count(*) FROM captions").fetchall() == [(20,)]
    assert path.read_bytes() == before


def test_lake_table_source(tmp_path: Path) -> None:
    table = mixed_table(30).drop_columns(["meta"])
    path = tmp_path / "raw.parquet"
    pq.write_table(table, path)
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as catalog:
        catalog.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{path}')")
        catalog.con.execute("CREATE TABLE other AS SELECT 42 AS answer")
        pinned = catalog.table("captions")
        catalog.con.execute("DELETE FROM captions")
        with LakehouseDeps(sources={"captions": pinned}) as deps:
            session = deps.session()
            assert session.run("SELECT count(*) AS n FROM captions").rows == [{"n": 30}]
            with pytest.raises(RefusedStatementError, match="not a source"):
                session.run("SELECT * FROM lake.other")
            with pytest.raises(RefusedStatementError, match="not a source"):
                session.run("SELECT * FROM __ducklake_metadata_lake.main.ducklake_snapshot")
            for sneaky in (
                "SELECT * FROM query_table('lake.other')",
                "SELECT * FROM query('SELECT * FROM lake.other')",
                "SELECT * FROM ducklake_snapshots('lake')",
            ):
                with pytest.raises(QueryError):
                    session.run(sneaky)
            with pytest.raises(RefusedStatementError):
                session.run(f"SELECT * FROM read_csv('{path}')")
            # not even the data files of another table of the same lake
            with pytest.raises(RefusedStatementError, match="outside"):
                session.run(f"SELECT * FROM read_parquet('{tmp_path}/files/main/other/*.parquet')")
            with pytest.raises(DuckstreamError, match=r"(?i)permission"):
                deps.query_engine().execute(
                    f"SELECT * FROM read_parquet('{tmp_path}/files/**/*.parquet')"
                ).fetchall()
        # the catalog is still writable by its owner
        catalog.con.execute("INSERT INTO other VALUES (43)")


def test_bad_deps() -> None:
    with pytest.raises(ConfigurationError, match="identifier"):
        LakehouseDeps(sources={"not a name": "x.parquet"})
    with pytest.raises(ConfigurationError, match="max_rows"):
        LakehouseDeps(max_rows=0)
    deps = LakehouseDeps(sources={})
    with pytest.raises(ConfigurationError, match="no source named 'x'"):
        deps.source("x")
    deps.close()
    deps.close()
    with pytest.raises(DuckstreamError, match="closed"):
        deps.query_engine()


def test_close_releases_the_engine(home: Path) -> None:
    deps = LakehouseDeps(sources={"captions": home / "mixed"})
    engine = deps.query_engine()
    deps.close()
    with pytest.raises(DuckstreamError, match="closed"):
        engine.execute("SELECT 1")


def test_parallel_queries_and_a_timeout_beside_them(deps: LakehouseDeps) -> None:
    """Tools may run in threads: each query has its own cursor, and a timeout stops only its own."""
    from concurrent.futures import ThreadPoolExecutor

    session = deps.session()

    def count(_: int) -> object:
        return session.run("SELECT count(*) AS n FROM captions, range(20000)").rows

    with ThreadPoolExecutor(max_workers=4) as pool:
        slow = pool.submit(session.run, "SELECT count(*) FROM range(1000000000000) a")
        counts = list(pool.map(count, range(6)))
        with pytest.raises(RefusedStatementError, match="longer than the limit"):
            slow.result()
    assert counts == [[{"n": 60 * 20000}]] * 6


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    """Parts of a source, and beside them what no session over it may read: a Parquet file the
    source's glob does not match, a CSV file in its directory, a directory whose name starts
    like the source's, and a file one level up."""
    table = mixed_table()
    write_parts(tmp_path / "captions", table)
    write_parts(tmp_path / "captions" / "more", table, parts=1)
    pq.write_table(table.slice(0, 5), tmp_path / "captions" / "holdout.parquet")
    (tmp_path / "captions" / "notes.csv").write_text("a\n1\n")
    write_parts(tmp_path / "captions-private", table, parts=1)
    pq.write_table(table, tmp_path / "other.parquet")
    return tmp_path


def _run(deps: LakehouseDeps, sql: str) -> object:
    """What the session and the engine both answer; each must answer the same."""
    answer = deps.session().run(sql).rows[0]["n"]
    assert deps.query_engine().execute(sql).fetchall() == [(answer,)]
    return answer


def _matched(name: str) -> list[str]:
    """The Parquet files a path, directory or glob names, listed by Python."""
    path = Path(name)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(glob.glob(name, recursive=True))


def _rows(files: list[str]) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


@pytest.mark.parametrize(
    ("given", "named_as"),
    [
        ("captions/part-*.parquet", []),
        ("captions", ["captions/", "captions/**/*.parquet"]),
        ("captions/part-1.parquet", []),
        (["captions/part-0.parquet", "captions/more/*.parquet"], []),
    ],
)
def test_a_source_reads_by_the_path_glob_or_directory_it_was_given(
    shelf: Path, given: str | list[str], named_as: list[str]
) -> None:
    items = [str(shelf / g) for g in ([given] if isinstance(given, str) else given)]
    files = sorted({f for item in items for f in _matched(item)})
    with LakehouseDeps(sources={"captions": items[0] if isinstance(given, str) else items}) as deps:
        assert _run(deps, "SELECT count(*) AS n FROM captions") == _rows(files)
        for name in [*items, *(f"{shelf}/{n}" for n in named_as)]:
            expected = _rows(_matched(name))
            assert _run(deps, f"SELECT count(*) AS n FROM read_parquet('{name}')") == expected
            if not Path(name).is_dir():  # FROM '<path>' does not read a directory in DuckDB
                assert _run(deps, f"SELECT count(*) AS n FROM '{name}'") == expected
        for file in files:
            assert _run(deps, f"SELECT count(*) AS n FROM read_parquet('{file}')") == _rows([file])
        beside = [
            *(f"read_parquet('{f}')" for f in _matched(f"{shelf}/**/*.parquet") if f not in files),
            f"read_parquet('{shelf}/captions/*.parquet')",  # a glob the source was not given by
            f"read_csv('{shelf}/captions/notes.csv')",
            f"read_text('{shelf}/captions/notes.csv')",
            f"read_parquet('{shelf}/captions-private')",
            f"read_parquet('{shelf}/captions/../other.parquet')",
            f"read_parquet('{shelf}/**/*.parquet')",
            f"glob('{shelf}/*')",
        ]
        for scan in beside:
            sql = f"SELECT count(*) AS n FROM {scan}"
            with pytest.raises(RefusedStatementError, match="outside the session's sources"):
                deps.session().run(sql)
            with pytest.raises(QueryError, match=r"(?i)permission"):
                deps.query_engine().execute(sql).fetchall()


def test_writes_to_the_sources_own_paths_are_refused(shelf: Path) -> None:
    """DuckDB's allowlist lets a listed file or pattern be written as well as read: the engine
    takes SELECT statements only."""
    directory = shelf / "captions"
    before = {p: p.read_bytes() for p in sorted(shelf.rglob("*")) if p.is_file()}
    with LakehouseDeps(sources={"dir": directory, "glob": f"{directory}/part-*.parquet"}) as deps:
        for sql in (
            f"COPY (SELECT 42 AS evil) TO '{directory}/part-0.parquet' (FORMAT parquet, USE_TMP_FILE false)",
            f"COPY (SELECT 42 AS evil) TO '{directory}/part-*.parquet' (FORMAT parquet, USE_TMP_FILE false)",
            f"COPY (SELECT 42 AS evil) TO '{directory}' (FORMAT parquet, PER_THREAD_OUTPUT, OVERWRITE)",
            f"ATTACH '{directory}/part-*.parquet' AS evil",
            f"EXPORT DATABASE '{directory}'",
            f"SELECT 1; COPY (SELECT 42 AS evil) TO '{directory}/part-0.parquet' (USE_TMP_FILE false)",
        ):
            with pytest.raises(RefusedStatementError, match="only SELECT"):
                deps.query_engine().execute(sql)
            with pytest.raises(RefusedStatementError):
                deps.session().run(sql)
        assert deps.query_engine().execute("SELECT count(*) FROM dir").fetchall() == [(125,)]
    assert {p: p.read_bytes() for p in sorted(shelf.rglob("*")) if p.is_file()} == before


def test_files_that_appear_later_are_not_the_sources(shelf: Path) -> None:
    """A glob reads the files it matched when the session opened, and refuses newcomers."""
    with LakehouseDeps(sources={"captions": f"{shelf}/captions/part-*.parquet"}) as deps:
        sql = f"SELECT count(*) AS n FROM read_parquet('{shelf}/captions/part-*.parquet')"
        assert _run(deps, sql) == 60
        pq.write_table(mixed_table(), shelf / "captions" / "part-9.parquet")
        with pytest.raises(RefusedStatementError, match=r"part-9\.parquet"):
            deps.session().run(sql)
        assert deps.session().run("SELECT count(*) AS n FROM captions").rows == [{"n": 60}]
