"""The quality report: plain pydantic models a person, a program or an agent can read."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CheckResult",
    "ColumnKind",
    "ColumnProfile",
    "Histogram",
    "LengthStats",
    "QualityReport",
    "ValueCount",
]

# How a column is profiled: what its aggregates mean.
ColumnKind = Literal["numeric", "boolean", "string", "binary", "list", "temporal", "other"]

# A JSON-friendly scalar: what min/max/top values hold.
Scalar = float | int | str | bool | None


class LengthStats(BaseModel):
    """Lengths of the non-null values of a string, binary or list column."""

    model_config = ConfigDict(frozen=True)

    min: int | None
    max: int | None
    mean: float | None


class ValueCount(BaseModel):
    """One frequent value; ``count`` is None when only an approximate ranking is known."""

    model_config = ConfigDict(frozen=True)

    value: Scalar
    count: int | None = None


class Histogram(BaseModel):
    """Rows per bin: ``counts[i]`` rows have ``edges[i] < x <= edges[i + 1]`` (the first bin also
    holds ``x == edges[0]``), so ``len(edges) == len(counts) + 1``.

    Exact (``exact``) up to the profile's exact threshold: one bin per distinct value when there
    are few (``values`` then names each bin's value), else equal-width bins. Above it the counts
    are estimated from a quantile sketch of the profiling pass, hence fractional.
    """

    model_config = ConfigDict(frozen=True)

    of: Literal["values", "lengths"]
    edges: list[float]
    counts: list[float]
    values: list[float] | None = Field(default=None, description="the one value each bin holds, if so")
    exact: bool = False


class ColumnProfile(BaseModel):
    """What the profiling pass learned about one column."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str = Field(description="the DuckDB type of the column")
    kind: ColumnKind
    non_null: int
    nulls: int
    distinct: int | None = Field(description="distinct non-null values (None: type not comparable)")
    distinct_approximate: bool = False
    min: Scalar = None
    max: Scalar = None
    non_finite: int | None = Field(default=None, description="NaN and infinite values (numbers only)")
    mean: float | None = Field(
        default=None, description="for numbers (finite values) and booleans (share of true)"
    )
    std: float | None = None
    length: LengthStats | None = Field(default=None, description="for strings, binary and lists")
    top_values: list[ValueCount] = Field(default_factory=list)
    top_values_approximate: bool = False
    histogram: Histogram | None = None


class CheckResult(BaseModel):
    """One expectation evaluated in the profiling pass."""

    model_config = ConfigDict(frozen=True)

    check: str = Field(description="the expectation, as written on the command line")
    column: str | None
    passed: bool
    offending: int = Field(description="rows that break it (for row_count: rows outside the bounds)")
    detail: str = ""


class QualityReport(BaseModel):
    """A profile of one source: counts, per-column statistics, a sample and checked expectations."""

    source: str
    total_rows: int
    total_columns: int
    null_counts: dict[str, int]
    distinct_counts: dict[str, int | None]
    sample_rows: list[dict[str, Any]] = Field(default_factory=list)
    columns: list[ColumnProfile] = Field(default_factory=list)
    key: list[str] | None = None
    duplicate_count: int | None = Field(
        default=None, description="rows whose key repeats an earlier row's key (null keys compare equal)"
    )
    checks: list[CheckResult] = Field(default_factory=list)
    approximate: list[str] = Field(default_factory=list, description="which figures are estimates, and why")
    notes: list[str] = Field(default_factory=list)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        """True when every check passed (and when there are none)."""
        return not self.failed_checks

    def column(self, name: str) -> ColumnProfile:
        """The profile of column ``name``; KeyError names the columns there are."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"no column {name!r} in the report; columns: {[c.name for c in self.columns]}")
