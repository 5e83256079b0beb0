"""The drift check of a feature update: the recent window against EVERY serving arm's data.

Each serving version of a model (the champion and its challengers) was trained on its own
study's window; the recent window is compared with each one's training data (kept beside
the version, ``tasks/drift.py``), and the champion is also judged on recent labels (its
metric against its hold-out value, and its calibration). Drifted when any arm's features
drifted or the champion degraded: ``banditflow.drift.detected`` is emitted with the
drifted features of each arm, and the warm-started retrain study is planned
(``tasks/retrain.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from contract import CHAMPION, TAG_HOLDOUT_PREFIX, TAG_METRIC_PREFIX
from tasks.drift import (
    DriftError,
    DriftReport,
    MetricDrift,
    calibration_gap,
    detect_drift,
    emit_drift_detected,
    keep_reference,
    recent_metric_check,
    reference_path,
)
from tasks.drift_report import record_report
from tasks.retrain import (
    Arm,
    RetrainOutcome,
    RetrainPlan,
    frame_of,
    plan_from_signal,
    plan_retrain,
    recent_for,
    resolve_window,
    run_logger,
    serving_arms,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec

if TYPE_CHECKING:
    from mlflow import MlflowClient


# --- tasks -------------------------------------------------------------------------------
@task(name="load-reference-window", cache_policy=NO_CACHE)
def load_reference(
    model: str, version: str, spec: StudySpec, settings: PipelineSettings
) -> pd.DataFrame:
    """Return the champion's reference sample; derive and keep it on first use."""
    path = reference_path(settings, model, version)
    if path.exists():
        return pd.read_parquet(path)
    from tasks.data import labels_only, load_study_data

    X, _ = frame_of(load_study_data(labels_only(spec), settings))
    keep_reference(X, settings, model, version, max_rows=spec.drift.max_reference_rows)
    return pd.read_parquet(path)


@task(name="champion-metric-on-recent-rows", cache_policy=NO_CACHE)
def champion_metric(
    client: MlflowClient,
    model: str,
    version: str,
    spec: StudySpec,
    X: pd.DataFrame,
    y: pd.Series,
) -> MetricDrift | None:
    """Judge the champion on recent labelled rows: its metric and (binary) its calibration."""
    from tasks.metrics import predictions, score
    from tasks.registry import load_version_model

    metric, direction = spec.primary_objective
    if metric in {"latency_ms", "model_bytes"} or y.empty:
        return None
    tags = client.get_model_version(model, version).tags or {}
    recorded = tags.get(f"{TAG_HOLDOUT_PREFIX}{metric}") or tags.get(f"{TAG_METRIC_PREFIX}{metric}")
    if recorded is None:
        return None
    champion = load_version_model(model, version)
    out = predictions(champion, X, spec.task)
    classes = None if spec.task == "regression" else np.asarray(champion.classes_)
    recent = score(metric, y.to_numpy(), out, classes=classes, task=spec.task)
    calibration = None
    if spec.task == "binary" and classes is not None:
        positive = (y.to_numpy() == classes[1]).astype(float)
        calibration = calibration_gap(positive, out[:, 1])
    return recent_metric_check(
        metric, direction, float(recorded), recent, spec.drift, calibration=calibration
    )


def champion_degraded(client: MlflowClient, model: str, champ: Arm, recent: Any) -> bool:
    """Whether the champion's metric fell on ``recent``'s labelled rows (what it registered)."""
    X, y = frame_of(recent)
    held = champion_metric(client, model, champ.version, champ.spec, X, y)
    return bool(held and held.degraded)


def check_model(
    model: str,
    start: datetime | None,
    end: datetime | None,
    *,
    settings: PipelineSettings,
    warm_start_top: int,
    emit: bool = True,
    decide_only: bool = False,
) -> RetrainPlan:
    """Check the recent window against every serving arm's training data; plan a retrain.

    Drifted when any arm's features drifted or the champion degraded on recent labels.
    Then ``banditflow.drift.detected`` is emitted (``emit``) with the drifted features of
    each arm, and the plan carries the warm-started retrain study of that window (only
    its name and window with ``decide_only``: see ``plan_retrain``).
    """
    from tasks.tracking import configure_mlflow

    client = configure_mlflow(settings)
    arms = serving_arms(client, model, settings)
    if not arms or arms[0].alias != CHAMPION:
        detail = "no champion alias: run optimize first"
        return RetrainPlan(RetrainOutcome(model, "no-champion", detail=detail))
    champ = arms[0]
    lo, hi = resolve_window(start, end, champ.spec, settings)
    window: dict[str, str | None] = {"start": lo.isoformat(), "end": hi.isoformat()}
    outcome = RetrainOutcome(model, "not-drifted", champ.version, champ.study, window)
    cache: dict[str, Any] = {}
    reports = [
        (arm, _check_arm(client, arm, arm is champ, outcome, settings, cache)) for arm in arms
    ]
    checked = [(arm, report) for arm, report in reports if report is not None]
    if not checked or checked[0][0] is not champ:
        outcome.status = "no-recent-data"
        return RetrainPlan(outcome)
    return _decide(outcome, checked, cache, settings, (warm_start_top, emit, decide_only))


