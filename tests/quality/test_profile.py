"""profile(): figures checked against an independent computation with pyarrow, in one scan."""

from __future__ import annotations

import bisect
import itertools
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import duckstream
from duckstream.catalog import LakehouseCatalog
from duckstream.errors import ConfigurationError, QueryError, SourceError
from duckstream.quality import QualityReport, profile, profiling
from duckstream.quality.values import HISTOGRAM_MAX_VALUES, histogram_from_quantiles
from tests.quality.data import mixed_table, write_parts


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, pa.Table]:
    table = mixed_table()
    return write_parts(tmp_path / "mixed", table), table


def test_counts_match_pyarrow(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    report = profile(directory)
    assert isinstance(report, QualityReport)
    assert report.total_rows == table.num_rows
    assert report.total_columns == table.num_columns
    assert report.null_counts == {name: table.column(name).null_count for name in table.column_names}
    for name in ("imgid", "score", "split", "caption", "day", "flag"):
        column = table.column(name).drop_null()
        assert report.distinct_counts[name] == len(pc.unique(column)), name
    assert report.distinct_counts["meta"] is None  # a struct: nulls only, and the report says so
    assert any("'meta'" in note for note in report.notes)


def test_numbers_strings_and_lists(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    report = profile(directory)
    score = table.column("score").drop_null().to_pylist()
    numeric = report.column("score")
    assert (numeric.kind, numeric.min, numeric.max) == ("numeric", min(score), max(score))
    assert numeric.mean == pytest.approx(sum(score) / len(score))
    assert numeric.histogram is not None
    assert sum(numeric.histogram.counts) == pytest.approx(len(score))
    assert numeric.histogram.edges[0] == min(score)
    assert numeric.histogram.edges[-1] == max(score)

    captions = table.column("caption").to_pylist()
    lengths = [len(c) for c in captions]
    text = report.column("caption")
    assert text.length is not None
    assert (text.length.min, text.length.max) == (min(lengths), max(lengths))
    assert text.length.mean == pytest.approx(sum(lengths) / len(lengths))

    tokens = [len(t) for t in table.column("tokens").to_pylist() if t is not None]
    listed = report.column("tokens")
    assert listed.kind == "list"
    assert listed.length is not None
    assert (listed.length.min, listed.length.max) == (min(tokens), max(tokens))

    day = report.column("day")
    assert (day.kind, day.min, day.max) == ("temporal", "2024-01-01", "2024-01-30")
    assert report.column("flag").mean == pytest.approx(sum(table.column("flag").to_pylist()) / table.num_rows)


def test_top_values_are_the_most_frequent_with_counts(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    split = profile(directory).column("split")
    counts = table.column("split").drop_null().value_counts().to_pylist()
    expected = sorted(((c["counts"], c["values"]) for c in counts), reverse=True)
    assert [(v.count, v.value) for v in split.top_values] == expected[: len(split.top_values)]
    assert not split.top_values_approximate


def test_key_duplicates_and_sample(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    report = profile(directory, key="imgid", sample=4)
    ids = table.column("imgid").to_pylist()
    assert report.duplicate_count == len(ids) - len(set(ids))  # null keys compare equal
    assert len(report.sample_rows) == 4
    assert report.sample_rows[0]["imgid"] == ids[0]
    assert report.sample_rows[0]["day"] == "2024-01-01"


def test_one_scan_of_the_data(mixed: tuple[Path, pa.Table], monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics of all columns and all checks come from one aggregate query."""
    seen: list[str] = []

    class Spy:
        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self._con = con

        def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
            seen.append(sql)
            return self._con.execute(sql, *args)

    real = profiling._profile

    def spied(con: duckdb.DuckDBPyConnection, *args: Any) -> QualityReport:
        return real(Spy(con), *args)  # type: ignore[arg-type]

    monkeypatch.setattr(profiling, "_profile", spied)
    directory, table = mixed
    profile(directory, checks=["not_null:imgid", "range:score:0:"], key="imgid", sample=0)
    scans = [s for s in seen if "read_parquet" in s and not s.startswith("DESCRIBE")]
    aggregates = [s for s in scans if "count(*) AS total" in s]
    assert len(aggregates) == 1
    assert all(f"c{i}_nn" in aggregates[0] for i in range(8))
    assert "approx_quantile" not in aggregates[0]  # no sketch where the histograms are counted
    assert "count_if" in aggregates[0]
    # Besides it: the row count (Parquet footers answer it), and exact counts of the top values
    # and of the histograms' bins.
    count, exact = (s for s in scans if s not in aggregates)
    assert count.startswith("SELECT count(*) FROM")
    items = re.fullmatch(r"SELECT (.*) FROM read_parquet\(.*", exact)
    assert items is not None
    top = r'count_if\("\w+" = \?\) AS c\d+_top_\d+'
    histogram = (
        r'histogram\((?:\w+\()?"(\w+)"\)?(::DOUBLE, \?::DOUBLE\[\])?\) FILTER \(WHERE [^)]+\)+ AS c\d+_hist'
    )
    assert re.fullmatch(f"(({top}|{histogram})(, )?)+", items.group(1))
    # DuckDB's histogram maps every distinct value (18 s for 2 million unique integers): only
    # over columns (or lengths) with few of them, else over fixed bin boundaries.
    per_value = {name for name, bounds in re.findall(histogram, exact) if not bounds}
    binned = {name for name, bounds in re.findall(histogram, exact) if bounds}
    assert (per_value, binned) == ({"imgid", "split", "caption", "tokens"}, {"score"})
    assert len(set(table.column("imgid").to_pylist())) <= HISTOGRAM_MAX_VALUES
    assert len(set(table.column("score").to_pylist())) > HISTOGRAM_MAX_VALUES


def test_estimates_above_the_threshold_are_labelled(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    report = profile(directory, exact_threshold=10)
    split = report.column("split")
    assert split.distinct_approximate
    assert split.top_values_approximate
    assert all(v.count is None for v in split.top_values)
    assert {v.value for v in split.top_values} <= {"train", "val"}
    assert any("exact threshold of 10" in a for a in report.approximate)
    sketched = [c.name for c in report.columns if c.histogram is not None]
    assert sketched == ["imgid", "score", "split", "caption", "tokens"]
    assert not any(report.column(name).histogram.exact for name in sketched)  # type: ignore[union-attr]
    assert any(a.startswith("histograms of 'imgid', 'score', ") for a in report.approximate)
    assert not any("histogram" in a for a in profile(directory).approximate)
    assert report.distinct_counts["imgid"] == pytest.approx(
        len(pc.unique(table.column("imgid").drop_null())), rel=0.1
    )


def test_columns_subset(mixed: tuple[Path, pa.Table]) -> None:
    directory, _ = mixed
    report = profile(directory, columns=["split", "score"])
    assert [c.name for c in report.columns] == ["split", "score"]
    assert report.total_columns == 8


def test_lists_of_sources_and_globs(mixed: tuple[Path, pa.Table]) -> None:
    directory, table = mixed
    assert profile(str(directory / "*.parquet")).total_rows == table.num_rows
    files = sorted(directory.glob("*.parquet"))
    assert profile([str(f) for f in files[:2]]).total_rows == sum(
        pq.read_metadata(f).num_rows for f in files[:2]
    )


def test_the_top_level_package_exports_profile(mixed: tuple[Path, pa.Table]) -> None:
    assert duckstream.profile is profile


def test_an_empty_source_is_a_report_with_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(mixed_table().slice(0, 0), path)
    report = profile(path, checks=["rows:1:"])
    assert report.total_rows == 0
    assert report.null_counts["imgid"] == 0
    assert report.column("score").histogram is None
    assert not report.passed
    assert report.checks[0].offending == 1
    assert any("no rows" in n for n in report.notes)


def test_bad_sources_and_arguments(tmp_path: Path, mixed: tuple[Path, pa.Table]) -> None:
    with pytest.raises(SourceError, match="no such file"):
        profile(tmp_path / "missing.parquet")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SourceError, match="holds no"):
        profile(tmp_path / "nothing")
    with pytest.raises(SourceError):
        profile([])
    directory, _ = mixed
    with pytest.raises(ConfigurationError, match="no column 'nope'"):
        profile(directory, columns=["nope"])
    with pytest.raises(ConfigurationError, match="no column 'nope'"):
        profile(directory, key="nope")
    with pytest.raises(ConfigurationError, match="sample"):
        profile(directory, sample=-1)


def test_lake_table_at_its_snapshot(tmp_path: Path) -> None:
    table = mixed_table(40).drop_columns(["meta"])
    raw = tmp_path / "raw.parquet"
    pq.write_table(table, raw)
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as catalog:
        catalog.con.execute(f"CREATE TABLE captions AS SELECT * FROM read_parquet('{raw}')")
        pinned = catalog.table("captions")
        catalog.con.execute("DELETE FROM captions WHERE imgid < 5")
        catalog.con.execute(f"INSERT INTO captions SELECT * FROM read_parquet('{raw}')")
        report = profile(pinned, key="imgid")  # the catalog is open in this process
        latest = profile(catalog.table("captions"))
    assert report.source == f"lake table captions at snapshot {pinned.version}"
    assert report.total_rows == table.num_rows
    assert report.null_counts["imgid"] == table.column("imgid").null_count
    ids = table.column("imgid").to_pylist()
    assert report.duplicate_count == len(ids) - len(set(ids))
    kept = [i for i in ids if i is None or i >= 5]
    assert latest.total_rows == len(kept) + len(ids)
    # the catalog closed: the pinned table is read through a read-only attach of its own
    assert profile(pinned).total_rows == table.num_rows


def test_histogram_from_quantiles_keeps_the_count() -> None:
    edges, counts = histogram_from_quantiles([0.0, 1.0, 1.0, 1.0, 4.0], 100, bins=4)
    assert edges == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sum(counts) == pytest.approx(100)
    assert counts[0] == pytest.approx(75)  # three quarters of the rows are at most 1
    assert histogram_from_quantiles([2.0, 2.0], 7) == ([1.5, 2.5], [7.0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-5, 5)), max_size=40),
    texts=st.lists(st.one_of(st.none(), st.text(alphabet="abc", max_size=4)), max_size=40),
)
def test_counts_are_exact_below_the_threshold(
    tmp_path_factory: pytest.TempPathFactory, values: list[int | None], texts: list[str | None]
) -> None:
    rows = min(len(values), len(texts))
    table = pa.table({"n": pa.array(values[:rows], pa.int64()), "t": pa.array(texts[:rows], pa.string())})
    path = tmp_path_factory.mktemp("prop") / "t.parquet"
    pq.write_table(table, path)
    report = profile(path, key="n", checks=["not_null:t", "range:n:0:3", "unique:t"])
    n, t = values[:rows], texts[:rows]
    assert report.total_rows == rows
    assert report.null_counts == {"n": n.count(None), "t": t.count(None)}
    assert report.distinct_counts == {"n": len(set(n) - {None}), "t": len(set(t) - {None})}
    assert report.duplicate_count == rows - len(set(n))
    offending = [c.offending for c in report.checks]
    present = [x for x in t if x is not None]
    for name, measured in (("n", [x for x in n if x is not None]), ("t", [len(x) for x in present])):
        histogram = report.column(name).histogram
        assert (histogram is None) == (not measured)
        if histogram is not None:
            assert histogram.exact
            assert histogram.counts == _rows_per_bin(histogram.edges, measured)
            assert histogram.values is not None
            assert {v: c for v, c in zip(histogram.values, histogram.counts, strict=True) if c} == {
                v: measured.count(v) for v in set(measured)
            }
    assert offending == [
        t.count(None),
        sum(1 for x in n if x is not None and not 0 <= x <= 3),
        len(present) - len(set(present)),
    ]


def test_a_profile_past_its_time_limit_is_stopped(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    duckdb.sql(f"COPY (SELECT i, md5(i::VARCHAR) AS s FROM range(1000000) t(i)) TO '{path}'")
    started = time.perf_counter()
    profile(path, exact_threshold=10**9)
    # A limit far inside what the same profile takes here, however fast or loaded the machine.
    limit = (time.perf_counter() - started) / 20
    with pytest.raises(QueryError, match=rf"took longer than the limit of {re.escape(f'{limit:g}')} s"):
        profile(path, timeout_s=limit, exact_threshold=10**9)
    assert profile(path, columns=["i"], sample=0).total_rows == 1_000_000


def test_unusual_types_are_profiled_or_named(tmp_path: Path) -> None:
    path = tmp_path / "types.parquet"
    duckdb.sql(
        "COPY (SELECT uuid() AS u, MAP {'k': i} AS m, INTERVAL 3 DAY AS iv, 1.5::DECIMAL(10, 2) AS dec, "
        "[{'a': 1}] AS ls, [1.0, 2.0, 3.0]::FLOAT[3] AS arr, '{\"x\": 1}'::JSON AS j, "
        "CASE WHEN i % 2 = 0 THEN 'nan'::DOUBLE WHEN i = 1 THEN 'inf'::DOUBLE ELSE i END AS x, "
        f"TIME '10:00' AS t FROM range(10) t(i)) TO '{path}'"
    )
    report = profile(path, checks=["unique:u", "unique:m", "not_null:ls"])
    assert [c.passed for c in report.checks] == [True, True, True]
    x = report.column("x")
    assert x.non_finite == 6
    assert x.mean == pytest.approx((3 + 5 + 7 + 9) / 4)
    assert x.histogram is not None
    assert sum(x.histogram.counts) == pytest.approx(4)
    assert "column 'x' has 6 NaN or infinite values" in report.notes
    assert "column 'u' of type UUID is profiled for nulls only" in report.notes
    assert report.column("j").kind == "string"
    assert report.column("arr").length is not None
    with pytest.raises(ConfigurationError, match="does not apply to column 'm'"):
        profile(path, checks=["range:m:1:2"])


def test_few_integers_get_an_exact_histogram(tmp_path: Path) -> None:
    path = tmp_path / "few.parquet"
    values = [0] * 5 + [1] * 2 + [3] * 7 + [None]
    pq.write_table(pa.table({"n": pa.array(values, pa.int64())}), path)
    histogram = profile(path).column("n").histogram
    assert histogram is not None
    assert histogram.edges == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert histogram.counts == [5.0, 2.0, 0.0, 7.0]


def _rows_per_bin(edges: list[float], values: Sequence[float]) -> list[int]:
    """Rows in each bin as the report defines them: ``edges[i] < x <= edges[i + 1]``, the first
    bin also holding ``edges[0]``; computed here without DuckDB."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        assert edges[0] <= value <= edges[-1], (value, edges)
        counts[max(0, bisect.bisect_left(edges, value) - 1)] += 1
    return counts


def test_histograms_are_the_counts_of_the_data(tmp_path: Path) -> None:
    """Every bar's height is the number of rows in it, counted in Python on the same data."""
    rows = 400
    few_ints = [None if i % 13 == 0 else (0, 2, 2, 7, 7, 7)[i % 6] for i in range(rows)]
    few_floats = [(0.1, 0.5, 0.5, 2.25)[i % 4] for i in range(rows)]
    many_ints = [(i * i) % 997 - 300 for i in range(rows)]
    many_floats = [None if i % 17 == 0 else math.sin(i) * 100 + i / 7 for i in range(rows)]
    split = [("val", "train", "train", "holdout")[i % 4] for i in range(rows)]
    caption = [None if i % 11 == 0 else "w" * ((i * 7) % 150) for i in range(rows)]
    tokens = [None if i % 9 == 0 else list(range((0, 1, 1, 4)[i % 4])) for i in range(rows)]
    long_tokens = [list(range((i * 3) % 91)) for i in range(rows)]
    table = pa.table(
        {
            "few_ints": pa.array(few_ints, pa.int64()),
            "few_floats": pa.array(few_floats, pa.float64()),
            "many_ints": pa.array(many_ints, pa.int32()),
            "many_floats": pa.array(many_floats, pa.float64()),
            "split": pa.array(split, pa.string()),
            "caption": pa.array(caption, pa.string()),
            "tokens": pa.array(tokens, pa.list_(pa.int64())),
            "long_tokens": pa.array(long_tokens, pa.list_(pa.int64())),
        }
    )
    path = tmp_path / "shapes.parquet"
    pq.write_table(table, path)
    report = profile(path)
    measured: dict[str, Sequence[float]] = {
        "few_ints": [v for v in few_ints if v is not None],
        "few_floats": few_floats,
        "many_ints": many_ints,
        "many_floats": [v for v in many_floats if v is not None],
        "split": [len(s) for s in split],
        "caption": [len(s) for s in caption if s is not None],
        "tokens": [len(t) for t in tokens if t is not None],
        "long_tokens": [len(t) for t in long_tokens],
    }
    for name, data in measured.items():
        histogram = report.column(name).histogram
        assert histogram is not None, name
        assert histogram.of == ("values" if name.startswith(("few", "many")) else "lengths")
        assert histogram.counts == _rows_per_bin(histogram.edges, data), name
        distinct = sorted(set(data))
        if len(distinct) <= 40:
            # One bar per distinct value: each holds that value alone.
            per_bar = [
                [v for v in distinct if lo < v <= hi] for lo, hi in itertools.pairwise(histogram.edges)
            ]
            assert all(len(bar) <= 1 for bar in per_bar), (name, histogram.edges)
            assert sum(len(bar) for bar in per_bar) == len(distinct), name
        else:
            assert len(histogram.counts) <= 20, name
    floats = report.column("few_floats").histogram
    assert floats is not None
    assert (floats.values, floats.counts) == ([0.1, 0.5, 2.25], [100, 200, 100])
    # lengths 3, 5 and 7: a bar at each, none between them holding rows
    split_bars = report.column("split").histogram
    assert split_bars is not None
    heights = dict(zip(itertools.pairwise(split_bars.edges), split_bars.counts, strict=True))
    assert {edges: n for edges, n in heights.items() if n} == {
        (2.5, 3.5): 100,
        (4.5, 5.5): 200,
        (6.5, 7.5): 100,
    }
