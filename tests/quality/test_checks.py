"""Checks: parsing, pass/fail with the offending count from the profiling pass, and bad checks."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from duckstream.errors import ConfigurationError
from duckstream.quality import Check, profile
from duckstream.quality.checks import parse_check, read_checks_file
from tests.quality.data import mixed_table, write_parts


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, pa.Table]:
    table = mixed_table()
    return write_parts(tmp_path / "mixed", table), table


def test_each_kind_counts_what_breaks_it(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    data = table.to_pylist()
    report = profile(
        directory,
        checks=[
            "not_null:imgid",
            "unique:imgid",
            "range:score:0:5",
            "values:split:train",
            "length:caption:1:4",
            "length:tokens::2",
            "range:day:2024-01-05:",
            "rows:1:50",
            "rows::100",
            "not_null:day",
        ],
    )
    ids = [r["imgid"] for r in data if r["imgid"] is not None]
    expected = [
        sum(r["imgid"] is None for r in data),
        len(ids) - len(set(ids)),
        sum(r["score"] is not None and not 0 <= r["score"] <= 5 for r in data),
        sum(r["split"] is not None and r["split"] != "train" for r in data),
        sum(not 1 <= len(r["caption"]) <= 4 for r in data),
        sum(r["tokens"] is not None and len(r["tokens"]) > 2 for r in data),
        sum(r["day"].day < 5 for r in data),
        len(data) - 50,
        0,
        0,
    ]
    assert [c.offending for c in report.checks] == expected
    assert [c.passed for c in report.checks] == [n == 0 for n in expected]
    assert all(e > 0 for e in expected[:8])  # every kind is seen failing
    assert next(c.check for c in report.failed_checks) == "not_null:imgid"
    assert not report.passed


def test_check_objects_and_a_json_file(tmp_path: Path, mixed: tuple[Path, pa.Table]) -> None:
    directory, _ = mixed
    path = tmp_path / "checks.json"
    path.write_text(
        json.dumps(["not_null:day", {"kind": "range", "column": "score", "low": -10, "high": 20}])
    )
    checks = read_checks_file(path)
    assert checks == [
        Check(kind="not_null", column="day"),
        Check(kind="range", column="score", low=-10, high=20),
    ]
    report = profile(directory, checks=checks)
    assert report.passed
    assert [c.check for c in report.checks] == ["not_null:day", "range:score:-10:20"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not_null:a", Check(kind="not_null", column="a")),
        ("range:a::3.5", Check(kind="range", column="a", high=3.5)),
        ("range:d:2024-01-01:", Check(kind="range", column="d", low="2024-01-01")),
        ("values:s:x,y", Check(kind="values", column="s", values=("x", "y"))),
        ("rows:10:", Check(kind="rows", low=10)),
    ],
)
def test_parse(text: str, expected: Check) -> None:
    assert parse_check(text) == expected
    assert parse_check(expected.label()) == expected


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("not_null:nope", "names column 'nope', which the source does not have"),
        ("range:imgid:abc:", "'abc' is not a value of column 'imgid'"),
        ("values:day:yesterday", "'yesterday' is not a value of column 'day'"),
        ("range:meta:1:2", "does not apply to column 'meta'"),
        ("length:score:1:2", "does not apply to column 'score'"),
        ("range:score::", "neither a lower nor an upper bound"),
        ("length:caption:x:", "whole number"),
        ("bogus:thing", "cannot read check 'bogus:thing'; expected one of"),
        ("range:a", "cannot read check"),
    ],
)
def test_bad_checks_say_what_is_wrong(check: str, message: str, mixed: tuple[Path, pa.Table]) -> None:
    directory, _ = mixed
    with pytest.raises(ConfigurationError, match=message):
        profile(directory, checks=[check])


def test_bad_checks_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the checks file"):
        read_checks_file(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ConfigurationError, match="not JSON"):
        read_checks_file(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('[{"kind": "often", "column": "a"}]')
    with pytest.raises(ConfigurationError, match=r"check 0 in .* is not valid: kind"):
        read_checks_file(tmp_path / "y.json")
    for bad, message in (
        ({"kind": "values", "column": "a"}, "at least one allowed value"),
        ({"kind": "not_null"}, "needs a column"),
        ({"kind": "rows", "column": "a"}, "names no column"),
        ({"kind": "length", "column": "a", "low": 1.5}, "whole numbers"),
    ):
        (tmp_path / "z.json").write_text(json.dumps([bad]))
        with pytest.raises(ConfigurationError, match=message):
            read_checks_file(tmp_path / "z.json")
