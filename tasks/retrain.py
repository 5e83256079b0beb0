"""The retrain steps: which window, drift of the recent window, the warm-started retrain study.

``flows/retrain.py`` chains them. A retrain is started by ``banditflow.features.updated`` (a
deployment trigger passes the feature view and the new data's time range) or by the daily
schedule (no range: the last ``drift.recent_days`` before the newest labelled row). For
each registered model holding a ``champion`` alias (or the one named), :func:`check_model`
compares the recent window with the champion's training data (kept beside the champion,
see ``tasks/drift.py``) and, when labels are there, the champion's metric on recent rows
with its hold-out value. Not drifted: the report is recorded and nothing else happens.
Drifted: it returns the retrain study's spec (the recent window, first trials the previous
study's best points), which the flow optimizes and registers under the model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contract import (
    CHAMPION,
    TAG_HOLDOUT_PREFIX,
    TAG_METRIC_PREFIX,
    TAG_STUDY,
    feature_view_of,
)
from tasks.drift import (
    DriftError,
    DriftReport,
    MetricDrift,
    check_drift_task,
    keep_reference,
    metric_drift,
    reference_path,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec

if TYPE_CHECKING:
    from mlflow import MlflowClient


class RetrainError(RuntimeError):
    """The retrain flow cannot go on; the message says what to fix."""


@dataclass
class RetrainOutcome:
    """What the retrain flow did for one model."""

    model: str
    status: str  # no-champion | no-recent-data | not-drifted | retrained
    champion_version: str | None = None
    previous_study: str | None = None
    window: dict[str, str | None] = field(default_factory=dict)
    drifted_features: list[str] = field(default_factory=list)
    metric_degraded: bool = False
    new_study: str | None = None
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, str | None] = field(default_factory=dict)  # version -> alias
    detail: str = ""


# --- plain functions (testable without a flow run) --------------------------------------
def feature_view_name(value: str | None) -> str | None:
    """Return the view name from a trigger's ``{{ event.resource.id }}`` or a plain name."""
    if not value:
        return None
    return feature_view_of(value)


def models_with_champion(client: MlflowClient) -> list[str]:
    """Return the registered models that have a champion (what a bare retrain checks)."""
    return sorted(
        m.name for m in client.search_registered_models() if CHAMPION in (m.aliases or {})
    )


def _labels_path(spec: StudySpec, settings: PipelineSettings) -> Path:
    if spec.data.source == "file":
        return Path(spec.data.path or "")
    return Path(spec.data.labels) if spec.data.labels else settings.data_dir / "sessions.parquet"


def latest_label_time(spec: StudySpec, settings: PipelineSettings) -> datetime | None:
    """Return the newest labelled row's time (reads only the timestamp column)."""
    path = _labels_path(spec, settings)
    column = spec.data.timestamp_column or "event_timestamp"
    if not path.exists():
        return None
    if path.suffix.lower() == ".csv":
        stamps = pd.read_csv(path, usecols=[column])[column]
    else:
        stamps = pd.read_parquet(path, columns=[column])[column]
    if stamps.empty:
        return None
    return pd.to_datetime(stamps, utc=True).max().to_pydatetime()


def resolve_window(
    start: datetime | None,
    end: datetime | None,
    spec: StudySpec,
    settings: PipelineSettings,
) -> tuple[datetime, datetime]:
    """Return the recent window: the event's range, else the last ``recent_days`` of labels.

    A feature update may cover a single day (a push); the window is widened back to
    ``drift.recent_days`` so the drift tests have enough rows.
    """
    days = timedelta(days=spec.drift.recent_days)
    if end is None:
        latest = latest_label_time(spec, settings)
        # Exclusive end: one second after the newest row keeps that row in the window.
        end = (latest + timedelta(seconds=1)) if latest else datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    if start is None or end - start < days:
        start = end - days
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    return start, end


def windowed(spec: StudySpec, start: datetime | None, end: datetime | None) -> StudySpec:
    """Return ``spec`` with its data restricted to ``[start, end)``."""
    data = spec.data.model_copy(update={"start": start, "end": end})
    return spec.model_copy(update={"data": data})


