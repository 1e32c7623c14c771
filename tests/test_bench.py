from __future__ import annotations

import http.client
import http.server
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from duckstream.benchmarks.datasets import DatasetSpec, ensure_dataset, make_dataset, preset
from duckstream.benchmarks.delay_proxy import DelayProxy
from duckstream.benchmarks.epoch import LoaderName, duckstream_epochs, ids_file, to_python
from duckstream.benchmarks.loader import BenchConfig, Measurement, epoch_command
from duckstream.benchmarks.memory import run_sampled
from duckstream.benchmarks.paths import PathName, expand, path_sql, read_path
from duckstream.benchmarks.readbytes import read_chars, tree_read_chars
from duckstream.benchmarks.report import format_table, ratio_lines, ratios, shuffle_lines
from duckstream.benchmarks.services import BenchServices, Unavailable
from duckstream.benchmarks.shuffle_quality import ShuffleQuality

import duckstream
from duckstream.cli import _build_parser, main
from duckstream.errors import ConfigurationError

REPO = Path(__file__).resolve().parent.parent


def read_dir(directory: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in sorted(directory.glob("*.parquet")))


def run_bench_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "duckstream.cli", "bench", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def table_rows(stdout: str) -> list[str]:
    """The table's lines, header and rule left out."""
    lines = stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("preset ")))
    body = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        body.append(line)
    return body


def test_generator_writes_the_schema_rows_files_and_row_groups_asked_for(tmp_path: Path) -> None:
    spec = DatasetSpec(rows=1_000, image_bytes=512, files=4, row_group_size=100)
    paths = make_dataset(spec, tmp_path)

    assert [path.name for path in paths] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.ParquetFile(path).metadata.num_row_groups for path in paths] == [3, 3, 3, 3]
    table = read_dir(tmp_path)
    assert table.schema == pa.schema(
        [("id", pa.int64()), ("captions", pa.list_(pa.string())), ("image", pa.binary())]
    )
    assert table["id"].to_pylist() == list(range(1_000))
    for captions in table["captions"].to_pylist()[:50]:
        assert len(captions) == 5
        assert all(8 <= len(caption.split()) <= 12 for caption in captions)
    sizes = [len(image) for image in table["image"].to_pylist()]
    assert min(sizes) >= 512 * 0.8
    assert max(sizes) <= 512 * 1.2


def test_generator_is_deterministic_and_the_seed_matters(tmp_path: Path) -> None:
    spec = DatasetSpec(rows=300, image_bytes=64, files=2, row_group_size=64)
    make_dataset(spec, tmp_path / "a")
    make_dataset(spec, tmp_path / "b")
    make_dataset(DatasetSpec(rows=300, image_bytes=64, files=2, row_group_size=64, seed=1), tmp_path / "c")

    assert read_dir(tmp_path / "a").equals(read_dir(tmp_path / "b"))
    assert read_dir(tmp_path / "a")["captions"] != read_dir(tmp_path / "c")["captions"]


def test_captions_preset_has_no_image_column_and_never_more_files_than_rows(tmp_path: Path) -> None:
    spec = preset("captions").spec(3)
    make_dataset(spec, tmp_path)

    assert spec.columns == ("id", "captions")
    assert len(list(tmp_path.glob("*.parquet"))) == 3
    assert read_dir(tmp_path).column_names == ["id", "captions"]


def test_ensure_dataset_generates_once_then_reuses_the_cache(tmp_path: Path) -> None:
    spec = DatasetSpec(rows=100, files=2)
    first = ensure_dataset(spec, tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in first.glob("*.parquet")}
    second = ensure_dataset(spec, tmp_path)

    assert second == first
    assert {path: path.stat().st_mtime_ns for path in second.glob("*.parquet")} == stamps
    assert [path.name for path in tmp_path.iterdir()] == [spec.name]  # no scratch left behind
    assert ensure_dataset(DatasetSpec(rows=101, files=2), tmp_path) != first


def test_sampler_counts_the_memory_of_a_grandchild() -> None:
    # The child allocates nothing itself; its own child touches 200 MB.
    grandchild = "import time; data = b'x' * (200 << 20); time.sleep(0.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    run = run_sampled([sys.executable, "-c", child])

    assert run.returncode == 0, run.stderr
    assert run.peak_rss_bytes >= 150 << 20


