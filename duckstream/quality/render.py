"""A QualityReport for people: a plain-text table, and Markdown or self-contained HTML with
one histogram picture per column (matplotlib PNG, embedded as a data URI) and the failed checks."""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Sequence
from typing import Literal

from duckstream._optional import require
from duckstream.quality.report import ColumnProfile, QualityReport

__all__ = [
    "histogram_png",
    "histogram_title",
    "render_html",
    "render_markdown",
    "render_text",
    "summary_rows",
]

_HEADERS = ("column", "type", "nulls", "distinct", "min", "max", "mean", "length", "top values")
_CELL = 28


def summary_rows(report: QualityReport) -> list[tuple[str, ...]]:
    """One row of text cells per column, in :data:`_HEADERS` order."""
    return [_cells(c) for c in report.columns]


def _cells(column: ColumnProfile) -> tuple[str, ...]:
    distinct = ""
    if column.distinct is not None:
        distinct = f"{'~' if column.distinct_approximate else ''}{column.distinct:,}"
    length = ""
    if column.length is not None and column.length.min is not None:
        mean = column.length.mean or 0.0
        length = f"{column.length.min}..{column.length.max} (avg {mean:.1f})"
    top = ", ".join(
        f"{_short(v.value)}" + ("" if v.count is None else f" ({v.count:,})") for v in column.top_values[:3]
    )
    return (
        column.name,
        column.type,
        f"{column.nulls:,}",
        distinct,
        _short(column.min),
        _short(column.max),
        "" if column.mean is None else f"{column.mean:.4g}",
        length,
        top,
    )


def _short(value: object) -> str:
    if value is None:
        return ""
    text = str(value).replace("\n", " ")
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _check_lines(report: QualityReport) -> list[str]:
    return [
        f"{'PASS' if c.passed else 'FAIL'}  {c.check}"
        + ("" if c.passed else f"  ({c.offending:,} offending{'; ' + c.detail if c.detail else ''})")
        for c in report.checks
    ]


