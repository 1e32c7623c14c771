"""Packages the ``dev`` extra installs, imported by the tests that need them.

A missing one is a broken development install: the tests that need it fail, naming the
install command, rather than turning into skips. Only what a machine cannot have (an
accelerator, root) is skipped.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

__all__ = ["require"]

INSTALL = "pip install -c constraints.txt -e '.[dev]'"


def require(module: str) -> ModuleType:
    """``module``, imported; a failure (not a skip) naming the dev install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"{module} cannot be imported ({exc}): the tests need the development install, {INSTALL}",
            pytrace=False,
        )