def test_an_unsampled_run_only_waits_for_the_command() -> None:
    run = run_sampled([sys.executable, "-c", "print('done')"], sample=False)

    assert (run.returncode, run.stdout.strip(), run.samples, run.peak_rss_bytes) == (0, "done", 0, 0)


def test_sampler_stops_a_command_that_runs_past_its_timeout() -> None:
    run = run_sampled([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)

    assert run.timed_out
    assert run.returncode != 0


def test_bench_rejects_worker_counts_below_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workers", "0,-1"]) == 1
    assert "workers must be counts of 0 or more" in capsys.readouterr().err


def test_bench_config_rejects_an_unknown_loader() -> None:
    with pytest.raises(ConfigurationError, match="loaders must be among"):
        BenchConfig(loaders=("pyarrow", "polars"))
    with pytest.raises(ConfigurationError, match="loaders must be among"):
        BenchConfig(loaders=())

    assert BenchConfig().loaders == get_args(LoaderName)


def test_bench_loader_option_takes_all_one_name_or_a_list_in_table_order() -> None:
    def loaders(*argv: str) -> object:
        return _build_parser().parse_args(["bench", *argv]).loader

    assert loaders() == get_args(LoaderName)  # the CLI's names are the harness's names
    assert loaders("--loader", "all") == get_args(LoaderName)
    assert loaders("--loader", "duckstream-arrow") == ("duckstream-arrow",)
    assert loaders("--loader", "duckstream-arrow, pyarrow,pyarrow") == ("pyarrow", "duckstream-arrow")


def test_bench_loader_option_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--loader", "pyarrow,polars"])

    assert exited.value.code == 2
    assert "expected all or loaders among pyarrow, pyarrow-python" in capsys.readouterr().err


def test_to_python_gives_arrays_for_numbers_and_fixed_size_lists_and_lists_otherwise() -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "id": pa.array([1, 2], pa.int64()),
            "embedding": pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float32(), 3)),
            "captions": pa.array([["a", "b"], ["c"]]),
            "image": pa.array([b"x", b"yz"]),
        }
    )
    columns = to_python(batch)

    assert columns["id"].tolist() == [1, 2]
    assert columns["embedding"].shape == (2, 3)
    assert columns["embedding"].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert columns["captions"] == [["a", "b"], ["c"]]
    assert columns["image"] == [b"x", b"yz"]


def measured(
    loader: LoaderName, workers: int | None, seconds: float, warm: float | None = None, **fields: object
) -> Measurement:
    defaults: dict[str, object] = {
        "preset": "captions",
        "scale": 1,
        "rows": 1_000,
        "rows_read": 1_000,
        "warm_rows_read": 1_000,
    }
    return Measurement(
        loader=loader,
        workers=workers,
        seconds=seconds,
        warm_seconds=seconds if warm is None else warm,
        **{**defaults, **fields},
    )


def test_ratios_pair_each_duckstream_loader_with_its_like_for_like_scan() -> None:
    measurements = [
        measured("pyarrow", None, 1.0, warm=0.5),
        measured("pyarrow-python", None, 4.0),
        measured("duckstream", 0, 8.0),
        measured("duckstream", 2, 2.0, warm=1.0),
        measured("duckstream-arrow", 0, 2.0, warm=1.0),
        measured("duckstream-arrow", 2, 0.5),
        measured("duckstream", 0, 1.0, scale=4),  # the scaled runs take no part
    ]

    assert [(r.loader, r.baseline, r.workers, r.value, r.cold) for r in ratios(measurements)] == [
        ("duckstream", "pyarrow-python", 0, 0.5, 0.5),
        ("duckstream", "pyarrow-python", 2, 4.0, 2.0),
        ("duckstream-arrow", "pyarrow", 0, 0.5, 0.5),
        ("duckstream-arrow", "pyarrow", 2, 1.0, 2.0),
    ]
    assert ratio_lines(measurements) == [
        "captions plain: duckstream-arrow / pyarrow: "
        "0.50 warm (0.50 cold) at 0 workers, 1.00 warm (2.00 cold) at 2 workers",
        "captions plain: duckstream / pyarrow-python: "
        "0.50 warm (0.50 cold) at 0 workers, 4.00 warm (2.00 cold) at 2 workers",
    ]


def test_ratios_leave_out_a_pair_whose_baseline_failed_or_is_missing() -> None:
    measurements = [
        measured("pyarrow", None, 1.0, error="boom"),
        measured("duckstream-arrow", 0, 2.0),
        measured("duckstream", 0, 2.0),
    ]

    assert ratios(measurements) == []
    assert ratio_lines(measurements) == []


