"""Validation gates: what a registered candidate must prove on the hold-out before it gets traffic.

Each gate comes from the spec's ``gates`` section and runs on rows the optimizer never saw:

- ``performance`` -- the candidate's hold-out metric is not worse than the current champion's
  on the same rows by more than ``max_regression`` (no champion: the absolute ``floor``);
- ``fairness.demographic_parity`` and ``fairness.equalized_odds`` -- fairlearn's differences
  across the groups of the sensitive attribute, under their limits (plus a per-group report);
- ``latency`` -- single-row predict p95 in milliseconds, under a budget;
- ``size`` -- the serialized (cloudpickle, as logged) model in bytes, under a budget.

A :class:`GateReport` holds every result; :func:`record_gate_report` writes it to the
version's run as artifacts (JSON, Markdown, HTML) and to the version's tags.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract import TAG_GATE_FAILURES, TAG_GATE_PREFIX, TAG_GATES, TAG_HOLDOUT_PREFIX
from tasks.metrics import (
    better,
    metrics_for,
    model_predictor,
    predictions,
    score_model,
    serialized_bytes,
    sign,
    single_row_latency_ms,
)
from tasks.spec import GatesSpec, TaskType

if TYPE_CHECKING:
    from mlflow import MlflowClient

GATE_ARTIFACT_DIR = "gates"
PERFORMANCE = "performance"
DEMOGRAPHIC_PARITY = "fairness.demographic_parity"
EQUALIZED_ODDS = "fairness.equalized_odds"
LATENCY = "latency"
SIZE = "size"


class GateError(ValueError):
    """A gate cannot be evaluated as declared (missing attribute, unsupported task, ...)."""


@dataclass(frozen=True)
class Holdout:
    """The rows the gates judge on: features, labels and (optionally) the sensitive attribute."""

    X: pd.DataFrame
    y: np.ndarray
    sensitive: pd.Series | None = None
    # The same rows with every column the data had (tasks.data's test_frame): a champion
    # from another study may use features this study dropped.
    raw: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise GateError(f"hold-out X has {len(self.X)} rows but y has {len(self.y)}")
        if self.sensitive is not None and len(self.sensitive) != len(self.X):
            raise GateError(
                f"hold-out sensitive attribute has {len(self.sensitive)} rows, X has {len(self.X)}"
            )


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: its measured value against its threshold."""

    name: str
    passed: bool
    value: float
    threshold: float
    comparison: str  # "<=" or ">=": how value must relate to threshold to pass
    note: str = ""

    @property
    def gate(self) -> str:
        """The spec-level gate this check belongs to (``fairness.*`` -> ``fairness``)."""
        return self.name.split(".", 1)[0]

    def tag_value(self) -> str:
        verdict = "pass" if self.passed else "fail"
        bound = f"{self.comparison} threshold={_fmt(self.threshold)}"
        text = f"{verdict}: value={_fmt(self.value)} {bound}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class GateReport:
    """Every gate's result for one candidate, plus the per-group fairness breakdown."""

    results: list[GateResult]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    metric: str | None = None
    metric_value: float | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def by_name(self) -> dict[str, GateResult]:
        return {r.name: r for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "metric": self.metric,
            "metric_value": self.metric_value,
            "gates": [asdict(r) for r in self.results],
            "groups": self.groups,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def to_markdown(self) -> str:
        lines = [
            f"## Gate report: {'PASSED' if self.passed else 'FAILED'}",
            "",
            "| gate | value | threshold | result | note |",
            "|---|---:|---:|---|---|",
        ]
        for r in self.results:
            verdict = "pass" if r.passed else "**fail**"
            lines.append(
                f"| {r.name} | {_fmt(r.value)} | {r.comparison} {_fmt(r.threshold)} "
                f"| {verdict} | {r.note} |"
            )
        if self.groups:
            metrics = sorted({m for row in self.groups.values() for m in row})
            lines += ["", "### Per group", "", "| group | " + " | ".join(metrics) + " |"]
            lines.append("|---|" + "---:|" * len(metrics))
            for group, row in self.groups.items():
                cells = " | ".join(_fmt(row.get(m, math.nan)) for m in metrics)
                lines.append(f"| {group} | {cells} |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        def cell(text: object, bad: bool = False) -> str:
            style = ' style="color:#b00020;font-weight:bold"' if bad else ""
            return f"<td{style}>{html.escape(str(text))}</td>"

        rows = "".join(
            "<tr>"
            + cell(r.name)
            + cell(_fmt(r.value))
            + cell(f"{r.comparison} {_fmt(r.threshold)}")
            + cell("pass" if r.passed else "fail", bad=not r.passed)
            + cell(r.note)
            + "</tr>"
            for r in self.results
        )
        parts = [
            "<html><body style='font-family:sans-serif'>",
            f"<h3>Gate report: {'PASSED' if self.passed else 'FAILED'}</h3>",
            "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
            "<tr><th>gate</th><th>value</th><th>threshold</th><th>result</th><th>note</th></tr>",
            rows,
            "</table>",
        ]
        if self.groups:
            metrics = sorted({m for row in self.groups.values() for m in row})
            head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
            body = "".join(
                f"<tr>{cell(group)}" + "".join(cell(_fmt(row.get(m, math.nan))) for m in metrics)
                for group, row in self.groups.items()
            )
            parts += [
                "<h4>Per group</h4>",
                "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
                f"<tr><th>group</th>{head}</tr>{body}</table>",
            ]
        parts.append("</body></html>")
        return "\n".join(parts)

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
        )


# --- measurements (one way each: tasks.metrics) -----------------------------------------
def predict_scores(model: Any, X: pd.DataFrame, task: TaskType) -> np.ndarray:
    """Return what serving returns: class probabilities, or predictions for regression."""
    return predictions(model, X, task)


def score_metric(metric: str, model: Any, X: pd.DataFrame, y: np.ndarray, task: TaskType) -> float:
    """Return ``metric`` of a fitted model on ``(X, y)`` (the spec's metric names)."""
    supported = metrics_for(task)
    if metric not in supported:
        raise GateError(
            f"metric {metric!r} is not defined for task {task!r}; use {sorted(supported)}"
        )
    if metric == "latency_ms":
        return single_row_latency_ms(model_predictor(model, task), X)
    if metric == "model_bytes":
        return float(serialized_bytes(model))
    return score_model(metric, model, X, y, task)


# --- the gates ---------------------------------------------------------------------------
def performance_gate(
    *,
    metric: str,
    direction: str,
    value: float,
    champion_value: float | None,
    max_regression: float,
    floor: float | None,
) -> GateResult:
    """Judge ``value`` against the champion's by a margin, or against the floor with no champion."""
    comparison = ">=" if sign(direction) < 0 else "<="
    if champion_value is not None:
        threshold = champion_value + sign(direction) * max_regression
        note = (
            f"{metric}; champion {_fmt(champion_value)} on the same rows, margin {max_regression}"
        )
    elif floor is not None:
        threshold, note = floor, f"{metric}; no champion: absolute bound"
    else:
        return GateResult(PERFORMANCE, True, value, math.nan, comparison, "no champion, no floor")
    # NaN on either side fails: a score that cannot be computed proves nothing.
    passed = not math.isnan(threshold) and (
        value == threshold or better(value, threshold, direction)
    )
    return GateResult(PERFORMANCE, passed, value, threshold, comparison, note)


def fairness_gates(
    model: Any,
    holdout: Holdout,
    *,
    max_demographic_parity_difference: float,
    max_equalized_odds_difference: float,
    task: TaskType,
    decision_threshold: float = 0.5,
) -> tuple[list[GateResult], dict[str, dict[str, float]]]:
    """Return the two fairness checks (fairlearn) and the per-group report (MetricFrame).

    The model's decision is P(positive) >= ``decision_threshold``: the cut the application
    acts on, which is what treats groups alike or not.
    """
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    if task != "binary":
        raise GateError(
            f"the fairness gate needs a binary task (demographic parity of a positive class), "
            f"got task {task!r}: remove gates.fairness from the spec"
        )
    if holdout.sensitive is None:
        raise GateError("the fairness gate needs the sensitive attribute's hold-out values")
    classes = np.asarray(model.classes_)
    y_true = (np.asarray(holdout.y) == classes[-1]).astype(int)
    y_pred = (predict_scores(model, holdout.X, task)[:, -1] >= decision_threshold).astype(int)
    sensitive = holdout.sensitive.astype(str).to_numpy()
    dpd = float(demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive))
    eod = float(equalized_odds_difference(y_true, y_pred, sensitive_features=sensitive))
    attr = holdout.sensitive.name or "sensitive attribute"
    frame = MetricFrame(
        metrics={
            "count": count,
            "accuracy": accuracy_score,
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
    )
    by_group = frame.by_group
    groups = {
        str(group): {str(k): float(v) for k, v in row.items()} for group, row in by_group.iterrows()
    }
    results = [
        GateResult(
            DEMOGRAPHIC_PARITY,
            dpd <= max_demographic_parity_difference,
            dpd,
            max_demographic_parity_difference,
            "<=",
            f"across {attr}, acting at P >= {decision_threshold:g}",
        ),
        GateResult(
            EQUALIZED_ODDS,
            eod <= max_equalized_odds_difference,
            eod,
            max_equalized_odds_difference,
            "<=",
            f"across {attr}, acting at P >= {decision_threshold:g}",
        ),
    ]
    return results, groups


def run_gates(
    gates: GatesSpec,
    model: Any,
    holdout: Holdout,
    *,
    task: TaskType,
    champion: Any | None = None,
    latency_calls: int = 200,
) -> GateReport:
    """Run every gate the spec declares on one candidate; ``champion`` is the model to beat."""
    if gates.fairness is not None and task != "binary":  # fail before the slow measurements
        raise GateError(
            f"the fairness gate needs a binary task (demographic parity of a positive class), "
            f"got task {task!r}: remove gates.fairness from the spec"
        )
    results: list[GateResult] = []
    groups: dict[str, dict[str, float]] = {}
    metric_name: str | None = None
    metric_value: float | None = None
    if gates.performance is not None:
        perf = gates.performance
        direction = metrics_for(task).get(perf.metric)
        if direction is None:
            raise GateError(f"gates.performance.metric {perf.metric!r} is not defined for {task!r}")
        metric_name = perf.metric
        metric_value = score_metric(perf.metric, model, holdout.X, holdout.y, task)
        champion_value, unscored = None, ""
        if champion is not None:
            champion_X = champion_inputs(champion, holdout)
            if champion_X is None:
                unscored = "; the champion needs columns these rows lack, so the floor applies"
            else:
                champion_value = score_metric(perf.metric, champion, champion_X, holdout.y, task)
        result = performance_gate(
            metric=perf.metric,
            direction=direction,
            value=metric_value,
            champion_value=champion_value,
            max_regression=perf.max_regression,
            floor=perf.floor,
        )
        if unscored:
            result = replace(result, note=result.note + unscored)
        results.append(result)
    if gates.fairness is not None:
        fair, groups = fairness_gates(
            model,
            holdout,
            max_demographic_parity_difference=gates.fairness.max_demographic_parity_difference,
            max_equalized_odds_difference=gates.fairness.max_equalized_odds_difference,
            task=task,
            decision_threshold=gates.fairness.decision_threshold,
        )
        results += fair
    if gates.latency_p95_ms is not None:
        p95 = single_row_latency_ms(model_predictor(model, task), holdout.X, calls=latency_calls)
        results.append(
            GateResult(
                LATENCY,
                p95 <= gates.latency_p95_ms,
                p95,
                gates.latency_p95_ms,
                "<=",
                "ms, p95 CPU time per single-row call",
            )
        )
    if gates.max_model_bytes is not None:
        size = serialized_bytes(model)
        results.append(
            GateResult(
                SIZE, size <= gates.max_model_bytes, size, gates.max_model_bytes, "<=", "bytes"
            )
        )
    return GateReport(results, groups, metric_name, metric_value)


def champion_inputs(champion: Any, holdout: Holdout) -> pd.DataFrame | None:
    """Return the hold-out rows in the champion's own input columns, or None if absent."""
    names = getattr(champion, "feature_names_in_", None)
    if names is None:
        return holdout.X
    names = [str(n) for n in names]
    if all(n in holdout.X.columns for n in names):
        return holdout.X[names]
    if holdout.raw is not None and all(n in holdout.raw.columns for n in names):
        from tasks.data import clean_features

        return clean_features(holdout.raw[names].reset_index(drop=True))
    return None


# --- the registry side -------------------------------------------------------------------
def record_gate_report(
    client: MlflowClient, name: str, version: str | int, run_id: str, report: GateReport
) -> dict[str, str]:
    """Log the report on the version's run (JSON, Markdown, HTML) and as version tags."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "gate_report.json").write_text(report.to_json())
        (folder / "gate_report.md").write_text(report.to_markdown())
        (folder / "gate_report.html").write_text(report.to_html())
        client.log_artifacts(run_id, str(folder), GATE_ARTIFACT_DIR)
    tags = report.version_tags()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    # The run carries the verdict and the measured values too, so the experiment's runs
    # table shows them next to the trial metrics.
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    values = [
        Metric(f"gate.{r.name}", float(r.value), stamp, 0)
        for r in report.results
        if math.isfinite(r.value)
    ]
    client.log_batch(run_id, metrics=values, tags=[])
    client.set_tag(run_id, TAG_GATES, tags[TAG_GATES])
    return tags


def gate_and_record(
    client: MlflowClient,
    name: str,
    version: str | int,
    run_id: str,
    model: Any,
    *,
    gates: GatesSpec,
    holdout: Holdout,
    task: TaskType,
    champion: Any | None = None,
    latency_calls: int = 200,
) -> GateReport:
    """Run the gates on one registered version and write the report back to the registry."""
    report = run_gates(
        gates, model, holdout, task=task, champion=champion, latency_calls=latency_calls
    )
    record_gate_report(client, name, version, run_id, report)
    if report.metric is not None and report.metric_value is not None:
        client.set_model_version_tag(
            name, str(version), TAG_HOLDOUT_PREFIX + report.metric, f"{report.metric_value:.6g}"
        )
    return report


def holdout_from(data: Any, gates: GatesSpec) -> Holdout:
    """Build the gates' hold-out from ``tasks.data.StudyData`` (sensitive attribute included)."""
    sensitive = None
    task = getattr(data, "task", "binary")
    if gates.fairness is not None and task != "binary":  # before anything is registered
        raise GateError(
            f"the fairness gate needs a binary task, the study's task is {task!r}: "
            "remove gates.fairness from the spec"
        )
    if gates.fairness is not None:
        attr = gates.fairness.sensitive_attribute
        frame = getattr(data, "test_frame", None)
        if frame is not None and attr in frame.columns:
            sensitive = frame[attr].reset_index(drop=True)
        elif attr in data.X_test.columns:
            sensitive = data.X_test[attr].reset_index(drop=True)
        else:
            raise GateError(
                f"gates.fairness.sensitive_attribute {attr!r} is not a column of the study's "
                "hold-out rows: name one of its columns, or remove gates.fairness"
            )
    raw = getattr(data, "test_frame", None)
    if raw is not None and len(raw) != len(data.X_test):
        raw = None
    return Holdout(data.X_test, np.asarray(data.y_test), sensitive, raw)


def recorded_verdict(
    tags: dict[str, str], metric: str | None
) -> tuple[bool | None, list[str], float | None]:
    """Read a version's earlier verdict: ``(passed, or None if never gated; failures; score)``."""
    verdict = tags.get(TAG_GATES)
    if verdict is None:
        return None, [], None
    failures = [f for f in (tags.get(TAG_GATE_FAILURES) or "").split(",") if f]
    raw = tags.get(TAG_HOLDOUT_PREFIX + metric) if metric else None
    return verdict == "passed", failures, None if raw is None else float(raw)


def report_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """Return ``{gate name: tag text}`` of a version's gate tags (for tables and events)."""
    return {
        key[len(TAG_GATE_PREFIX) :]: value
        for key, value in tags.items()
        if key.startswith(TAG_GATE_PREFIX)
    }


def _fmt(value: float | int | None) -> str:
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


__all__: Sequence[str] = [
    "GateError",
    "GateReport",
    "GateResult",
    "Holdout",
    "record_gate_report",
    "run_gates",
    "score_metric",
]
