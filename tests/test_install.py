"""A user's own project has no constraints file: ``pip install 'duckstream[all]'`` must resolve
on its own, quickly. pip resolves (``--dry-run``, ignoring what this venv holds) as it would in a
fresh venv; a dependency set whose pins fight makes it backtrack for many minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESOLVE_SECONDS = 120


@pytest.mark.slow
def test_all_extras_resolve_without_a_constraints_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_REQUIREMENT")}
    report = tmp_path / "report.json"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                # The one pin users make themselves: the torch build of their machine.
                "torch==2.13.0",
                f"{ROOT}[all]",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=RESOLVE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip did not resolve duckstream[all] within {RESOLVE_SECONDS} s")
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"duckdb", "boto3", "datasets", "lightning", "wandb", "pydantic-ai-slim"} <= chosen
    print(f"resolved {len(chosen)} packages in {time.monotonic() - started:.0f} s")
