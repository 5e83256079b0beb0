"""The shipped gates, each a registration: performance, fairness (two checks), latency, size.

- ``performance`` -- the serving flavour's hold-out metric is not shown worse than the
  champion's on the same rows by more than ``max_regression``: it fails when the paired
  bootstrap interval of the difference lies wholly beyond the margin (no champion: the
  absolute ``floor``);
- ``fairness.demographic_parity`` and ``fairness.equalized_odds`` -- fairlearn's differences
  across the groups of the sensitive attribute (plus a per-group report); a candidate fails
  when the gap its hold-out *shows* (simultaneous per-group intervals) exceeds the limit.
  ``tasks/gate_stats.py`` says why a point estimate is not enough on few rows;
- ``latency`` -- the serving flavour's single-row p95 CPU milliseconds, under a budget;
- ``size`` -- the bytes of the artifact that serves (ONNX file or pickled pipeline).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tasks.gate_report import fmt
from tasks.gate_stats import (
    CONFIDENCE,
    Interval,
    mean_difference_interval,
    paired_difference_interval,
    parity_gap_bounds,
)
from tasks.gates import (
    Gate,
    GateCandidate,
    GateError,
    GateResult,
    Holdout,
    register_gate,
)
from tasks.metrics import better, direction_of, row_terms, score, sign
from tasks.spec import TaskType

PERFORMANCE = "performance"
DEMOGRAPHIC_PARITY = "fairness.demographic_parity"
EQUALIZED_ODDS = "fairness.equalized_odds"
LATENCY = "latency"
SIZE = "size"


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
        note = f"{metric}; champion {fmt(champion_value)} on the same rows, margin {max_regression}"
    elif floor is not None:
        threshold, note = floor, f"{metric}; no champion: absolute bound"
    else:
        return GateResult(PERFORMANCE, True, value, math.nan, comparison, "no champion, no floor")
    # NaN on either side fails: a score that cannot be computed proves nothing.
    passed = not math.isnan(threshold) and (
        value == threshold or better(value, threshold, direction)
    )
    return GateResult(PERFORMANCE, passed, value, threshold, comparison, note)


@register_gate
class PerformanceGate(Gate):
    name = PERFORMANCE
    spec_key = "performance"

    def validate(self, task: TaskType) -> None:
        direction_of(self.config.metric, task)  # raises with the task's metrics listed

    def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
        perf = self.config
        value = candidate.score(perf.metric)
        champion_value, unscored = None, ""
        if champion is not None and champion.X is None:
            unscored = "; the champion needs columns these rows lack, so the floor applies"
            champion = None
        elif champion is not None:
            champion_value = champion.score(perf.metric)
        direction = direction_of(perf.metric, candidate.task)
        result = performance_gate(
            metric=perf.metric,
            direction=direction,
            value=value,
            champion_value=champion_value,
            max_regression=perf.max_regression,
            floor=perf.floor,
        )
        passed, judged = result.passed, ""
        if champion is not None:
            worse = regression_interval(candidate, champion, perf.metric, direction)
            passed, judged = judge_regression(result.passed, worse, perf.max_regression)
        note = f"{result.note}{judged}{unscored}; scored as served ({candidate.flavour})"
        return GateResult(
            result.name, passed, result.value, result.threshold, result.comparison, note
        )


def regression_interval(
    candidate: GateCandidate, champion: GateCandidate, metric: str, direction: str
) -> Interval:
    """Return how much worse the candidate scores than the champion (paired bootstrap).

    Positive is worse, whatever the metric's direction; both are scored as they serve on
    the same resampled hold-out rows.
    """
    y = np.asarray(candidate.holdout.y)
    ours, theirs = candidate.outputs(), champion.outputs()
    factor = sign(direction)
    a = row_terms(metric, y, ours, classes=candidate.classes)
    b = row_terms(metric, y, theirs, classes=champion.classes)
    if a is not None and b is not None:  # a mean over rows: resample the rows' terms
        return mean_difference_interval(factor * (a - b))

    def worse_by(rows: np.ndarray) -> float:
        a = score(metric, y[rows], ours[rows], classes=candidate.classes, task=candidate.task)
        b = score(metric, y[rows], theirs[rows], classes=champion.classes, task=champion.task)
        return factor * (a - b)

    return paired_difference_interval(worse_by, len(y))


def judge_regression(point_passed: bool, worse: Interval, margin: float) -> tuple[bool, str]:
    """Return (passed, note): fail only when the whole interval is beyond ``margin``.

    An interval that cannot be computed (the metric undefined on a resample) leaves the
    point verdict.
    """
    if math.isnan(worse.low):
        return point_passed, "; bootstrap undefined on these rows: point verdict"
    shown = worse.low > margin
    verdict = "shown worse" if shown else "not shown worse"
    return not shown, f"; worse by {worse.text()}: {verdict} than the margin"


def _fairness_task_error(task: TaskType) -> GateError:
    return GateError(
        f"the fairness gate needs a binary task (demographic parity of a positive class), "
        f"got task {task!r}: remove gates.fairness from the spec"
    )


def fairness_gates(
    model: Any,
    holdout: Holdout,
    *,
    max_demographic_parity_difference: float,
    max_equalized_odds_difference: float,
    task: TaskType,
    decision_threshold: float = 0.5,
    proba: np.ndarray | None = None,
) -> tuple[list[GateResult], dict[str, dict[str, float]]]:
    """Return the two fairness checks (fairlearn) and the per-group report (MetricFrame).

    The model's decision is P(positive) >= ``decision_threshold``: the cut the application
    acts on, which is what treats groups alike or not. ``proba``: the serving flavour's
    probabilities on the hold-out (default: the sklearn model's).
    """
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    if task != "binary":
        raise _fairness_task_error(task)
    if holdout.sensitive is None:
        raise GateError("the fairness gate needs the sensitive attribute's hold-out values")
    classes = np.asarray(model.classes_)
    y_true = (np.asarray(holdout.y) == classes[1]).astype(int)
    scores = np.asarray(model.predict_proba(holdout.X)) if proba is None else proba
    y_pred = (scores[:, 1] >= decision_threshold).astype(int)
    sensitive = holdout.sensitive.astype(str).to_numpy()
    dpd = float(demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive))
    eod = float(equalized_odds_difference(y_true, y_pred, sensitive_features=sensitive))
    shown = parity_gap_bounds(y_true, y_pred, sensitive, confidence=CONFIDENCE)
    attr = holdout.sensitive.name or "sensitive attribute"
    groups = _by_group(y_true, y_pred, sensitive)
    note = f"across {attr}, acting at P >= {decision_threshold:g}"
    checks = [
        (DEMOGRAPHIC_PARITY, dpd, shown["demographic_parity"], max_demographic_parity_difference),
        (EQUALIZED_ODDS, eod, shown["equalized_odds"], max_equalized_odds_difference),
    ]
    results = [
        GateResult(
            name,
            at_least <= limit,
            point,
            limit,
            "<=",
            f"{note}; the rows show a gap of at least {at_least:.3g} "
            f"({CONFIDENCE:.0%} simultaneous intervals per group): fails above the limit",
            groups,
        )
        for name, point, at_least, limit in checks
    ]
    return results, groups


def _by_group(
    y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray
) -> dict[str, dict[str, float]]:
    """Return fairlearn's per-group table: count, accuracy, selection and error rates."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

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
    return {
        str(group): {str(k): float(v) for k, v in row.items()}
        for group, row in frame.by_group.iterrows()
    }


class _FairnessGate(Gate):
    spec_key = "fairness"

    def validate(self, task: TaskType) -> None:
        if task != "binary":
            raise _fairness_task_error(task)

    def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
        cfg = self.config

        def both() -> list[GateResult]:
            results, _ = fairness_gates(
                candidate.model,
                candidate.holdout,
                max_demographic_parity_difference=cfg.max_demographic_parity_difference,
                max_equalized_odds_difference=cfg.max_equalized_odds_difference,
                task=candidate.task,
                decision_threshold=cfg.decision_threshold,
                proba=candidate.outputs(),
            )
            return results

        results: list[GateResult] = candidate.cached("fairness", both)
        return next(r for r in results if r.name == self.name)


@register_gate
class DemographicParityGate(_FairnessGate):
    name = DEMOGRAPHIC_PARITY


@register_gate
class EqualizedOddsGate(_FairnessGate):
    name = EQUALIZED_ODDS


@register_gate
class LatencyGate(Gate):
    name = LATENCY
    spec_key = "latency_p95_ms"

    def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
        budget = float(self.config)
        p95 = candidate.latency_ms()
        note = f"ms, p95 CPU time per single-row call, {candidate.flavour} as served"
        return GateResult(LATENCY, p95 <= budget, p95, budget, "<=", note)


@register_gate
class SizeGate(Gate):
    name = SIZE
    spec_key = "max_model_bytes"

    def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
        budget = int(self.config)
        size = candidate.size_bytes()
        note = f"bytes of the {candidate.flavour} artifact that serves"
        return GateResult(SIZE, size <= budget, size, budget, "<=", note)