def test_ratios_judge_each_path_by_its_floor_its_duckstream_baseline_and_its_bytes() -> None:
    measurements = [
        measured("pyarrow", None, 1.0),
        measured("pyarrow-python", None, 2.0),
        measured("duckstream-arrow", 0, 2.0, read_bytes=1_000, warm_read_bytes=800),
        measured("duckstream", 0, 4.0),
        # expr delivers other columns than the floor scans: no Python-objects pair.
        measured("duckstream-arrow", 0, 2.0, path="expr"),
        measured("duckstream", 0, 4.0, path="expr"),
        # A filter counts the rows of the source: 1,000 in 4 s whatever it delivers.
        measured(
            "duckstream-arrow",
            0,
            4.0,
            path="filter1pct",
            rows_read=10,
            warm_rows_read=10,
            read_bytes=100,
            warm_read_bytes=20,
        ),
        measured("duckstream-arrow", 0, 2.5, path="lake"),
        measured("duckstream-arrow", 0, 1.0, path="s3"),
        measured("pyarrow", None, 0.5, path="s3"),
        measured("duckstream-arrow", 0, 4.0, path="s3-delay"),
        measured("pyarrow", None, 2.0, path="s3-delay"),
        # The lake over the S3 objects is judged by the s3 path, not the local one.
        measured("duckstream-arrow", 0, 2.0, path="lake-s3"),
    ]

    assert [
        (r.path, r.loader, r.baseline_path, r.baseline, r.measure, r.value, r.target)
        for r in ratios(measurements)
    ] == [
        ("plain", "duckstream-arrow", "plain", "pyarrow", "rows/s", 0.5, None),
        ("plain", "duckstream", "plain", "pyarrow-python", "rows/s", 0.5, None),
        ("expr", "duckstream-arrow", "plain", "pyarrow", "rows/s", 0.5, None),
        ("filter1pct", "duckstream-arrow", "plain", "pyarrow", "rows/s", 0.25, None),
        ("filter1pct", "duckstream-arrow", "plain", "duckstream-arrow", "bytes read", 0.025, None),
        ("lake", "duckstream-arrow", "plain", "pyarrow", "rows/s", 0.4, None),
        ("lake", "duckstream-arrow", "plain", "duckstream-arrow", "rows/s", 0.8, 0.9),
        ("s3", "duckstream-arrow", "s3", "pyarrow", "rows/s", 0.5, None),
        ("s3-delay", "duckstream-arrow", "s3-delay", "pyarrow", "rows/s", 0.5, None),
        ("s3-delay", "duckstream-arrow", "s3", "duckstream-arrow", "rows/s", 0.25, 0.7),
        ("lake-s3", "duckstream-arrow", "s3", "pyarrow", "rows/s", 0.25, None),
        ("lake-s3", "duckstream-arrow", "s3", "duckstream-arrow", "rows/s", 0.5, 0.9),
    ]
    lines = ratio_lines(measurements)
    assert (
        "captions filter1pct: bytes read vs plain, duckstream-arrow: 0.03 warm (0.10 cold) at 0 workers"
        in lines
    )
    assert (
        "captions lake: duckstream-arrow / plain duckstream-arrow: 0.80 warm (0.80 cold) at 0 workers "
        "(target >= 0.90)"
    ) in lines
    assert (
        "captions s3-delay: duckstream-arrow / s3 duckstream-arrow: 0.25 warm (0.25 cold) at 0 workers "
        "(target >= 0.70)"
    ) in lines
    assert [line for line in lines if line.startswith("captions lake-s3")] == [
        "captions lake-s3: duckstream-arrow / s3 pyarrow: 0.25 warm (0.25 cold) at 0 workers",
        "captions lake-s3: duckstream-arrow / s3 duckstream-arrow: 0.50 warm (0.50 cold) at 0 workers "
        "(target >= 0.90)",
    ]


