"""A gate report: each gate's result, and its renderings (JSON, Markdown, HTML).

The renderings are generic over :class:`GateResult`: a gate added by registration shows up
in every format with no edit here.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from contract import TAG_GATE_FAILURES, TAG_GATE_PREFIX, TAG_GATES


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: its measured value against its threshold."""

    name: str
    passed: bool
    value: float
    threshold: float
    comparison: str  # "<=" or ">=": how value must relate to threshold to pass
    note: str = ""
    # A per-group (or per-anything) breakdown the reports show as a table.
    details: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def gate(self) -> str:
        """The spec-level gate this check belongs to (``fairness.*`` -> ``fairness``)."""
        return self.name.split(".", 1)[0]

    def tag_value(self) -> str:
        verdict = "pass" if self.passed else "fail"
        text = (
            f"{verdict}: value={fmt(self.value)} {self.comparison} threshold={fmt(self.threshold)}"
        )
        return f"{text} ({self.note})" if self.note else text


@dataclass
class GateReport:
    """Every gate's result for one candidate, plus the per-group breakdowns."""

    results: list[GateResult]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    metric: str | None = None
    metric_value: float | None = None
    serving_flavour: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def by_name(self) -> dict[str, GateResult]:
        return {r.name: r for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self)

    def to_json(self) -> str:
        return to_json(self)

    def to_markdown(self) -> str:
        return to_markdown(self)

    def to_html(self) -> str:
        return to_html(self)

    def version_tags(self) -> dict[str, str]:
        """Return the model-version tags that carry this report (the registry is the audit log)."""
        tags = {TAG_GATE_PREFIX + r.name: r.tag_value() for r in self.results}
        tags[TAG_GATES] = "passed" if self.passed else "failed"
        tags[TAG_GATE_FAILURES] = ",".join(self.failures)
        return tags

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GateReport:
        return cls(
            results=[GateResult(**g) for g in raw["gates"]],
            groups=raw.get("groups") or {},
            metric=raw.get("metric"),
            metric_value=raw.get("metric_value"),
            serving_flavour=raw.get("serving_flavour"),
        )


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
