from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from duckstream.benchmarks.datasets import DatasetSpec, ensure_dataset, make_dataset, preset
from duckstream.benchmarks.memory import run_sampled

import duckstream
from duckstream.cli import main

REPO = Path(__file__).resolve().parent.parent


def read_dir(directory: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in sorted(directory.glob("*.parquet")))


def run_bench_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "duckstream.cli", "bench", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


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


def test_sampler_stops_a_command_that_runs_past_its_timeout() -> None:
    run = run_sampled([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)

    assert run.timed_out
    assert run.returncode != 0


def test_bench_rejects_worker_counts_below_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workers", "0,-1"]) == 1
    assert "workers must be counts of 0 or more" in capsys.readouterr().err


def test_bench_quick_pyarrow_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick", "--loader", "pyarrow", "--cache-dir", str(tmp_path), "--json", str(report)
    )

    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("preset"))
    for column in ("rows/s", "1st batch ms", "peak MB"):
        assert column in header
    assert "peak memory as the data grows" in result.stdout
    measurements = json.loads(report.read_text())["measurements"]
    assert [(m["preset"], m["scale"], m["rows"]) for m in measurements] == [
        ("captions", 1, 4_000),
        ("captions", 4, 16_000),
        ("images", 1, 1_000),
        ("images", 4, 4_000),
    ]
    for m in measurements:
        assert m["error"] is None
        assert m["rows_read"] == m["rows"]
        assert m["peak_rss_bytes"] > 0


@pytest.mark.slow
def test_bench_quick_duckstream_reads_every_row_at_each_worker_count(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick", "--loader", "duckstream", "--cache-dir", str(tmp_path), "--json", str(report)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    measurements = json.loads(report.read_text())["measurements"]
    assert sorted({(m["preset"], m["scale"], m["workers"]) for m in measurements}) == [
        ("captions", 1, 0),
        ("captions", 1, 2),
        ("captions", 4, 0),
        ("images", 1, 0),
        ("images", 1, 2),
        ("images", 4, 0),
    ]
    for m in measurements:
        assert m["rows_read"] == m["rows"], m


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
