"""The README's set-up commands are the ones CI runs, and the demo's entry point exists."""

from __future__ import annotations

import re
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
