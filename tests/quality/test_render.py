"""Reports for people: the terminal table, and Markdown/HTML with histogram pictures and failed checks."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from duckstream.quality import QualityReport, profile
from duckstream.quality.render import histogram_png, render_html, render_markdown, render_text
from tests.quality.data import mixed_table, write_parts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> QualityReport:
    directory = write_parts(tmp_path_factory.mktemp("render") / "mixed", mixed_table())
    return profile(directory, key="imgid", checks=["not_null:imgid", "not_null:day", "range:score:0:"])


def images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def histogram_columns(report: QualityReport) -> list[str]:
    return [c.name for c in report.columns if c.histogram is not None]


def test_text_table(report: QualityReport) -> None:
    text = render_text(report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("column"))
    assert header.split() == [
        "column",
        "type",
        "nulls",
        "distinct",
        "min",
        "max",
        "mean",
        "length",
        "top",
        "values",
    ]
    for column in report.columns:
        assert any(line.startswith(column.name + " ") for line in lines), column.name
    assert "checks: 1 passed, 2 failed" in text
    assert "FAIL  not_null:imgid" in text
    assert "PASS  not_null:day" in text
    assert f"key imgid: {report.duplicate_count} duplicate rows" in text


def test_markdown_has_a_picture_per_column_and_the_failed_checks(report: QualityReport) -> None:
    text = render_markdown(report)
    pictures = images(text)
    assert (
        len(pictures) == len(histogram_columns(report)) == 5
    )  # imgid, score; lengths of split, caption, tokens
    assert all(p.startswith(PNG_MAGIC) for p in pictures)
    assert "**FAILED** `not_null:imgid`" in text
    assert "**FAILED** `range:score:0:`" in text
    assert "not_null:day" not in text  # passed checks are counted, not listed
    assert "| imgid | BIGINT |" in text
    assert "## Sample (5 first rows)" in text


def test_html_is_self_contained(report: QualityReport) -> None:
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert len(images(page)) == len(histogram_columns(report))
    assert "<b>FAILED</b> <code>not_null:imgid</code>" in page
    assert "<h2>Sample (5 first rows)</h2>" in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing loaded from elsewhere


def test_html_escapes_names(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"<b>x</b>": [1, 2]}), tmp_path / "t.parquet")
    page = render_html(profile(tmp_path / "t.parquet"))
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page


def test_histogram_png_of_a_column_without_one(report: QualityReport) -> None:
    assert histogram_png(report.column("day")) is None
    png = histogram_png(report.column("score"))
    assert png is not None
    assert png.startswith(PNG_MAGIC)


def test_a_histogram_says_when_it_is_estimated(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = write_parts(tmp_path_factory.mktemp("estimated") / "mixed", mixed_table())
    counted = profile(directory)
    sketched = profile(directory, exact_threshold=10)
    for report, how in ((counted, "exact counts"), (sketched, "estimated from a quantile sketch")):
        captions = re.findall(r"<figcaption>([^<]*)</figcaption>", render_html(report))
        kinds = {"imgid": "values", "score": "values", "split": "lengths", "caption": "lengths"}
        assert captions == [f"{name}: {of}, {how}" for name, of in {**kinds, "tokens": "lengths"}.items()]
        markdown = render_markdown(report)
        assert re.findall(r"!\[([^\]]*)\]\(data:", markdown) == captions
        notes = "histograms of 'imgid', 'score', 'split', 'caption', 'tokens' are estimated"
        assert (notes in markdown) == (report is sketched)
        assert (notes in render_text(report)) == (report is sketched)
