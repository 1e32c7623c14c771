"""``duckstream profile``: a readable table, report files, exit codes, and errors without tracebacks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from duckstream.cli import _CHECK_HELP, main
from duckstream.quality.checks import CHECK_HELP
from tests.quality.data import mixed_table, write_parts


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_parts(tmp_path / "mixed", mixed_table())


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_prints_a_table(source: Path) -> None:
    code, text = run("profile", str(source))
    assert code == 0
    assert "rows: 60   columns: 8" in text
    assert any(line.split()[:2] == ["imgid", "BIGINT"] for line in text.splitlines())


def test_failed_checks_exit_1_and_reports_are_written(source: Path, tmp_path: Path) -> None:
    html, markdown, data = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.json"
    code, text = run(
        "profile",
        str(source),
        "--check",
        "not_null:imgid",
        "--check",
        "rows:1:",
        "--key",
        "imgid",
        "--html",
        str(html),
        "--markdown",
        str(markdown),
        "--json",
        str(data),
    )
    assert code == 1
    assert "FAIL  not_null:imgid" in text
    assert "PASS  rows:1:" in text
    assert f"wrote {html}" in text
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "not_null:imgid" in page
    assert markdown.read_text().count("](data:image/png;base64,") == 5
    assert json.loads(data.read_text())["checks"][0]["offending"] == 9


def test_passing_checks_from_a_file_exit_0(source: Path, tmp_path: Path) -> None:
    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps(["not_null:day", {"kind": "values", "column": "split", "values": ["train", "val"]}])
    )
    code, text = run("profile", str(source), "--checks-file", str(checks), "-c", "split", "-c", "day")
    assert code == 0
    assert "checks: 2 passed, 0 failed" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such file or directory"),
        (["{source}", "--check", "not_null:nope"], "names column 'nope'"),
        (["{source}", "--check", "range:meta:1:2"], "does not apply to column 'meta'"),
        (["{source}", "--check", "often:imgid"], "cannot read check"),
        (["{source}", "--checks-file", "{missing}"], "cannot read the checks file"),
        (["{source}", "-c", "nope"], "has no column 'nope'"),
        (["{source}", "--html", "{missing}/deeper/r.html"], "cannot write the report"),
        (["{source}", "--sample", "-1"], "sample must be"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    args: list[str], message: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(source=source, missing=tmp_path / "missing") for a in args]
    code, _ = run("profile", *argv)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("duckstream: error: ")
    assert message in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_an_empty_file_is_reported(tmp_path: Path) -> None:
    pq.write_table(mixed_table().slice(0, 0), tmp_path / "empty.parquet")
    code, text = run("profile", str(tmp_path / "empty.parquet"))
    assert code == 0
    assert "rows: 0" in text
    assert "has no rows" in text


def test_help_lists_the_check_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    assert _CHECK_HELP == CHECK_HELP
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "not_null:COL" in capsys.readouterr().out


def test_a_lake_table_at_a_snapshot(tmp_path: Path) -> None:
    from duckstream.catalog import LakehouseCatalog

    raw = tmp_path / "raw.parquet"
    pq.write_table(mixed_table(40).drop_columns(["meta"]), raw)
    catalog_path = tmp_path / "lake.ducklake"
    with LakehouseCatalog(catalog_path) as catalog:
        catalog.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{raw}')")
        first = catalog.current_snapshot()
        catalog.con.execute("DELETE FROM captions WHERE imgid < 10")
    code, text = run("profile", "captions", "--catalog", str(catalog_path), "--version", str(first))
    assert code == 0
    assert f"source: lake table captions at snapshot {first}" in text
    assert "rows: 40" in text
    code, text = run("profile", "captions", "--catalog", str(catalog_path), "--check", "range:imgid:10:")
    assert code == 0
    assert "rows: 40" not in text


def test_a_lake_table_of_a_catalog_that_keeps_its_files_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from duckstream.catalog import LakehouseCatalog

    raw = tmp_path / "raw.parquet"
    pq.write_table(mixed_table(40).drop_columns(["meta"]), raw)
    catalog_path, files = tmp_path / "demo" / "catalog.ducklake", tmp_path / "demo" / "lake"
    with LakehouseCatalog(catalog_path, files) as catalog:  # as the demo makes its catalog
        catalog.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{raw}')")
        first = catalog.current_snapshot()
        catalog.con.execute(f"INSERT INTO captions SELECT * FROM read_parquet('{raw}')")
    code, text = run("profile", "captions", "--catalog", str(catalog_path), "--version", str(first))
    assert code == 0, capsys.readouterr().err
    assert "rows: 40" in text
    code, text = run("profile", "captions", "--catalog", str(catalog_path))
    assert (code, "rows: 80" in text) == (0, True)
    elsewhere = tmp_path / "elsewhere"
    code, _ = run("profile", "captions", "--catalog", str(catalog_path), "--data-path", str(elsewhere))
    assert code == 1
    error = capsys.readouterr().err
    assert f"keeps its data files in {files}/, not in the data_path given ({elsewhere}/)" in error


def test_catalog_options_without_a_catalog(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("profile", str(source), "--version", "3")
    assert code == 1
    assert "--version and --data-path go with --catalog" in capsys.readouterr().err
    code, _ = run("profile", "nope", "--catalog", str(source / "missing.ducklake"))
    assert code == 1
    assert capsys.readouterr().err.startswith("duckstream: error: ")
