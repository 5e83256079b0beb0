"""Render a gate report as JSON, Markdown or HTML: generic over GateResult, any gate."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tasks.gates import GateReport


def report_dict(report: GateReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "failures": report.failures,
        "metric": report.metric,
        "metric_value": report.metric_value,
        "serving_flavour": report.serving_flavour,
        "gates": [asdict(r) for r in report.results],
        "groups": report.groups,
    }


def to_json(report: GateReport) -> str:
    return json.dumps(report_dict(report), indent=2, default=_json_default)


def to_markdown(report: GateReport) -> str:
    lines = [
        f"## Gate report: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"Judged as it will serve: **{report.serving_flavour or 'sklearn'}**.",
        "",
        "| gate | value | threshold | result | note |",
        "|---|---:|---:|---|---|",
    ]
    for r in report.results:
        verdict = "pass" if r.passed else "**fail**"
        lines.append(
            f"| {r.name} | {fmt(r.value)} | {r.comparison} {fmt(r.threshold)} "
            f"| {verdict} | {r.note} |"
        )
    if report.groups:
        metrics = sorted({m for row in report.groups.values() for m in row})
        lines += ["", "### Per group", "", "| group | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---:|" * len(metrics))
        for group, row in report.groups.items():
            cells = " | ".join(fmt(row.get(m, math.nan)) for m in metrics)
            lines.append(f"| {group} | {cells} |")
    return "\n".join(lines) + "\n"


def to_html(report: GateReport) -> str:
    def cell(text: object, bad: bool = False) -> str:
        style = ' style="color:#b00020;font-weight:bold"' if bad else ""
        return f"<td{style}>{html.escape(str(text))}</td>"

    table = "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
    rows = "".join(
        "<tr>"
        + cell(r.name)
        + cell(fmt(r.value))
        + cell(f"{r.comparison} {fmt(r.threshold)}")
        + cell("pass" if r.passed else "fail", bad=not r.passed)
        + cell(r.note)
        + "</tr>"
        for r in report.results
    )
    flavour = html.escape(report.serving_flavour or "sklearn")
    parts = [
        "<html><body style='font-family:sans-serif'>",
        f"<h3>Gate report: {'PASSED' if report.passed else 'FAILED'}</h3>",
        f"<p>Judged as it will serve: <b>{flavour}</b></p>",
        table,
        "<tr><th>gate</th><th>value</th><th>threshold</th><th>result</th><th>note</th></tr>",
        rows,
        "</table>",
    ]
    if report.groups:
        metrics = sorted({m for row in report.groups.values() for m in row})
        head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
        body = "".join(
            f"<tr>{cell(group)}" + "".join(cell(fmt(row.get(m, math.nan))) for m in metrics)
            for group, row in report.groups.items()
        )
        parts += ["<h4>Per group</h4>", table, f"<tr><th>group</th>{head}</tr>{body}</table>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def fmt(value: float | int | None) -> str:
    """Format a gate's number for tags and tables: ints as is, floats to 6 digits."""
    if value is None:
        return "-"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


def _json_default(obj: object) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
