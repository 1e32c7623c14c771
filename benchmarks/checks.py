"""Checks and sizes the bench's configurations share (the loader bench and the peers bench)."""

from __future__ import annotations

from collections.abc import Iterable

from duckstream.errors import ConfigurationError

from .datasets import PresetName, preset

__all__ = ["check_at_least_one", "check_choices", "check_workers", "preset_rows"]


def check_choices(what: str, given: Iterable[str], known: Iterable[str]) -> None:
    """``given`` is not empty and holds only names among ``known``."""
    given, known = list(given), list(known)
    if not given or set(given) - set(known):
        raise ConfigurationError(f"{what} must be among {known}, found {given}")


def check_workers(workers: Iterable[int]) -> None:
    """At least one worker count, none negative."""
    counts = list(workers)
    if not counts or min(counts) < 0:
        raise ConfigurationError(f"workers must be counts of 0 or more, found {counts}")


def check_at_least_one(**values: int | None) -> None:
    """Every value given (None: not set) is at least 1; the message names it (``_`` as space)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigurationError(f"{name.replace('_', ' ')} must be at least 1, found {value}")


def preset_rows(name: PresetName, rows: int | None, *, quick: bool) -> int:
    """Rows of preset ``name``: ``rows`` when set, else the preset's (quick or full) count."""
    if rows is not None:
        return rows
    shape = preset(name)
    return shape.quick_rows if quick else shape.rows