def test_table_says_why_a_configuration_has_no_figures() -> None:
    measurements = [
        measured("pyarrow", None, 0.5, path="s3"),
        measured("duckstream-arrow", 0, 1.0, path="filter", rows_read=500, warm_rows_read=500),
        Measurement(
            preset="captions",
            scale=1,
            rows=1_000,
            path="lake-pg",
            loader="duckstream",
            workers=0,
            skipped="PostgreSQL did not start: initdb not found",
        ),
        Measurement(
            preset="captions",
            scale=1,
            rows=1_000,
            path="expr",
            loader="duckstream",
            workers=2,
            error="x" * 300,
        ),
    ]
    lines = format_table(measurements).splitlines()

    assert lines[0].split()[:6] == ["preset", "scale", "rows", "path", "loader", "workers"]
    assert lines[2].split()[3] == "s3"
    assert lines[2].split()[10] == "-"  # bytes through sockets are not counted
    assert lines[3].split()[7] == "1,000"  # a filter counts the rows it scanned
    assert lines[4].split()[6:] == [
        "skipped:",
        "PostgreSQL",
        "did",
        "not",
        "start:",
        "initdb",
        "not",
        "found",
    ]
    assert lines[5].split()[6] == "failed:"
    assert lines[5].endswith("...")
    assert len(lines[5]) < 200


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        ("plain", "SELECT id, captions, image FROM source"),
        ("expr", "SELECT id, captions[1] AS caption, image FROM source"),
        ("filter", "SELECT id, captions, image FROM source WHERE id % 2 = 0"),
        ("filter1pct", "SELECT id, captions, image FROM source WHERE id < 500"),
        ("filter-skip", "SELECT id, captions, image FROM source WHERE id % 2 = 0"),
        ("lake", "SELECT id, captions, image FROM source"),
        ("lake-s3", "SELECT id, captions, image FROM source"),
        ("s3-delay", "SELECT id, captions, image FROM source"),
    ],
)
def test_each_path_runs_its_own_query(name: PathName, sql: str) -> None:
    assert path_sql(read_path(name), ("id", "captions", "image"), 50_000) == sql


def test_paths_bring_their_floors_and_their_baselines() -> None:
    def plan(*groups: str, catalogs: tuple[str, ...] = ("duckdb", "postgres")) -> list[tuple[str, bool]]:
        return [(p.name, asked) for p, asked in expand(groups, catalogs)]

    assert plan("expr") == [("plain", False), ("expr", True)]  # plain's scans only: expr's floor
    assert plan("filter") == [("plain", True), ("filter", True), ("filter1pct", True), ("filter-skip", True)]
    assert plan("lake", catalogs=("duckdb",)) == [("plain", True), ("lake", True)]
    # With PostgreSQL, lake also brings the table over the S3 objects, and s3: its floor and baseline.
    assert plan("lake", catalogs=("postgres",)) == [
        ("plain", True),
        ("lake-pg", True),
        ("s3", True),
        ("lake-s3", True),
    ]
    assert plan("lake") == [
        ("plain", True),
        ("lake", True),
        ("lake-pg", True),
        ("s3", True),
        ("lake-s3", True),
    ]
    assert plan("s3-delay") == [("s3", True), ("s3-delay", True)]


def test_bench_path_and_lake_catalog_options_take_all_or_lists() -> None:
    def parsed(*argv: str) -> tuple[object, object]:
        args = _build_parser().parse_args(["bench", *argv])
        return args.path, args.lake_catalog

    everything = ("plain", "expr", "filter", "lake", "s3", "s3-delay")
    assert parsed() == (everything, ("duckdb", "postgres"))
    assert parsed("--path", "s3-delay,plain", "--lake-catalog", "duckdb") == (
        ("plain", "s3-delay"),
        ("duckdb",),
    )
    assert BenchConfig().paths == everything  # the CLI's names are the harness's names
    with pytest.raises(ConfigurationError, match="paths must be among"):
        BenchConfig(paths=("plain", "hdfs"))


def test_bench_path_option_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--path", "plain,hdfs"])

    assert "expected all or read paths among plain, expr" in capsys.readouterr().err


