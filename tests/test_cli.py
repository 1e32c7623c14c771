from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from duckstream.cli import main
from duckstream.demo import caption_table
from duckstream.services import S3Service
from tests.conftest import upload_dir


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_query_prints_a_readable_table(parquet_dir: Path) -> None:
    code, text = run_cli(
        "query",
        "SELECT id % 3 AS r, count(*) AS n FROM source GROUP BY r ORDER BY r",
        "--source",
        str(parquet_dir),
    )
    assert code == 0
    lines = text.splitlines()
    assert "│" in lines[1]
    assert "r" in lines[1]
    assert "n" in lines[1]
    assert any("100" in line for line in lines)


def test_query_as_csv_writes_header_rows_and_json_for_lists(parquet_dir: Path) -> None:
    code, text = run_cli(
        "query",
        "SELECT id, label, [id, id] AS pair FROM source WHERE id < 3 ORDER BY id",
        "-s",
        str(parquet_dir),
        "--format",
        "csv",
    )
    assert code == 0
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["id", "label", "pair"],
        ["0", "even-0", "[0, 0]"],
        ["1", "odd-1", "[1, 1]"],
        ["2", "even-2", "[2, 2]"],
    ]


def test_query_as_json_lines(parquet_dir: Path) -> None:
    code, text = run_cli(
        "query",
        "SELECT id, vector FROM source WHERE id IN (5, 6) ORDER BY id",
        "-s",
        str(parquet_dir),
        "-f",
        "json",
    )
    assert code == 0
    assert [json.loads(line) for line in text.splitlines()] == [
        {"id": 5, "vector": [5.0, 6.0, 7.0]},
        {"id": 6, "vector": [6.0, 7.0, 8.0]},
    ]


def test_query_without_source_runs_plain_sql() -> None:
    code, text = run_cli("query", "SELECT 41 + 1 AS answer", "-f", "csv")
    assert (code, text) == (0, "answer\n42\n")


def test_query_over_s3_reads_keys_from_the_environment(
    s3_server: S3Service, s3_bucket: str, parquet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_dir(s3_server.boto3_client(), s3_bucket, "cli", parquet_dir)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    code, text = run_cli(
        "query",
        "SELECT count(*) AS n FROM source",
        "-s",
        f"s3://{s3_bucket}/cli",
        "--s3-endpoint",
        s3_server.endpoint_url,
        "-f",
        "csv",
    )
    assert (code, text) == (0, "n\n300\n")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["query", "SELECT nope FROM source"], 'column "nope" not found'),
        (["query", "SELECT 1", "-s", "/no/such/dir"], "no such file or directory: '/no/such/dir'"),
        (["query", "SELEC 1"], "syntax error"),
        (["query", "SELECT 1", "--s3-endpoint", "ftp://x"], "has scheme 'ftp'"),
    ],
)
def test_user_errors_print_one_line_and_exit_1(parquet_dir: Path, argv: list[str], expected: str) -> None:
    if argv[1] == "SELECT nope FROM source":
        argv = [*argv, "-s", str(parquet_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "duckstream.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("duckstream: error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duckstream.cli", "frobnicate"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.slow
def test_demo_runs_the_walkthrough_and_a_rerun_writes_nothing_new(tmp_path: Path) -> None:
    code, text = run_cli("demo", "--dir", str(tmp_path / "demo"), "--images", "60")
    assert code == 0
    numbers = [int(n) for n in re.findall(r"^\s*(\d+)\. ", text, flags=re.M)]
    assert numbers == list(range(1, 23))
    for title in (
        "Ingest",
        "OLAP: caption length histogram",
        "Stream 5 rows",
        "W&B (offline)",
        "Time travel",
    ):
        assert title in text
    assert "ran 22 sections" in text
    streamed = re.search(r"│ loader/rows\s+│ (\d+)\s+│", text)  # the loader's statistics, measured
    assert streamed is not None
    assert int(streamed.group(1)) == sum(s != "test" for s in caption_table(60).column("split").to_pylist())
    assert "checks: 5 passed, 1 failed" in text  # the quality profile's checks
    assert (tmp_path / "demo" / "quality" / "captions.html").is_file()
    assert (tmp_path / "demo" / "catalog.ducklake").is_file()
    assert sorted(p.name for p in (tmp_path / "demo" / "raw").glob("*.parquet"))[0] == "train-000000.parquet"
    code, again = run_cli("demo", "--dir", str(tmp_path / "demo"), "--images", "60")
    assert code == 0
    ingest = again.split(" 2. ")[0]
    assert re.search(r"│ train\s+│\s+0 │", ingest)  # files written by the rerun's sync: none


def test_demo_settings_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("demo", "--dir", str(tmp_path), "--images", "5")
    assert code == 1
    assert "at least 20 images" in capsys.readouterr().err
    code, _ = run_cli("demo", "--dir", str(tmp_path), "--catalog", "mysql://me:hunter2@db/x")
    assert code == 1
    err = capsys.readouterr().err
    assert "postgresql://" in err
    assert "hunter2" not in err
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("duckstream")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "query" in result.stdout
    assert "demo" in result.stdout