def _check_arm(
    client: MlflowClient,
    arm: Arm,
    is_champion: bool,
    outcome: RetrainOutcome,
    settings: PipelineSettings,
    cache: dict[str, Any],
) -> DriftReport | None:
    """Compare the recent window with one arm's training data; record and return the report."""
    model, log = outcome.model, run_logger()
    recent = recent_for(arm.spec, outcome, settings, cache)
    if isinstance(recent, Exception):
        outcome.detail = str(recent)
        log.info("%s v%s: no recent data to check (%s)", model, arm.version, recent)
        return None
    reference = cast(pd.DataFrame, load_reference(model, arm.version, arm.spec, settings))
    X, y = frame_of(recent)
    features = [c for c in reference.columns if c in X.columns]
    metric = champion_metric(client, model, arm.version, arm.spec, X, y) if is_champion else None
    try:
        report = detect_drift(
            reference[features], X[features], arm.spec.drift, metric=metric, window=outcome.window
        )
    except DriftError as exc:
        outcome.detail = str(exc)
        log.info("%s v%s: %s", model, arm.version, exc)
        return None
    record_report(
        report,
        reference[features],
        X[features],
        study=model,
        model_version=arm.version,
        settings=settings,
    )
    outcome.arms[arm.version] = {
        "alias": arm.alias,
        "study": arm.study,
        "drifted_features": report.drifted_features,
        "metric_degraded": bool(report.metric and report.metric.degraded),
        "metric_reason": report.metric.reason if report.metric else "",
    }
    return report


def _decide(
    outcome: RetrainOutcome,
    checked: list[tuple[Arm, DriftReport]],
    cache: dict[str, Any],
    settings: PipelineSettings,
    how: tuple[int, bool, bool],
) -> RetrainPlan:
    """Drifted when any arm drifted or the champion degraded: emit the event, plan the study.

    ``how``: (warm-start points, emit the event, decide only).
    """
    warm_start_top, emit, decide_only = how
    champ, champ_report = checked[0]
    _view_drift(outcome, [arm for arm, _ in checked], settings)
    outcome.drifted_features = sorted(
        {f for i in outcome.arms.values() for f in i.get("drifted_features", [])}
    )
    outcome.metric_degraded = bool(champ_report.metric and champ_report.metric.degraded)
    if not outcome.drifted_features and not outcome.metric_degraded:
        outcome.detail = (
            "no feature of any serving arm drifted and the champion held on recent labels "
            "(metric and calibration): nothing to do"
        )
        run_logger().info("%s: no drift in %s; stopping", outcome.model, outcome.window)
        return RetrainPlan(outcome)
    summary = DriftReport(
        features=[f for _, r in checked for f in r.features if f.drifted],
        n_reference=champ_report.n_reference,
        n_current=champ_report.n_current,
        metric=champ_report.metric,
        window=outcome.window,
    )
    recent = recent_for(champ.spec, outcome, settings, cache)
    plan = plan_retrain(outcome, champ, recent, settings, warm_start_top, decide_only=decide_only)
    # A study of this window exists: the drift was signalled (and is being handled) before,
    # so a second check (the event's own consumer, say) emits nothing and starts nothing.
    if emit and plan.spec is not None:
        emit_drift_detected(summary, model=outcome.model, version=champ.version, arms=outcome.arms)
    return plan


def _view_drift(outcome: RetrainOutcome, arms: list[Arm], settings: PipelineSettings) -> None:
    """Add a feature view's change since the window's start to the drifted features of each
    serving arm that learnt before it (``tasks/view_change.py``): the view's snapshots show
    a change a day before any label of it exists."""
    from tasks.retrain_window import learnt_before, shared_drop_columns, stale_view

    lo, hi = (datetime.fromisoformat(str(outcome.window[k])) for k in ("start", "end"))
    drop = shared_drop_columns([arm.spec for arm in arms])
    view = stale_view(arms, arms[0].spec, settings, hi, drop)
    if view.start is None or view.start <= lo:
        return
    for arm in arms:
        info = outcome.arms.get(arm.version)
        if info is not None and learnt_before(arm.spec, view.start):
            info["drifted_features"] = sorted({*info["drifted_features"], *view.features})
            info["view_change"] = view.detail


def plan_model(
    model: str,
    start: datetime | None,
    end: datetime | None,
    *,
    settings: PipelineSettings,
    warm_start_top: int,
    reason: str | None = None,
    drifted_features: list[str] | None = None,
    retrain_on_drift: bool = True,
) -> RetrainPlan:
    """Plan one model's retrain: from a signal (``reason``: no check), else from the check.

    ``retrain_on_drift=False``: check and emit the drift event only, and leave the
    retrain to the event's consumer (status ``drift-detected``).
    """
    if reason:
        return plan_from_signal(
            model,
            start,
            end,
            settings=settings,
            warm_start_top=warm_start_top,
            reason=reason,
            drifted_features=drifted_features,
        )
    plan = check_model(
        model,
        start,
        end,
        settings=settings,
        warm_start_top=warm_start_top,
        decide_only=not retrain_on_drift,
    )
    if plan.spec is not None and not retrain_on_drift:
        plan.outcome.status, plan.spec = "drift-detected", None
    return plan