def test_read_chars_counts_what_a_process_and_its_children_read(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(3 << 20))
    before = read_chars(os.getpid())
    assert data.read_bytes()
    assert read_chars(os.getpid()) - before >= 3 << 20

    reader = f"import sys, time; open({str(data)!r}, 'rb').read(); print('read', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "read\n"
        assert tree_read_chars(os.getpid()) - read_chars(os.getpid()) >= 3 << 20
    finally:
        child.kill()
        child.wait()


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients talk

    def do_GET(self) -> None:
        body = self.path.encode() * 10_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_delay_proxy_holds_back_each_request_on_a_kept_alive_connection() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with DelayProxy(f"127.0.0.1:{server.server_address[1]}", delay=0.1) as proxy:
            host, port = proxy.endpoint.split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            started = time.perf_counter()
            bodies = []
            for path in ("/a", "/bb", "/ccc"):
                connection.request("GET", path)
                bodies.append(connection.getresponse().read())
            elapsed = time.perf_counter() - started
            connection.close()

            assert bodies == [b"/a" * 10_000, b"/bb" * 10_000, b"/ccc" * 10_000]  # intact
            assert 0.3 <= elapsed < 1.5  # three requests, each 0.1 s late, one after another
            assert proxy.requests == 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_cannot_start_makes_its_paths_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUCKSTREAM_PG_BIN", "/nonexistent/bin")
    with BenchServices(s3_delay=0.0, echo=lambda _: None) as services:
        with pytest.raises(Unavailable, match="PostgreSQL did not start") as first:
            services.postgres()
        with pytest.raises(Unavailable) as second:  # not tried again
            services.postgres()
    assert str(second.value) == str(first.value)


def test_bench_quick_pyarrow_python_at_scale_1_prints_the_table(tmp_path: Path) -> None:
    result = run_bench_cli(
        "--quick",
        "--path",
        "plain",
        "--loader",
        "pyarrow-python",
        "--scale",
        "1",
        "--cache-dir",
        str(tmp_path),
    )

    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in table_rows(result.stdout)]
    assert [row[:6] for row in rows] == [
        ["captions", "1x", "4,000", "plain", "pyarrow-python", "-"],
        ["images", "1x", "1,000", "plain", "pyarrow-python", "-"],
    ]
    assert "peak memory as the data grows" not in result.stdout
    assert "ratios" not in result.stdout  # nothing to compare it with


def test_bench_quick_pyarrow_scans_print_the_table_and_write_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick",
        "--path",
        "plain",
        "--loader",
        "pyarrow,pyarrow-python",
        "--cache-dir",
        str(tmp_path),
        "--json",
        str(report),
    )

    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("preset"))
    for column in ("path", "cold rows/s", "warm rows/s", "1st batch ms", "read MB", "peak MB"):
        assert column in header
    assert "peak memory as the data grows" in result.stdout
    measurements = json.loads(report.read_text())["measurements"]
    # pyarrow-python is measured at 1x only; the scaled runs are pyarrow's and duckstream's.
    assert [(m["preset"], m["scale"], m["rows"], m["path"], m["loader"]) for m in measurements] == [
        ("captions", 1, 4_000, "plain", "pyarrow"),
        ("captions", 1, 4_000, "plain", "pyarrow-python"),
        ("captions", 4, 16_000, "plain", "pyarrow"),
        ("images", 1, 1_000, "plain", "pyarrow"),
        ("images", 1, 1_000, "plain", "pyarrow-python"),
        ("images", 4, 4_000, "plain", "pyarrow"),
    ]
    for m in measurements:
        assert m["workers"] is None
        assert m["error"] is None
        assert m["rows_read"] == m["rows"]
        assert m["peak_rss_bytes"] > 0
        assert m["warm_read_bytes"] > 0  # the Parquet files, read through the page cache


