"""Run ``python -m duckstream.demo``: the walkthrough, with the options of ``duckstream demo``."""

from __future__ import annotations

import sys

from duckstream.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
