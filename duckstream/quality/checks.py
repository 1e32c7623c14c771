"""Declarative expectations, compiled to aggregates that run in the profiling pass.

On the command line a check is written ``KIND:ARGS``::

    not_null:COL            no null in COL
    unique:COL              no non-null value of COL repeats
    range:COL:MIN:MAX       MIN <= COL <= MAX (leave MIN or MAX empty for no bound)
    values:COL:A,B,C        COL is one of A, B, C (nulls allowed; add not_null to forbid them)
    length:COL:MIN:MAX      string, binary or list lengths within bounds
    rows:MIN:MAX            the source has between MIN and MAX rows
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from duckstream.engine import sql_literal
from duckstream.errors import ConfigurationError
from duckstream.quality.kinds import kind_of
from duckstream.quality.report import CheckResult, ColumnKind

__all__ = [
    "CHECK_HELP",
    "Check",
    "CheckKind",
    "check_sql",
    "parse_check",
    "parse_checks",
    "read_checks_file",
    "result_of",
    "typed_literal",
]

CheckKind = Literal["not_null", "unique", "range", "values", "length", "rows"]

CHECK_HELP = (
    "not_null:COL, unique:COL, range:COL:MIN:MAX, values:COL:A,B,C, length:COL:MIN:MAX, rows:MIN:MAX "
    "(empty MIN or MAX: no bound)"
)

_ORDERED_KINDS: frozenset[ColumnKind] = frozenset({"numeric", "temporal", "string", "boolean"})
_LENGTH_KINDS: frozenset[ColumnKind] = frozenset({"string", "binary", "list"})


class Check(BaseModel):
    """One expectation. ``low``/``high`` bound ``range``, ``length`` and ``rows``; ``values`` lists
    what ``values`` allows. Bounds are text or numbers; DuckDB casts them to the column's type."""

    model_config = ConfigDict(frozen=True)

    kind: CheckKind
    column: str | None = None
    low: float | int | str | None = None
    high: float | int | str | None = None
    values: tuple[str | int | float | bool, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> Check:
        if self.kind == "rows":
            if self.column is not None:
                raise ValueError("a rows check names no column")
        elif not self.column:
            raise ValueError(f"a {self.kind} check needs a column")
        if self.kind in ("length", "rows"):
            for bound in (self.low, self.high):
                if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
                    raise ValueError(f"{self.kind} bounds are whole numbers, found {bound!r}")
        if self.kind == "values" and not self.values:
            raise ValueError("a values check needs at least one allowed value")
        return self

    def label(self) -> str:
        """The check as written on the command line."""
        if self.kind == "rows":
            return f"rows:{_bound(self.low)}:{_bound(self.high)}"
        if self.kind in ("range", "length"):
            return f"{self.kind}:{self.column}:{_bound(self.low)}:{_bound(self.high)}"
        if self.kind == "values":
            return f"values:{self.column}:{','.join(str(v) for v in self.values)}"
        return f"{self.kind}:{self.column}"


def _bound(value: object) -> str:
    return "" if value is None else str(value)


def parse_check(text: str) -> Check:
    """A :class:`Check` from its command-line form; the error shows the forms there are."""
    kind, _, rest = text.partition(":")
    parts = rest.split(":")
    try:
        if kind in ("not_null", "unique") and len(parts) == 1 and parts[0]:
            return Check(kind="not_null" if kind == "not_null" else "unique", column=parts[0])
        if kind in ("range", "length") and len(parts) == 3 and parts[0]:
            low, high = _parse_bound(parts[1], kind), _parse_bound(parts[2], kind)
            bounded: CheckKind = "range" if kind == "range" else "length"
            return Check(kind=bounded, column=parts[0], low=low, high=high)
        if kind == "values" and len(parts) == 2 and parts[0] and parts[1]:
            return Check(kind="values", column=parts[0], values=tuple(parts[1].split(",")))
        if kind == "rows" and len(parts) == 2:
            return Check(kind="rows", low=_parse_bound(parts[0], kind), high=_parse_bound(parts[1], kind))
    except ValueError as exc:
        raise ConfigurationError(f"check {text!r}: {exc}") from None
    raise ConfigurationError(f"cannot read check {text!r}; expected one of: {CHECK_HELP}")


def _parse_bound(text: str, kind: str) -> float | int | str | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    if kind in ("length", "rows"):
        raise ValueError(f"expected a whole number or nothing as a bound, found {text!r}")
    try:
        return float(text)
    except ValueError:
        return text  # a date, a timestamp or a string: DuckDB casts it to the column's type


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return sql_literal(str(value))


def typed_literal(value: object, duckdb_type: str) -> str:
    """``value`` as a SQL constant of ``duckdb_type`` (the column's type it is compared with)."""
    return f"CAST({_literal(value)} AS {duckdb_type})"


def check_sql(check: Check, types: Mapping[str, str]) -> str:
    """The aggregate that counts the rows breaking ``check`` (for ``rows``: ``count(*)``).

    ``types`` maps each column of the source to its DuckDB type; an unknown column or a check
    that makes no sense for the column's type is a ConfigurationError.
    """
    if check.kind == "rows":
        return "count(*)"
    column = check.column or ""
    if column not in types:
        raise ConfigurationError(
            f"check {check.label()!r} names column {column!r}, which the source does not have; "
            f"columns: {', '.join(types)}"
        )
    kind, col = kind_of(types[column]), '"' + column.replace('"', '""') + '"'
    target = types[column]
    if check.kind == "not_null":
        return f"count(*) - count({col})"
    if check.kind == "unique":
        return f"count({col}) - count(DISTINCT {col})"
    if check.kind == "range":
        if kind not in _ORDERED_KINDS:
            raise _unsupported(check, kind)
        if check.low is None and check.high is None:
            raise ConfigurationError(f"check {check.label()!r} has neither a lower nor an upper bound")
        return f"count_if({_outside(col, check.low, check.high, target)})"
    if check.kind == "length":
        if kind not in _LENGTH_KINDS:
            raise _unsupported(check, kind)
        if check.low is None and check.high is None:
            raise ConfigurationError(f"check {check.label()!r} has neither a lower nor an upper bound")
        size = "len" if kind == "list" else ("octet_length" if kind == "binary" else "length")
        return f"count_if({_outside(f'{size}({col})', check.low, check.high, 'BIGINT')})"
    # values
    if kind not in _ORDERED_KINDS:
        raise _unsupported(check, kind)
    listed = ", ".join(typed_literal(v, target) for v in check.values)
    return f"count_if({col} IS NOT NULL AND {col} NOT IN ({listed}))"


def _outside(expression: str, low: object, high: object, duckdb_type: str) -> str:
    terms = []
    if low is not None:
        terms.append(f"{expression} < {typed_literal(low, duckdb_type)}")
    if high is not None:
        terms.append(f"{expression} > {typed_literal(high, duckdb_type)}")
    return " OR ".join(terms)


def _unsupported(check: Check, kind: ColumnKind) -> ConfigurationError:
    return ConfigurationError(
        f"check {check.label()!r} does not apply to column {check.column!r} of kind {kind}"
    )


def result_of(check: Check, count: int) -> CheckResult:
    """The pass/fail of ``check`` given what its aggregate counted."""
    if check.kind == "rows":
        low = int(check.low) if check.low is not None else None
        high = int(check.high) if check.high is not None else None
        below = max(0, low - count) if low is not None else 0
        above = max(0, count - high) if high is not None else 0
        offending = below + above
        detail = f"{count} rows; expected {_bound(low) or 'any'} to {_bound(high) or 'any'}"
        return CheckResult(
            check=check.label(), column=None, passed=offending == 0, offending=offending, detail=detail
        )
    return CheckResult(
        check=check.label(),
        column=check.column,
        passed=count == 0,
        offending=count,
    )


def parse_checks(texts: Sequence[str]) -> list[Check]:
    return [parse_check(t) for t in texts]


def read_checks_file(path: str | Path) -> list[Check]:
    """Checks from a JSON file: a list of command-line strings or of Check objects."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the checks file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"the checks file {path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise ConfigurationError(f"the checks file {path} must hold a JSON list, found {type(data).__name__}")
    checks = []
    for index, item in enumerate(data):
        if isinstance(item, str):
            checks.append(parse_check(item))
            continue
        try:
            checks.append(Check.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"check {index} in {path} is not valid: {problems}") from None
    return checks