@pytest.mark.slow
def test_bench_quick_every_loader_reads_every_row_and_prints_the_ratios(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli("--quick", "--path", "plain", "--cache-dir", str(tmp_path), "--json", str(report))

    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    measurements = document["measurements"]
    for name in ("captions", "images"):
        assert [(m["scale"], m["loader"], m["workers"]) for m in measurements if m["preset"] == name] == [
            (1, "pyarrow", None),
            (1, "pyarrow-python", None),
            (1, "duckstream", 0),
            (1, "duckstream", 2),
            (1, "duckstream-arrow", 0),
            (1, "duckstream-arrow", 2),
            (4, "pyarrow", None),
            (4, "duckstream", 0),
        ]
    for m in measurements:
        assert m["rows_read"] == m["rows"], m
        assert m["warm_rows_read"] == m["rows"], m
    assert len(document["ratios"]) == 8  # 2 presets x 2 pairs x 2 worker counts
    assert "ratios at 1x" in result.stdout
    for pair in ("duckstream-arrow / pyarrow:", "duckstream / pyarrow-python:"):
        assert f"captions plain: {pair}" in result.stdout
        assert f"images plain: {pair}" in result.stdout


@pytest.mark.slow
def test_bench_quick_every_path_gives_figures_or_a_stated_skip(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick",
        "--path",
        "all",
        "--preset",
        "captions",
        "--loader",
        "pyarrow,duckstream-arrow",
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path),
        "--json",
        str(report),
    )

    rows = [line.split() for line in table_rows(result.stdout)]
    named = {row[3] for row in rows}
    assert named == set(get_args(PathName)), result.stdout
    for row in rows:
        # A figure (cold s) or a stated skip; a failure is a finding, and fails here.
        assert row[6] == "skipped:" or float(row[6]) > 0, f"{' '.join(row)}\n{result.stdout}"
    assert result.returncode == 0, result.stdout + result.stderr
    measurements = json.loads(report.read_text())["measurements"]
    delivered = {m["path"]: m["rows_read"] for m in measurements if m["loader"] == "duckstream-arrow"}
    assert delivered["plain"] == delivered["expr"] == 4_000
    assert delivered["filter"] == delivered["filter-skip"] == 2_000
    assert delivered["filter1pct"] == 40
    for name in ("lake", "lake-pg", "s3", "lake-s3", "s3-delay"):
        assert delivered[name] in (4_000, None), name  # None: skipped, as the table says
    assert "captions filter1pct: bytes read vs plain, duckstream-arrow:" in result.stdout
    assert "captions lake: duckstream-arrow / plain duckstream-arrow:" in result.stdout
    if delivered["lake-s3"] is not None:
        assert "captions lake-s3: duckstream-arrow / s3 duckstream-arrow:" in result.stdout


@pytest.mark.slow
def test_bench_says_the_postgres_lakes_are_skipped_where_postgres_cannot_start(tmp_path: Path) -> None:
    result = run_bench_cli(
        "--quick",
        "--path",
        "lake",
        "--lake-catalog",
        "postgres",
        "--preset",
        "captions",
        "--loader",
        "duckstream-arrow",
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path),
        env={**os.environ, "DUCKSTREAM_PG_BIN": "/nonexistent/bin"},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row.split()[3]: row for row in table_rows(result.stdout)}
    assert sorted(rows) == ["lake-pg", "lake-s3", "plain", "s3"]  # s3: lake-s3's floor and baseline
    for name in ("lake-pg", "lake-s3"):
        assert "skipped: PostgreSQL did not start" in rows[name]
        assert (
            f"skipped: captions 1x {name} duckstream-arrow workers=0: PostgreSQL did not start"
            in result.stdout
        )


def test_pyproject_packages_every_subpackage_and_the_mapped_benchmarks() -> None:
    # The explicit list (needed for the benchmarks/ mapping) must grow with the package.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = Path(duckstream.__file__).parent
    subpackages = {
        ".".join(("duckstream", *init.parent.relative_to(package_dir).parts))
        for init in package_dir.rglob("__init__.py")
    }

    assert setuptools["package-dir"] == {"duckstream.benchmarks": "benchmarks"}
    assert set(setuptools["packages"]) == subpackages | {"duckstream.benchmarks"}


def test_every_benchmark_module_has_a_docstring_and_a_sorted_all() -> None:
    import duckstream.benchmarks

    names = ["duckstream.benchmarks"] + [
        info.name for info in pkgutil.walk_packages(duckstream.benchmarks.__path__, "duckstream.benchmarks.")
    ]
    assert len(names) >= 5
    for name in names:
        module = importlib.import_module(name)
        assert module.__doc__, f"{name} has no module docstring"
        exported = getattr(module, "__all__", [])
        assert list(exported) == sorted(exported), name
        assert all(hasattr(module, attribute) for attribute in exported), name