def top_points(trials: list[Any], spec: StudySpec, k: int) -> list[dict[str, Any]]:
    """Return the params of the ``k`` best completed trials, best first, without duplicates."""
    if k <= 0:
        return []
    metric, direction = spec.primary_objective
    sign = -1.0 if direction == "maximize" else 1.0
    scored = []
    for t in trials:
        status = getattr(t, "status", "completed")
        value = (getattr(t, "values", None) or {}).get(metric)
        if status != "completed" or value is None or not math.isfinite(float(value)):
            continue
        scored.append((sign * float(value), dict(t.params)))
    scored.sort(key=lambda pair: pair[0])
    out: list[dict[str, Any]] = []
    for _, params in scored:
        if params not in out:
            out.append(params)
        if len(out) == k:
            break
    return out


def retrain_spec(
    previous: StudySpec,
    model: str,
    start: datetime,
    end: datetime,
    warm_start: list[dict[str, Any]],
) -> StudySpec:
    """Return the retrain study: same model family and search, the recent window, a new name.

    A study is keyed by its spec's name (optimizer state, MLflow experiment), so each
    retrain is its own study named after the model and the window's end; its candidates
    are registered under ``model`` all the same.
    """
    name = f"{model}--retrain-{end.strftime('%Y%m%dT%H%M%S')}"
    spec = windowed(previous, start, end)
    registration = spec.registration.model_copy(update={"model_name": model})
    return spec.model_copy(
        update={"name": name, "warm_start": warm_start, "registration": registration}
    )


def frame_of(data: Any) -> tuple[pd.DataFrame, pd.Series]:
    """Return all rows (training + hold-out) of a ``StudyData`` as (X, y)."""
    X = pd.concat([data.X_train, data.X_test], ignore_index=True)
    y = pd.concat([data.y_train, data.y_test], ignore_index=True)
    return X, y


# --- tasks -------------------------------------------------------------------------------
@task(name="load-reference-window", cache_policy=NO_CACHE)
def load_reference(
    model: str, version: str, spec: StudySpec, settings: PipelineSettings
) -> pd.DataFrame:
    """Return the champion's reference sample; derive and keep it on first use."""
    path = reference_path(settings, model, version)
    if path.exists():
        return pd.read_parquet(path)
    from tasks.data import load_study_data

    X, _ = frame_of(load_study_data(spec, settings))
    keep_reference(X, settings, model, version, max_rows=spec.drift.max_reference_rows)
    return pd.read_parquet(path)


@task(name="load-recent-window", cache_policy=NO_CACHE)
def load_recent(spec: StudySpec, settings: PipelineSettings) -> Any:
    """Return the recent window's ``StudyData`` (features and labels)."""
    from tasks.data import load_study_data

    return load_study_data(spec, settings)


@task(name="champion-metric-on-recent-rows", cache_policy=NO_CACHE)
def champion_metric(
    client: MlflowClient,
    model: str,
    version: str,
    spec: StudySpec,
    X: pd.DataFrame,
    y: pd.Series,
) -> MetricDrift | None:
    """Score the champion on recent labelled rows against its recorded hold-out value."""
    from tasks.gates import score_metric
    from tasks.registry import load_version_model

    metric, direction = spec.primary_objective
    if metric in {"latency_ms", "model_bytes"} or y.empty:
        return None
    tags = client.get_model_version(model, version).tags or {}
    recorded = tags.get(f"{TAG_HOLDOUT_PREFIX}{metric}") or tags.get(f"{TAG_METRIC_PREFIX}{metric}")
    if recorded is None:
        return None
    champion = load_version_model(model, version)
    recent = score_metric(metric, champion, X, y.to_numpy(), spec.task)
    return metric_drift(metric, direction, float(recorded), recent, spec.drift.metric_margin)


@dataclass
class RetrainPlan:
    """A model's check: the outcome so far and, when drifted, the retrain study to run."""

    outcome: RetrainOutcome
    spec: StudySpec | None = None  # the retrain study; None: nothing to retrain
    data: Any = None  # the recent window's StudyData the candidates are registered on


