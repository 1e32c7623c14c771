"""duckstream bench --peers (other loaders on the same data) and the accelerator-feed benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
from duckstream.benchmarks.gpu_feed import prepare
from duckstream.benchmarks.peer_epoch import PeerName
from duckstream.benchmarks.peers import PeerConfig, run_peers

from duckstream.cli import _build_parser, main
from duckstream.errors import ConfigurationError


def test_peers_option_takes_all_without_a_value_or_a_list_in_table_order() -> None:
    def parse(*argv: str) -> object:
        return _build_parser().parse_args(["bench", *argv]).peers

    assert parse() is None  # the read paths, as before
    assert parse("--peers") == get_args(PeerName)
    assert parse("--peers", "all") == get_args(PeerName)
    assert parse("--peers", "lance,duckstream") == ("duckstream", "lance")


def test_peers_option_refuses_an_unknown_loader(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--peers", "duckstream,webdataset"])
    assert "webdataset" in capsys.readouterr().err


def test_peer_config_rejects_an_unknown_loader_and_negative_workers() -> None:
    with pytest.raises(ConfigurationError, match="peers must be among"):
        PeerConfig(peers=("duckstream", "webdataset"))
    with pytest.raises(ConfigurationError, match="workers"):
        PeerConfig(workers=(0, -1))


def test_a_mosaic_interpreter_that_does_not_run_is_reported_not_installed(tmp_path: Path) -> None:
    config = PeerConfig(
        presets=("captions",),
        peers=("mosaic",),
        rows=100,
        cache_dir=tmp_path,
        mosaic_python=tmp_path / "no-such-python",
    )
    [measurement] = run_peers(config, echo=lambda text: None)
    assert not measurement.ok
    assert measurement.error is None
    assert measurement.not_installed is not None
    assert "no-such-python" in measurement.not_installed


@pytest.mark.slow
def test_bench_peers_measures_every_loader_exactly_once_or_says_why_not(tmp_path: Path) -> None:
    report = tmp_path / "peers.json"
    command = [sys.executable, "-m", "duckstream.cli", "bench", "--peers", "--quick", "--preset", "captions"]
    command += ["--rows", "2000", "--cache-dir", str(tmp_path), "--json", str(report), "--timeout", "60"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60, f"the quick peer comparison took {elapsed:.0f} s"
    measurements = json.loads(report.read_text())["measurements"]
    assert [m["peer"] for m in measurements] == list(get_args(PeerName))
    for m in measurements:
        if m["not_installed"] is not None:
            # Never dropped silently: the line says what is missing and how to install it.
            assert "pip install" in m["not_installed"] or "--mosaic-python" in m["not_installed"], m
            assert f"{m['peer']}" in result.stdout
            continue
        assert m["error"] is None, m
        assert m["exactly_once"] is True, m
        assert m["rows_read"] == 2000
        assert m["warm_rows_per_second"] > 0
        assert m["shuffle_worst"]["rows"] == 2000
    by_name = {m["peer"]: m for m in measurements}
    # What .[dev] installs is measured, not skipped.
    for name in ("duckstream", "datasets-stream", "datasets-stream-buffer", "datasets-map"):
        assert by_name[name]["not_installed"] is None, by_name[name]
    # The loaders that shuffle hand the loop rows far from storage order; the plain stream does not.
    assert by_name["duckstream"]["shuffle_worst"]["spearman"] < 0.5
    assert by_name["datasets-stream"]["shuffle_worst"]["spearman"] == pytest.approx(1.0)
    for name in ("datasets-map", "lance", "litdata", "mosaic"):
        if by_name[name]["not_installed"] is None:
            assert by_name[name]["convert_seconds"] is not None, name


def test_prepare_turns_python_lists_into_image_and_token_tensors() -> None:
    import torch

    batch = {"image": [bytes(range(256)) * 40, b"\xff" * 9000], "captions": [["a b c", "x"], ["d"]]}
    prepared = prepare(batch, image_size=8)
    assert prepared["image"].shape == (2, 3, 8, 8)
    assert prepared["image"].dtype == torch.uint8
    assert prepared["image"][1].eq(255).all()
    assert prepared["tokens"].shape == (2, 16)
    assert prepared["tokens"].ne(0).sum(dim=1).tolist() == [3, 1]  # the first caption's words


@pytest.mark.slow
def test_gpu_feed_runs_on_the_cpu_with_tiny_sizes(tmp_path: Path) -> None:
    report = tmp_path / "feed.json"
    command = [sys.executable, "-m", "duckstream.benchmarks.gpu_feed", "--device", "cpu", "--workers", "0,1"]
    command += ["--rows", "256", "--batch-size", "16", "--steps", "4", "--warmup", "1", "--image-size", "8"]
    command += ["--width", "4", "--shuffle-buffer", "32", "--cache-dir", str(tmp_path), "--json", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "data wait" in result.stdout
    results = json.loads(report.read_text())["results"]
    assert [(r["loader"], r["workers"]) for r in results] == [
        ("duckstream", 0),
        ("duckstream", 1),
        ("datasets-stream", 0),
        ("datasets-stream", 1),
    ]
    for r in results:
        assert r["error"] is None, r
        assert r["steps"] == 4
        assert r["steps_per_second"] > 0
        assert 0 <= r["wait_fraction"] <= 1
        assert 0 <= r["wait_median_ms"] <= r["wait_p99_ms"] <= r["wait_max_ms"]
        assert r["wait_max_ms"] <= 1000 * r["wait_seconds"] + 1e-6
        assert r["device"].startswith("cpu")
