"""Run ``python -m duckstream.services``: both local servers until Ctrl-C."""

from __future__ import annotations

import sys

from duckstream.services.command import main

if __name__ == "__main__":
    sys.exit(main())