def _champion_study(
    client: MlflowClient, model: str, settings: PipelineSettings
) -> tuple[str | None, str | None]:
    """Return ``(champion version, its study)``; raise when the model is unknown."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = dict(client.get_registered_model(model).aliases or {})
    except MlflowException as exc:
        raise RetrainError(
            f"no registered model {model!r} at {settings.registry_uri}: run optimize and "
            "register first, or leave `model` empty to check every model with a champion"
        ) from exc
    version = aliases.get(CHAMPION)
    if version is None:
        return None, None
    tags = client.get_model_version(model, str(version)).tags or {}
    study = tags.get(TAG_STUDY)
    if not study:
        raise RetrainError(
            f"champion {model} v{version} has no {TAG_STUDY!r} tag: register it through the "
            "optimize flow so the retrain knows which study (data window, search) made it"
        )
    return str(version), study


def check_model(
    model: str,
    start: datetime | None,
    end: datetime | None,
    *,
    settings: PipelineSettings,
    warm_start_top: int,
) -> RetrainPlan:
    """Check one model's drift; when drifted, plan its warm-started retrain study."""
    from tasks.register import load_study_spec
    from tasks.study import load_study_result
    from tasks.tracking import configure_mlflow

    log = run_logger()
    client = configure_mlflow(settings)
    version, study = _champion_study(client, model, settings)
    if version is None or study is None:
        outcome = RetrainOutcome(
            model, "no-champion", detail="no champion alias: run optimize first"
        )
        return RetrainPlan(outcome)
    previous = load_study_result(study, settings)
    spec = load_study_spec(previous.parent_run_id, settings)
    lo, hi = resolve_window(start, end, spec, settings)
    window: dict[str, str | None] = {"start": lo.isoformat(), "end": hi.isoformat()}
    outcome = RetrainOutcome(model, "not-drifted", version, study, window)

    checked = _check_drift(client, outcome, spec, settings, lo, hi)
    if checked is None:
        return RetrainPlan(outcome)
    report, recent = checked
    outcome.drifted_features = report.drifted_features
    outcome.metric_degraded = bool(report.metric and report.metric.degraded)
    if not report.drifted:
        outcome.detail = "no feature drifted and the champion's metric held: nothing to do"
        log.info("%s v%s: no drift in %s..%s; stopping", model, version, lo, hi)
        return RetrainPlan(outcome)

    trials = list(previous.top) or [t for t in [previous.best, *previous.pareto] if t]
    warm = top_points(trials, spec, warm_start_top)
    new_spec = retrain_spec(spec, model, lo, hi, warm)
    log.info(
        "%s drifted (%s); retraining as study %s warm-started from %d points",
        model,
        ", ".join(report.drifted_features) or "metric",
        new_spec.name,
        len(warm),
    )
    outcome.status, outcome.new_study, outcome.warm_start = "retrained", new_spec.name, warm
    return RetrainPlan(outcome, new_spec, recent)


def _check_drift(
    client: MlflowClient,
    outcome: RetrainOutcome,
    spec: StudySpec,
    settings: PipelineSettings,
    lo: datetime,
    hi: datetime,
) -> tuple[DriftReport, Any] | None:
    """Run the champion's drift check on ``[lo, hi)``; None (and why, in ``outcome``) if none."""
    model, version = outcome.model, str(outcome.champion_version)
    log = run_logger()
    reference = cast(pd.DataFrame, load_reference(model, version, spec, settings))
    try:
        recent = load_recent(windowed(spec, lo, hi), settings)
    except ValueError as exc:  # DataError: no or too few labelled rows in the window
        outcome.status, outcome.detail = "no-recent-data", str(exc)
        log.info("%s: no recent data to check (%s)", model, exc)
        return None
    X, y = frame_of(recent)
    features = [c for c in reference.columns if c in X.columns]
    metric = champion_metric(client, model, version, spec, X, y)
    try:
        report = check_drift_task(
            reference[features],
            X[features],
            spec.drift,
            study=model,
            model_version=version,
            settings=settings,
            metric=metric,
            window=outcome.window,
        )
    except DriftError as exc:
        outcome.status, outcome.detail = "no-recent-data", str(exc)
        log.info("%s: %s", model, exc)
        return None
    return report, recent


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (tests of the plain function)
        return logging.getLogger(__name__)
