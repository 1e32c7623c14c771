"""quality_agent without any LLM: TestModel and FunctionModel drive its tools, including a model
that tries every escape from the read-only SQL tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import models
from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from duckstream.quality import LakehouseDeps, QualityReport, quality_agent
from tests.quality.data import mixed_table, write_parts
from tests.quality.test_readonly import ESCAPES

models.ALLOW_MODEL_REQUESTS = False


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[LakehouseDeps]:
    write_parts(tmp_path / "mixed", mixed_table())
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    with LakehouseDeps(sources={"captions": tmp_path / "mixed"}, max_rows=20, timeout_s=1.0) as deps:
        yield deps


def scripted(calls: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    """A model that makes ``calls`` one per turn, then answers with a profile of the source."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if isinstance(m, ModelResponse))
        if turn < len(calls):
            name, args = calls[turn]
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call-{turn}")])
        report = last_profile(messages)
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, report)])

    return FunctionModel(respond)


def last_profile(messages: list[ModelMessage]) -> dict[str, Any]:
    for part in returns(messages)[::-1]:
        if part.tool_name == "profile_columns" and part.outcome == "success":
            returned = content(part)
            assert isinstance(returned, QualityReport)
            return returned.model_dump()
    return {
        "source": "captions",
        "total_rows": 0,
        "total_columns": 0,
        "null_counts": {},
        "distinct_counts": {},
    }


def content(part: ToolReturnPart) -> Any:
    """What the tool returned (typed loosely: each tool returns its own kind of value)."""
    return part.content


def returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]


def test_a_model_inspects_a_source_with_every_tool(deps: LakehouseDeps) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("list_sources", {}),
        ("describe_source", {"source": "captions"}),
        ("sample_rows", {"source": "captions", "n": 3}),
        ("run_sql", {"sql": "SELECT split, count(*) AS n FROM captions GROUP BY split ORDER BY split"}),
        (
            "profile_columns",
            {"source": "captions", "columns": ["imgid", "split"], "checks": ["not_null:imgid"]},
        ),
    ]
    result = quality_agent.run_sync("How clean is captions?", deps=deps, model=scripted(calls))
    parts = {p.tool_name: p for p in returns(result.all_messages())}
    assert all(parts[name].outcome == "success" for name, _ in calls)
    assert content(parts["list_sources"]) == {"captions": str(deps.sources["captions"])}
    described = content(parts["describe_source"])
    assert described["rows"] == 60
    assert described["columns"][0] == {"name": "imgid", "type": "BIGINT"}
    assert len(content(parts["sample_rows"]).rows) == 3
    table = mixed_table()
    splits = table.column("split").to_pylist()
    assert content(parts["run_sql"]).rows == [
        {"split": "train", "n": splits.count("train")},
        {"split": "val", "n": splits.count("val")},
        {"split": None, "n": splits.count(None)},
    ]
    report = result.output
    assert isinstance(report, QualityReport)
    assert report.total_rows == 60
    assert report.null_counts["imgid"] == table.column("imgid").null_count
    assert [c.check for c in report.failed_checks] == ["not_null:imgid"]


def test_a_model_that_tries_every_escape_reads_each_refusal(deps: LakehouseDeps, tmp_path: Path) -> None:
    sqls = [ESCAPES[name].format(tmp=tmp_path) for name in sorted(ESCAPES)]
    calls: list[tuple[str, dict[str, Any]]] = [("run_sql", {"sql": sql}) for sql in sqls]
    calls += [
        ("run_sql", {"sql": "SELECT count(*) FROM range(1000000000000) a"}),  # the time limit
        ("describe_source", {"source": "/etc/passwd"}),
        ("sample_rows", {"source": "secrets", "n": 5}),
        ("profile_columns", {"source": "captions", "checks": ["range:nope:1:2"]}),
        ("run_sql", {"sql": "SELECT count(*) AS n FROM captions"}),
    ]
    result = quality_agent.run_sync("Get out.", deps=deps, model=scripted(calls))
    parts = returns(result.all_messages())[: len(calls)]
    failed = parts[:-1]
    assert all(p.outcome == "failed" for p in failed), [p.content for p in failed if p.outcome != "failed"]
    for part in failed:
        text = part.model_response_str()
        assert text
        assert "Traceback" not in text
    refusals = [p.model_response_str() for p in failed[: len(sqls) + 1]]
    assert sum("refused:" in text for text in refusals) >= len(sqls)  # all but a parse error
    assert "longer than the limit" in refusals[-1]
    assert "no source named '/etc/passwd'" in failed[-3].model_response_str()
    assert "names column 'nope'" in failed[-1].model_response_str()
    assert parts[-1].outcome == "success"
    assert content(parts[-1]).rows == [{"n": 60}]
    assert isinstance(result.output, QualityReport)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "secret.csv"]


def test_test_model_calls_every_tool_and_returns_a_report(deps: LakehouseDeps) -> None:
    result = quality_agent.run_sync("Profile captions", deps=deps, model=TestModel())
    called = {p.tool_name for p in returns(result.all_messages())}
    assert {"list_sources", "describe_source", "profile_columns", "sample_rows", "run_sql"} <= called
    assert isinstance(result.output, QualityReport)


def test_the_agent_is_typed_for_its_deps_and_output() -> None:
    assert quality_agent.output_type is QualityReport
    assert quality_agent.deps_type is LakehouseDeps
