from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from duckstream.benchmarks.datasets import DatasetSpec, ensure_dataset, make_dataset, preset
from duckstream.benchmarks.epoch import LoaderName, to_python
from duckstream.benchmarks.loader import BenchConfig, Measurement, ratio_lines, ratios
from duckstream.benchmarks.memory import run_sampled

import duckstream
from duckstream.cli import _build_parser, main
from duckstream.errors import ConfigurationError

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
        "captions: duckstream-arrow (Arrow batches) / pyarrow: "
        "0.50 warm (0.50 cold) at 0 workers, 1.00 warm (2.00 cold) at 2 workers",
        "captions: duckstream (torch: tensors, Python lists) / pyarrow-python: "
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


def test_bench_quick_pyarrow_python_at_scale_1_prints_the_table(tmp_path: Path) -> None:
    result = run_bench_cli(
        "--quick", "--loader", "pyarrow-python", "--scale", "1", "--cache-dir", str(tmp_path)
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("preset")))
    rows = [line.split() for line in lines[header + 2 : header + 4]]
    assert [row[:5] for row in rows] == [
        ["captions", "1x", "4,000", "pyarrow-python", "-"],
        ["images", "1x", "1,000", "pyarrow-python", "-"],
    ]
    assert "peak memory as the data grows" not in result.stdout
    assert "ratios" not in result.stdout  # nothing to compare it with


def test_bench_quick_pyarrow_scans_print_the_table_and_write_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli(
        "--quick", "--loader", "pyarrow,pyarrow-python", "--cache-dir", str(tmp_path), "--json", str(report)
    )

    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("preset"))
    for column in ("cold rows/s", "warm rows/s", "1st batch ms", "peak MB"):
        assert column in header
    assert "peak memory as the data grows" in result.stdout
    measurements = json.loads(report.read_text())["measurements"]
    # pyarrow-python is measured at 1x only; the scaled runs are pyarrow's and duckstream's.
    assert [(m["preset"], m["scale"], m["rows"], m["loader"]) for m in measurements] == [
        ("captions", 1, 4_000, "pyarrow"),
        ("captions", 1, 4_000, "pyarrow-python"),
        ("captions", 4, 16_000, "pyarrow"),
        ("images", 1, 1_000, "pyarrow"),
        ("images", 1, 1_000, "pyarrow-python"),
        ("images", 4, 4_000, "pyarrow"),
    ]
    for m in measurements:
        assert m["workers"] is None
        assert m["error"] is None
        assert m["rows_read"] == m["rows"]
        assert m["peak_rss_bytes"] > 0


@pytest.mark.slow
def test_bench_quick_every_loader_reads_every_row_and_prints_the_ratios(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_bench_cli("--quick", "--cache-dir", str(tmp_path), "--json", str(report))

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
    assert "ratios of rows/s at 1x" in result.stdout
    for pair in (
        "duckstream-arrow (Arrow batches) / pyarrow:",
        "duckstream (torch: tensors, Python lists) / ",
    ):
        assert f"captions: {pair}" in result.stdout
        assert f"images: {pair}" in result.stdout


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
