"""quality_agent: a Pydantic-AI agent that inspects lakehouse sources with tools that can only read.

Run it with a model of your choice and :class:`LakehouseDeps` naming the sources::

    with LakehouseDeps(sources={"captions": "s3://bucket/captions/"}) as deps:
        report = quality_agent.run_sync("Check the captions table", deps=deps, model="...").output

Every tool goes through the deps' read-only session or :func:`profile`; a refusal (a write, a
setting, a file outside the sources, a time limit) reaches the model as a tool failure it can
read and act on, never as an exception that ends the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from duckstream._optional import require
from duckstream.errors import DuckstreamError
from duckstream.quality.deps import LakehouseDeps
from duckstream.quality.profiling import profile
from duckstream.quality.readonly import ReadOnlySession, SQLAnswer
from duckstream.quality.report import QualityReport
from duckstream.quality.sources import quote_identifier

require("pydantic_ai")

from pydantic_ai import Agent, RunContext  # noqa: E402
from pydantic_ai import exceptions as _exceptions  # noqa: E402

__all__ = ["INSTRUCTIONS", "quality_agent"]

T = TypeVar("T")

# A failure the model sees and adapts to without spending its retry budget (newer pydantic-ai);
# older versions have only ModelRetry.
_ToolFailure: type[Exception] = getattr(_exceptions, "ToolFailed", _exceptions.ModelRetry)

INSTRUCTIONS = """\
You check the quality of tabular data in a lakehouse. The sources you may read are listed by
`list_sources`; refer to a source by its name. Start with `describe_source`, then
`profile_columns` (one pass computing nulls, distinct counts, min/max, lengths and checks such as
'not_null:col', 'unique:col', 'range:col:0:100', 'values:col:a,b', 'length:col:1:', 'rows:1:'),
`sample_rows` for examples, and `run_sql` for anything else. `run_sql` accepts one read-only
SELECT over the source names; results are cut at a row limit and queries at a time limit, so
aggregate rather than fetch rows. Answer with a QualityReport of the source you were asked about,
built from what the tools returned."""

quality_agent: Agent[LakehouseDeps, QualityReport] = Agent(
    None,
    output_type=QualityReport,
    deps_type=LakehouseDeps,
    instructions=INSTRUCTIONS,
    name="quality_agent",
    defer_model_check=True,
)


@quality_agent.tool
def list_sources(ctx: RunContext[LakehouseDeps]) -> dict[str, str]:
    """The sources you may read: name -> what it is (files, s3:// prefix or lake table)."""
    return ctx.deps.describe()


@quality_agent.tool
def describe_source(ctx: RunContext[LakehouseDeps], source: str) -> dict[str, Any]:
    """Columns (name and type) and row count of one source."""
    session = _session(ctx.deps, source)
    view = quote_identifier(source)
    columns = _guarded(lambda: session.run(f"DESCRIBE SELECT * FROM {view}"))
    rows = _guarded(lambda: session.run(f"SELECT count(*) AS n FROM {view}"))
    return {
        "source": source,
        "rows": rows.rows[0]["n"],
        "columns": [{"name": r["column_name"], "type": r["column_type"]} for r in columns.rows],
        "columns_truncated": columns.truncated,
    }


@quality_agent.tool
def profile_columns(
    ctx: RunContext[LakehouseDeps],
    source: str,
    columns: list[str] | None = None,
    checks: list[str] | None = None,
    key: list[str] | None = None,
) -> QualityReport:
    """Profile columns of a source in one pass (all columns when none are named), evaluating
    checks such as 'not_null:col' or 'range:col:0:100', and counting repeated keys."""
    deps = ctx.deps
    target = _guarded(lambda: deps.source(source))
    s3 = deps.s3
    return _guarded(
        lambda: profile(
            target,
            s3_endpoint=s3.endpoint_url,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            s3_region=s3.region,
            columns=columns,
            checks=checks or (),
            key=key,
            sample=3,
            exact_threshold=deps.exact_threshold,
            timeout_s=deps.timeout_s,
        )
    )


@quality_agent.tool
def sample_rows(ctx: RunContext[LakehouseDeps], source: str, n: int = 5) -> SQLAnswer:
    """The first ``n`` rows of a source (at most the session's row limit)."""
    session = _session(ctx.deps, source)
    count = max(1, min(int(n), session.max_rows))
    return _guarded(lambda: session.run(f"SELECT * FROM {quote_identifier(source)} LIMIT {count}"))


@quality_agent.tool
def run_sql(ctx: RunContext[LakehouseDeps], sql: str) -> SQLAnswer:
    """Run one read-only SELECT over the sources (by name); rows beyond the limit are cut."""
    session = _guarded(ctx.deps.session)
    return _guarded(lambda: session.run(sql))


def _session(deps: LakehouseDeps, source: str) -> ReadOnlySession:
    _guarded(lambda: deps.source(source))
    return _guarded(deps.session)


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; a duckstream error becomes a tool failure whose message the model reads."""
    try:
        return action()
    except DuckstreamError as exc:
        raise _ToolFailure(str(exc)) from None
