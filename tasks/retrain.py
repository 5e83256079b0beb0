"""The retrain steps: which window, which serving arms, and the warm-started retrain study.

``flows/retrain.py`` chains them. A retrain starts from a feature update or the daily
schedule (then the drift check of ``tasks/drift_check.py`` decides), or from a signal
whose producer has judged already (``banditflow.drift.detected``, a degraded champion, a
rollback: :func:`plan_from_signal`). The window is the event's range, else the last
``drift.recent_days`` before the newest labelled row, narrowed to the change
(``tasks/retrain_window.py``). The retrain study learns from that window on every serving
arm's features, searches the model family cross-validation picks on it
(``tasks/retrain_family.py``: the champion's, or one that learns better from few rows),
and starts from the best screened points; the flow optimizes it and registers its candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contract import (
    CHAMPION,
    TAG_STUDY,
    aliases_of,
    challenger_number,
    feature_view_of,
    is_challenger_alias,
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
    # no-champion | no-recent-data | not-drifted | waiting-for-labels | already-retrained |
    # handled (a challenger of this change is being judged) | retrained
    status: str
    champion_version: str | None = None
    previous_study: str | None = None
    window: dict[str, str | None] = field(default_factory=dict)
    drifted_features: list[str] = field(default_factory=list)
    metric_degraded: bool = False
    new_study: str | None = None
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, str | None] = field(default_factory=dict)  # version -> alias
    detail: str = ""
    # Each serving version checked: alias, study, drifted features, the champion's metric.
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None  # the signal that started a retrain without a check
    family: str | None = None  # the model family the retrain study searched


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
    """Return ``spec`` with its data restricted to ``[start, end)`` (no prior rows and no
    served outcomes: a retrained champion's spec carries its own, a recent window is the
    labels', and a new retrain adds both again)."""
    update = {"start": start, "end": end, "history_days": None, "outcomes": None}
    data = spec.data.model_copy(update={**update, "served_only": False})
    return spec.model_copy(update={"data": data})


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
    registration = spec.registration.model_copy(
        update={"model_name": model, "supersede_challengers": True}
    )
    return spec.model_copy(
        update={"name": name, "warm_start": warm_start, "registration": registration}
    )


def frame_of(data: Any) -> tuple[pd.DataFrame, pd.Series]:
    """Return all rows (training + hold-out) of a ``StudyData`` as (X, y)."""
    X = pd.concat([data.X_train, data.X_test], ignore_index=True)
    y = pd.concat([data.y_train, data.y_test], ignore_index=True)
    return X, y


@task(name="load-recent-window", cache_policy=NO_CACHE)
def load_recent(spec: StudySpec, settings: PipelineSettings) -> Any:
    """Return the recent window's ``StudyData`` (features and labels)."""
    from tasks.data import load_study_data

    return load_study_data(spec, settings)


@dataclass
class Arm:
    """A serving version of the model (the champion or a challenger) and what made it."""

    alias: str
    version: str
    study: str
    spec: StudySpec
    previous: Any  # the StudyResult of the study that made it


@dataclass
class RetrainPlan:
    """A model's check: the outcome so far and, when drifted, the retrain study to run."""

    outcome: RetrainOutcome
    spec: StudySpec | None = None  # the retrain study; None: nothing to retrain
    data: Any = None  # the recent window's StudyData the candidates are registered on


def serving_arms(client: MlflowClient, model: str, settings: PipelineSettings) -> list[Arm]:
    """Return the model's serving versions, champion first; raise when the model is unknown.

    A challenger without a study tag (added by hand) is skipped: its training data is
    unknown. A champion without one is an error: the retrain would not know what to redo.
    """
    from mlflow.exceptions import MlflowException

    from tasks.register import load_study_spec
    from tasks.study import load_study_result

    try:
        aliases = aliases_of(client, model)
    except MlflowException as exc:
        raise RetrainError(
            f"no registered model {model!r} at {settings.registry_uri}: run optimize and "
            "register first, or leave `model` empty to check every model with a champion"
        ) from exc
    serving = sorted(
        (a for a in aliases if a == CHAMPION or is_challenger_alias(a)),
        key=lambda a: (a != CHAMPION, challenger_number(a) or 0),
    )
    arms: list[Arm] = []
    specs: dict[str, tuple[StudySpec, Any]] = {}
    for alias in serving:
        version = aliases[alias]
        study = (client.get_model_version(model, version).tags or {}).get(TAG_STUDY)
        if not study:
            if alias == CHAMPION:
                raise RetrainError(
                    f"champion {model} v{version} has no {TAG_STUDY!r} tag: register it "
                    "through the optimize flow so the retrain knows which study (data "
                    "window, search) made it"
                )
            run_logger().info("%s v%s (%s) has no study tag: not checked", model, version, alias)
            continue
        if study not in specs:
            previous = load_study_result(study, settings)
            specs[study] = (load_study_spec(previous.parent_run_id, settings), previous)
        spec, previous = specs[study]
        arms.append(Arm(alias, version, study, spec, previous))
    return arms


def recent_for(
    spec: StudySpec, outcome: RetrainOutcome, settings: PipelineSettings, cache: dict[str, Any]
) -> Any:
    """Return the recent window's ``StudyData`` for a spec (or the error), loaded once."""
    lo, hi = (datetime.fromisoformat(str(outcome.window[k])) for k in ("start", "end"))
    windowed_spec = windowed(spec, lo, hi)
    key = windowed_spec.data.model_dump_json()
    if key not in cache:
        try:
            cache[key] = load_recent(windowed_spec, settings)
        except ValueError as exc:  # DataError: no or too few labelled rows in the window
            cache[key] = exc
    return cache[key]


def study_exists(name: str, settings: PipelineSettings) -> bool:
    """Return whether a study of this name has started (its MLflow experiment exists)."""
    from tasks.tracking import configure_mlflow

    return configure_mlflow(settings).get_experiment_by_name(name) is not None


def plan_retrain(
    outcome: RetrainOutcome,
    champ: Arm,
    recent: Any,
    settings: PipelineSettings,
    top: int,
    *,
    decide_only: bool = False,
) -> RetrainPlan:
    """Plan the retrain study of the window, warm-started from the champion's study's best.

    A study is named after the model and the window's end, so a second signal for the
    same window (a feature update and its drift event, say) finds it and starts nothing.
    ``decide_only``: stop once a retrain is due (status ``drift-detected``, the study's
    name and window in the plan) before the outcome join, the family screen and the
    prior, which the event's consumer repeats: the check that only emits the drift event
    paid for them too (a third to a half of its run in the demo).
    """
    from tasks.retrain_family import top_points
    from tasks.retrain_learn import learn_with
    from tasks.retrain_window import plan_training, served_only

    lo, hi = (datetime.fromisoformat(str(outcome.window[k])) for k in ("start", "end"))
    # What it learns from: the labels since the change (waiting for them), every arm's features.
    training = plan_training(outcome, champ, recent, settings, lo, hi)
    if (early := _not_yet(outcome, training, lo, settings)) is not None:
        return early
    lo, recent = training.start, training.data
    previous = champ.previous
    trials = list(previous.top) or [t for t in [previous.best, *previous.pareto] if t]
    warm = top_points(trials, champ.spec, top)
    new_spec = retrain_spec(champ.spec, outcome.model, lo, hi, warm)
    data = new_spec.data.model_copy(update={"drop_columns": training.drop_columns})
    new_spec = new_spec.model_copy(update={"data": data})
    if training.served_only:  # no label of the change yet: the served outcomes alone
        new_spec = served_only(new_spec, settings)
    outcome.new_study, outcome.detail = new_spec.name, training.detail
    if study_exists(new_spec.name, settings):
        outcome.status = "already-retrained"
        outcome.detail = f"study {new_spec.name} already covers this window"
        return RetrainPlan(outcome)
    if decide_only:
        outcome.status = "drift-detected"
        return RetrainPlan(outcome, new_spec, recent)
    if new_spec.data.drop_columns != (champ.spec.data.drop_columns or []):  # all arms
        recent = load_recent(new_spec, settings)
    learned = learn_with(new_spec, recent, warm, settings)  # outcomes, family, prior
    new_spec, recent, warm = learned.spec, learned.data, learned.warm_start
    outcome.family, outcome.detail = learned.family, outcome.detail + learned.detail
    run_logger().info(
        "%s: retraining as study %s warm-started from %d points (%s)",
        outcome.model,
        new_spec.name,
        len(warm),
        ", ".join(outcome.drifted_features) or outcome.reason or "metric",
    )
    outcome.status, outcome.warm_start = "retrained", warm
    return RetrainPlan(outcome, new_spec, recent)


def _not_yet(
    outcome: RetrainOutcome, training: Any, lo: datetime, settings: PipelineSettings
) -> RetrainPlan | None:
    """Return why no retrain starts now (labels to wait for, a change being judged), or None."""
    from tasks.retrain_window import alarm_ahead_of_labels, challenger_since
    from tasks.tracking import configure_mlflow

    if training.waiting:
        outcome.status, outcome.detail = "waiting-for-labels", training.detail
        return RetrainPlan(outcome)
    if training.start > lo and (
        judged := challenger_since(
            serving_arms(configure_mlflow(settings), outcome.model, settings), training.start
        )
    ):
        outcome.status = "handled"
        outcome.detail = (
            f"{training.detail}; challenger v{judged.version} ({judged.alias}, study "
            f"{judged.study}) learnt from the change on and the rollout is judging it"
        )
        return RetrainPlan(outcome)
    if training.start <= lo and alarm_ahead_of_labels(outcome.reason, outcome.metric_degraded):
        outcome.status = "waiting-for-labels"
        outcome.detail = (
            f"{training.detail}; the live reward fell ({outcome.reason}) but the labelled "
            "rows show no change yet (no drifted day, the champion's metric held): they "
            "predate it, and a retrain on them would learn the old world again; the daily "
            "check retrains once labels from after the change arrive"
        )
        return RetrainPlan(outcome)
    return None


def plan_from_signal(
    model: str,
    start: datetime | None,
    end: datetime | None,
    *,
    settings: PipelineSettings,
    warm_start_top: int,
    reason: str,
    drifted_features: list[str] | None = None,
) -> RetrainPlan:
    """Plan the retrain a signal asks for (drift detected, performance degraded, rollback).

    The signal's producer has judged already: no drift check runs again.
    """
    from contract import EVENT_PERFORMANCE_DEGRADED
    from tasks.tracking import configure_mlflow

    arms = serving_arms(configure_mlflow(settings), model, settings)
    if not arms or arms[0].alias != CHAMPION:
        detail = "no champion alias: run optimize first"
        return RetrainPlan(RetrainOutcome(model, "no-champion", detail=detail))
    champ = arms[0]
    lo, hi = resolve_window(start, end, champ.spec, settings)
    window: dict[str, str | None] = {"start": lo.isoformat(), "end": hi.isoformat()}
    outcome = RetrainOutcome(model, "retrained", champ.version, champ.study, window)
    outcome.reason, outcome.drifted_features = reason, list(drifted_features or [])
    recent = recent_for(champ.spec, outcome, settings, {})
    if isinstance(recent, Exception):
        outcome.status, outcome.detail = "no-recent-data", str(recent)
        return RetrainPlan(outcome)
    if reason == EVENT_PERFORMANCE_DEGRADED:  # do the labels show what the alarm saw?
        from tasks.drift_check import champion_degraded

        client = configure_mlflow(settings)
        outcome.metric_degraded = champion_degraded(client, model, champ, recent)
    return plan_retrain(outcome, champ, recent, settings, warm_start_top)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (tests of the plain function)
        return logging.getLogger(__name__)