@pytest.mark.slow
def test_hf_comparison_runs_and_prints_ratios(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duckstream.benchmarks.hf", "--quick", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "ratio as_iterable_dataset / datasets streaming, shuffle=True" in result.stdout


@pytest.mark.slow
def test_cpu_breakdown_prints_the_main_process_and_each_worker(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "duckstream.benchmarks.cpu", "--rows", "3000", "--epochs", "1"]
    result = subprocess.run(
        [*command, "--workers", "0,2", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "2"]
    assert rows[0][3] == "-"
    assert len(rows[1][3].split("/")) == 2  # one figure per worker
    # CPU time comes in 10 ms ticks, which a small epoch may not reach: check the sums instead.
    for row in rows:
        assert float(row[1]) > 0
        workers = [float(x) for x in row[3].split("/")] if row[3] != "-" else []
        assert float(row[4]) == pytest.approx(float(row[2]) + sum(workers), abs=0.02)


def test_table_shows_each_shuffle_figure_at_its_least_shuffled_epoch() -> None:
    epochs = (
        ShuffleQuality(rows=1_000, spearman=0.01, neighbours_kept=0.25, displacement=0.97),
        ShuffleQuality(rows=1_000, spearman=0.2, neighbours_kept=0.002, displacement=0.5),
    )
    measurements = [measured("pyarrow", None, 1.0), measured("duckstream", 2, 1.0, shuffle=epochs)]
    lines = format_table(measurements).splitlines()

    assert lines[0].split()[-3:] == ["|rho|", "nbrs", "disp"]
    assert lines[2].split()[-3:] == ["-", "-", "-"]  # a scan in storage order: nothing to judge
    assert lines[3].split()[-3:] == ["0.200", "0.250", "0.500"]
    assert shuffle_lines(measurements) == ["1,000 rows: |rho| 0.025, nbrs 0.002, disp 1.000"]
    assert shuffle_lines(measurements[:1]) == []


@pytest.mark.parametrize(("output", "workers"), [("arrow", 0), ("torch", 2)])
def test_epochs_write_the_ids_in_the_order_the_loop_receives_them(
    tmp_path: Path, output: Literal["arrow", "torch"], workers: int
) -> None:
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    make_dataset(DatasetSpec(rows=3_000, files=4, row_group_size=500), tmp_path / "data")
    sql = "SELECT id, captions FROM source"
    source = str(tmp_path / "data")
    ids_dir = tmp_path / "ids"
    ids_dir.mkdir()
    results = duckstream_epochs(
        source, sql, batch_size=256, workers=workers, seed=3, repeat=2, output=output, ids_dir=ids_dir
    )
    dataset = DuckStreamDataset(source, sql=sql, batch_size=256, shuffle=True, seed=3, output="arrow")
    loader = DuckStreamLoader(dataset, num_workers=workers)
    received = [np.concatenate([batch.column("id").to_numpy() for batch in loader]) for _ in range(2)]

    assert [result.rows for result in results] == [3_000, 3_000]
    for epoch in range(2):
        written = np.fromfile(ids_file(ids_dir, epoch), dtype=np.int64)
        assert written.tolist() == received[epoch].tolist()
        assert sorted(written.tolist()) == list(range(3_000))
    assert sorted(path.name for path in ids_dir.iterdir()) == ["epoch-0.int64", "epoch-1.int64"]


def test_epochs_read_through_the_shuffle_buffer_asked_for(tmp_path: Path) -> None:
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    make_dataset(DatasetSpec(rows=3_000, files=4, row_group_size=500), tmp_path / "data")
    sql = "SELECT id, captions FROM source"
    source = str(tmp_path / "data")

    def received(buffer: int | None = None) -> list[int]:
        dataset = DuckStreamDataset(
            source, sql=sql, batch_size=256, shuffle=True, seed=3, output="arrow", shuffle_buffer=buffer
        )
        batches = [batch.column("id").to_numpy() for batch in DuckStreamLoader(dataset)]
        return [int(i) for i in np.concatenate(batches)]

    orders = {}
    for buffer in (None, 300):
        ids_dir = tmp_path / f"ids-{buffer}"
        ids_dir.mkdir()
        duckstream_epochs(
            source,
            sql,
            batch_size=256,
            workers=0,
            seed=3,
            output="arrow",
            ids_dir=ids_dir,
            shuffle_buffer=buffer,
        )
        orders[buffer] = np.fromfile(ids_file(ids_dir, 0), dtype=np.int64).tolist()

    assert orders[None] == received()
    assert orders[300] == received(300)
    assert orders[300] != orders[None]


def test_bench_shuffle_buffer_must_be_a_row_count_and_is_not_for_the_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigurationError, match="shuffle buffer must be at least 1, found 0"):
        BenchConfig(shuffle_buffer=0)
    assert main(["bench", "--peers", "duckstream", "--shuffle-buffer", "1000"]) == 1
    assert "--shuffle-buffer sets duckstream's buffer on the read paths" in capsys.readouterr().err


def test_only_duckstream_epochs_are_given_the_shuffle_buffer() -> None:
    spec = preset("captions").spec(1_000, seed=0)

    def command(config: BenchConfig, loader: LoaderName, workers: int | None) -> list[str]:
        base = Measurement(preset="captions", scale=1, rows=1_000, loader=loader, workers=workers)
        return list(epoch_command(config, base, read_path("filter"), spec, ["--source=/data"]))

    asked = BenchConfig(shuffle_buffer=1_000)
    for loader, workers in (("duckstream", 2), ("duckstream-arrow", 0)):
        assert "--shuffle-buffer=1000" in command(asked, loader, workers)
        assert not any(arg.startswith("--shuffle-buffer") for arg in command(BenchConfig(), loader, workers))
    # A pyarrow scan does not shuffle: it takes no buffer (and no SQL).
    assert not any(arg.startswith(("--shuffle-buffer", "--sql")) for arg in command(asked, "pyarrow", None))


def test_bench_runs_duckstream_with_the_shuffle_buffer_and_records_it(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick",
        "--preset",
        "captions",
        "--path",
        "plain",
        "--loader",
        "duckstream-arrow",
        "--scale",
        "1",
        "--shuffle-buffer",
        "1000",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(report),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].endswith("batch size 256, shuffle buffer 1,000 rows")
    document = json.loads(report.read_text())
    assert document["config"]["shuffle_buffer"] == 1_000
    assert [m["rows_read"] for m in document["measurements"]] == [4_000, 4_000]


def test_bench_reports_the_shuffle_of_each_epoch_and_draws_the_first(tmp_path: Path) -> None:
    import matplotlib.image

    report = tmp_path / "bench.json"
    plots = tmp_path / "plots"
    result = run_bench_cli(
        "--quick",
        "--repeat",
        "2",
        "--preset",
        "captions",
        "--rows",
        "2000",
        "--path",
        "plain",
        "--loader",
        "pyarrow,duckstream-arrow",
        "--workers",
        "0,2",
        "--scale",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(report),
        "--plot",
        str(plots),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rows = {(row.split()[4], row.split()[5]): row.split() for row in table_rows(result.stdout)}
    assert rows["pyarrow", "-"][-3:] == ["-", "-", "-"]
    measurements = {(m["loader"], m["workers"]): m for m in json.loads(report.read_text())["measurements"]}
    assert measurements["pyarrow", None]["shuffle"] == []
    assert measurements["pyarrow", None]["shuffle_worst"] is None
    for workers in (0, 2):
        m = measurements["duckstream-arrow", workers]
        assert [epoch["rows"] for epoch in m["shuffle"]] == [2_000, 2_000]
        worst = m["shuffle_worst"]
        assert worst["spearman"] == max(epoch["spearman"] for epoch in m["shuffle"])
        assert worst["neighbours_kept"] == max(epoch["neighbours_kept"] for epoch in m["shuffle"])
        assert worst["displacement"] == min(epoch["displacement"] for epoch in m["shuffle"])
        assert 0 <= worst["spearman"] <= 1
        assert 0 <= worst["neighbours_kept"] <= 1
        assert rows["duckstream-arrow", str(workers)][-3:] == [
            f"{worst['spearman']:.3f}",
            f"{worst['neighbours_kept']:.3f}",
            f"{worst['displacement']:.3f}",
        ]
    assert "  2,000 rows: |rho| 0.018, nbrs 0.001, disp 1.000" in result.stdout.splitlines()

    # The scan is in storage order: only the shuffled configurations are drawn.
    drawn = sorted(plots.iterdir())
    assert [path.name for path in drawn] == [
        "captions-1x-plain-duckstream-arrow-0w.png",
        "captions-1x-plain-duckstream-arrow-2w.png",
    ]
    for path in drawn:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (600, 600)
        assert image[..., :3].min() < 0.5  # something drawn on the white


def test_bench_plot_without_matplotlib_names_the_extra_before_measuring(tmp_path: Path) -> None:
    # An import of a module mapped to None fails as a missing one does.
    script = (
        "import sys; sys.modules['matplotlib'] = None; from duckstream.cli import main; "
        f"sys.exit(main(['bench', '--quick', '--cache-dir', {str(tmp_path / 'cache')!r}, "
        f"'--plot', {str(tmp_path / 'plots')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip install 'duckstream[quality]'" in result.stderr
    assert not (tmp_path / "cache").exists()  # nothing generated, nothing measured
    assert not (tmp_path / "plots").exists()