def render_text(report: QualityReport) -> str:
    """A readable plain-text summary for a terminal."""
    lines = [
        f"source: {report.source}",
        f"rows: {report.total_rows:,}   columns: {report.total_columns}",
    ]
    if report.key is not None:
        lines.append(f"key {', '.join(report.key)}: {report.duplicate_count:,} duplicate rows")
    lines.append("")
    lines += _table(_HEADERS, summary_rows(report))
    if report.checks:
        failed = len(report.failed_checks)
        lines += ["", f"checks: {len(report.checks) - failed} passed, {failed} failed", *_check_lines(report)]
    notes = [*report.notes, *(f"~ {a}" for a in report.approximate)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def histogram_title(column: ColumnProfile) -> str:
    """What a histogram picture shows, and whether its heights are counted or estimated."""
    if column.histogram is None:
        return column.name
    how = "exact counts" if column.histogram.exact else "estimated from a quantile sketch"
    return f"{column.name}: {column.histogram.of}, {how}"


def histogram_png(column: ColumnProfile) -> bytes | None:
    """A small PNG histogram of a column's values (numbers) or lengths (strings, lists)."""
    if column.histogram is None or not column.histogram.counts:
        return None
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.0, 2.4), dpi=80)
    axes = figure.subplots()
    edges, counts = column.histogram.edges, column.histogram.counts
    if column.histogram.values is not None:
        # One bar per value, centred on it and as wide as the closest two values allow, so bars
        # stand apart and each reads as its value.
        points = column.histogram.values
        width = 0.8 * min((b - a for a, b in itertools.pairwise(points)), default=1.0)
        axes.bar(points, counts, width=width, align="center", color="#4c72b0")
    else:
        widths = [b - a for a, b in itertools.pairwise(edges)]
        axes.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white")
    axes.set_ylabel("rows" if column.histogram.exact else "rows (estimated)", fontsize=7)
    axes.set_title(
        f"{column.name} ({column.histogram.of}{'' if column.histogram.exact else ', estimated'})",
        fontsize=9,
    )
    axes.tick_params(labelsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_markdown(report: QualityReport) -> str:
    """Markdown with the column table, the failed checks and a histogram image per column."""
    out = [
        f"# Data quality: {_md(report.source)}",
        "",
        f"**{report.total_rows:,}** rows, **{report.total_columns}** columns.",
    ]
    if report.key is not None:
        out.append(f"Key `{', '.join(report.key)}`: **{report.duplicate_count:,}** duplicate rows.")
    out += ["", "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    out += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in summary_rows(report)]
    out += ["", *_checks_section(report, "markdown")]
    out += ["", "## Histograms", ""]
    for column in report.columns:
        png = histogram_png(column)
        if png is not None:
            out += [f"![{_md(histogram_title(column))}]({_data_uri(png)})", ""]
    out += _sample_section(report, "markdown")
    out += _notes(report, "markdown")
    return "\n".join(out) + "\n"


def render_html(report: QualityReport) -> str:
    """A self-contained HTML page: the same content as :func:`render_markdown`, images inline."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in _HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in summary_rows(report)
    )
    key = (
        f"<p>Key <code>{esc(', '.join(report.key))}</code>: "
        f"<b>{report.duplicate_count:,}</b> duplicate rows.</p>"
        if report.key is not None
        else ""
    )
    figures = []
    for column in report.columns:
        png = histogram_png(column)
        if png is not None:
            title = esc(histogram_title(column))
            figures.append(
                f'<figure><img alt="{title}" src="{_data_uri(png)}"><figcaption>{title}</figcaption></figure>'
            )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Data quality: {esc(report.source)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Data quality: {esc(report.source)}</h1>"
        f"<p><b>{report.total_rows:,}</b> rows, <b>{report.total_columns}</b> columns.</p>{key}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        + "\n".join(_checks_section(report, "html"))
        + f'<h2>Histograms</h2><div class="figures">{"".join(figures)}</div>'
        + "\n".join(_sample_section(report, "html"))
        + "\n".join(_notes(report, "html"))
        + "</body></html>\n"
    )


_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}.fail{color:#b00}"
    ".figures{display:flex;flex-wrap:wrap}figure{margin:4px}"
)


def _checks_section(report: QualityReport, style: Literal["markdown", "html"]) -> list[str]:
    if not report.checks:
        return []
    failed = report.failed_checks
    title = f"Checks: {len(report.checks) - len(failed)} passed, {len(failed)} failed"
    if style == "markdown":
        lines = [f"## {title}", ""]
        for c in failed:
            detail = f"; {_md(c.detail)}" if c.detail else ""
            lines.append(f"- **FAILED** `{c.check}`: {c.offending:,} offending rows{detail}")
        return lines
    items = "".join(
        f'<li class="fail"><b>FAILED</b> <code>{html.escape(c.check)}</code>: {c.offending:,} offending rows'
        f"{'; ' + html.escape(c.detail) if c.detail else ''}</li>"
        for c in failed
    )
    return [f"<h2>{html.escape(title)}</h2>", f"<ul>{items}</ul>"]


def _sample_section(report: QualityReport, style: Literal["markdown", "html"]) -> list[str]:
    if not report.sample_rows:
        return []
    names = list(report.sample_rows[0])
    rows = [[_short(row.get(name)) for name in names] for row in report.sample_rows]
    title = f"Sample ({len(rows)} first rows)"
    if style == "markdown":
        lines = [
            f"## {title}",
            "",
            "| " + " | ".join(_md(n) for n in names) + " |",
            "|" + "---|" * len(names),
        ]
        return [*lines, *("| " + " | ".join(_md(c) for c in row) + " |" for row in rows), ""]
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return [f"<h2>{esc(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]


def _notes(report: QualityReport, style: Literal["markdown", "html"]) -> list[str]:
    notes = [*report.notes, *(f"Estimated: {a}." for a in report.approximate)]
    if not notes:
        return []
    if style == "markdown":
        return ["## Notes", "", *(f"- {_md(n)}" for n in notes)]
    return ["<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
