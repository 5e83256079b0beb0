"""What a retrain learns from: the labels since the change, and every feature an arm uses.

Two findings on the demo's generator (benchmarks/closed_loop.py, issue 11's review):

- The drift check widens a one-day feature update to ``drift.recent_days`` so its tests
  have rows; a retrain on that whole window learns mostly from the world before the
  change (labels also arrive later than features: on the day the drift is seen, the
  window may hold no post-change label at all). A model fitted on pre-change rows earns
  less than nothing after a strong drift. So the training window starts at the change:
  the first day of the trailing run of days whose drifted features moved away from the
  drifted arm's training data, and the retrain waits until enough labels since then exist.
- The retrain copied the champion's spec, so a profile-only champion's retrain dropped
  every activity feature again and could not see the drift it was meant to follow. It
  drops only what every serving arm dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from contract import CHAMPION

# Labelled rows since the change a retrain waits for: about 90 conversions at the demo's
# 9 %, enough for a regularized model with a few dozen columns to beat a stale one.
MIN_ROWS_AFTER_CHANGE = 1_000
MIN_DAY_ROWS = 30  # a day with fewer rows says nothing about its distribution


def shared_drop_columns(specs: Sequence[Any]) -> list[str]:
    """Return the columns every spec drops (in the first spec's order)."""
    if not specs:
        return []
    kept = set(specs[0].data.drop_columns or [])
    for spec in specs[1:]:
        kept &= set(spec.data.drop_columns or [])
    return [c for c in (specs[0].data.drop_columns or []) if c in kept]


def _rows_with_time(data: Any) -> tuple[pd.DataFrame, pd.Series] | None:
    if data.timestamps_train is None or data.timestamps_test is None:
        return None
    X = pd.concat([data.X_train, data.X_test], ignore_index=True)
    stamps = pd.concat([data.timestamps_train, data.timestamps_test], ignore_index=True)
    return X, pd.to_datetime(stamps, utc=True)


def _day_drifted(
    reference: pd.DataFrame, day: pd.DataFrame, features: list[str], drift: Any
) -> bool:
    from tasks.view_change import drifted_features

    return bool(drifted_features(reference, day, features, drift))


@dataclass(frozen=True)
class ChangeWindow:
    """Where the change starts in the recent window (None: not placed), and why."""

    start: datetime | None  # the first day of the trailing run of drifted days
    detail: str = ""


def change_start(
    data: Any, reference: pd.DataFrame, features: Sequence[str], drift: Any
) -> ChangeWindow:
    """Return the first day of the trailing run of drifted days in the recent window.

    ``data`` is the recent window's ``StudyData`` (rows with their timestamps),
    ``reference`` the drifted arm's training sample, ``features`` the drifted ones. No
    start: nothing to narrow (no timestamps, no such feature, or the newest labelled day
    has not moved: a drift seen over the whole window that no single day shows).
    """
    rows = _rows_with_time(data)
    names = [f for f in features if f in reference.columns]
    if rows is None or not names:
        return ChangeWindow(None, detail="no timestamps or no drifted feature to place")
    X, stamps = rows
    names = [f for f in names if f in X.columns]
    days = stamps.dt.floor("D")
    start = None
    for day in sorted(days.unique(), reverse=True):
        chunk = X[(days == day).to_numpy()]
        if len(chunk) < MIN_DAY_ROWS:
            continue
        if not _day_drifted(reference, chunk, names, drift):
            break
        start = pd.Timestamp(day).to_pydatetime()
    if start is None:
        return ChangeWindow(None, detail=f"the newest labelled day has not moved in {names}")
    return ChangeWindow(start, detail=f"{', '.join(names)} moved from {start:%Y-%m-%d} on")


def rows_since(data: Any, start: datetime) -> int:
    """Return how many labelled rows of ``data`` are at or after ``start``."""
    rows = _rows_with_time(data)
    if rows is None:
        return 0
    return int((rows[1] >= pd.Timestamp(start)).sum())


@dataclass
class Training:
    """What the retrain study learns from: its window's start, data and dropped columns."""

    start: datetime
    data: Any  # the StudyData of [start, end): the registration's hold-out comes from it
    drop_columns: list[str]
    waiting: bool = False
    detail: str = ""
    # No label of the change yet: the rows are the served outcomes since it alone.
    served_only: bool = False


def _placements(outcome: Any, arms: Sequence[Any]) -> list[tuple[str, list[str] | None]]:
    """Return (version, features to place the change by; None: every one), champion first.

    After a check: each arm whose features drifted, by those. After a signal (no check ran:
    the drift event's consumer, a degraded champion, a rollback): every serving arm, by the
    features the signal named, or by all of them. Without this a drift event's retrain
    learnt from the whole recent window, mostly the world before the change, while the
    check that emitted the event had placed the change (measured in the closed loop: the
    retrained arms earned what the stale ones did).
    """
    if outcome.arms:
        return [
            (v, list(i["drifted_features"]))
            for v, i in outcome.arms.items()
            if i.get("drifted_features")
        ]
    if not getattr(outcome, "reason", None):
        return []
    named = list(outcome.drifted_features) or None
    return [(arm.version, named) for arm in arms]


def plan_training(
    outcome: Any, champ: Any, recent: Any, settings: Any, start: datetime, end: datetime
) -> Training:
    """Return the retrain's training set: since the change, on every arm's features.

    ``outcome`` is the drift check's (its drifted features), ``champ`` the champion's arm
    (its spec and version: the reference sample kept beside it), ``recent`` the checked
    window's ``StudyData`` over ``[start, end)``.
    """
    from tasks.drift import reference_path
    from tasks.retrain import load_recent, serving_arms, windowed
    from tasks.tracking import configure_mlflow

    arms = serving_arms(configure_mlflow(settings), outcome.model, settings)
    drop = shared_drop_columns([champ.spec, *(a.spec for a in arms if a.version != champ.version)])
    change = ChangeWindow(None, detail="no drifted feature to place the change by")
    # The champion first, then each challenger whose own training data the window left.
    for version, named in _placements(outcome, arms):
        path = reference_path(settings, outcome.model, version)
        if path.exists():
            reference = pd.read_parquet(path)
            features = named or list(reference.columns)
            change = change_start(recent, reference, features, champ.spec.drift)
            if change.start is not None:
                break
    view = stale_view(arms, champ.spec, settings, end, drop)
    # The view shows a change a day before its labels do.
    if view.start is not None and view.start > max(start, change.start or start):
        change = ChangeWindow(view.start, detail=view.detail)
    if change.start is None or change.start <= start:
        return Training(start, recent, drop, detail=change.detail)
    n = rows_since(recent, change.start)
    if n < MIN_ROWS_AFTER_CHANGE:
        detail = f"{change.detail}; {n} labelled rows since"
        served = served_since(change.start, end, settings, outcome, champ.spec)
        if served >= MIN_ROWS_AFTER_CHANGE:
            spec = served_only(windowed(champ.spec, change.start, end), settings)
            data = load_recent(spec, settings)
            detail += f": learning from the {served:,} served outcomes since alone"
            return Training(change.start, data, drop, detail=detail, served_only=True)
        detail += f" and {served} served outcomes, waiting for {MIN_ROWS_AFTER_CHANGE}"
        return Training(change.start, recent, drop, waiting=True, detail=detail)
    data = load_recent(windowed(champ.spec, change.start, end), settings)
    return Training(change.start, data, drop, detail=f"{change.detail}; {n} labelled rows since")


def stale_view(
    arms: Sequence[Any], spec: Any, settings: Any, end: datetime, drop: Sequence[str]
) -> Any:
    """Return the newest change of the feature views that a serving arm learnt before.

    None placed (``ViewChange.start``) when no view changed over ``spec.drift.recent_days``
    or every serving arm learnt from the change on (``tasks/view_change.py``).
    """
    from tasks.view_change import ViewChange, view_change

    change = view_change(settings, spec.drift, end, spec.drift.recent_days, exclude=drop)
    if change.start is None or any(learnt_before(a.spec, change.start) for a in arms):
        return change
    return ViewChange(None, detail=f"{change.detail}; every serving arm learnt from it on")


def served_since(start: datetime, end: datetime, settings: Any, outcome: Any, spec: Any) -> int:
    """Return how many served outcomes in ``[start, end)`` a retrain may learn from alone.

    0 when ``settings.retrain_outcomes`` is off, without an outcome log, for a spec whose
    data is a file (the log holds keys and outcomes, which Feast joins), or for a retrain
    of the live alarm (``banditflow.performance.degraded``): the alarm fires while the
    day's outcomes are still being gathered, and whether its run read the log before or
    after the day's ingestion would depend on the machine's load. The day's own check,
    after the ingestion, decides alike on a quiet or a loaded machine.
    """
    from contract import EVENT_PERFORMANCE_DEGRADED

    path = settings.outcomes_path
    if not settings.retrain_outcomes or outcome.reason == EVENT_PERFORMANCE_DEGRADED:
        return 0
    if spec.data.source != "feast" or not path.exists():
        return 0
    from tasks.features import as_utc

    stamps = as_utc(pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"])
    return int(((stamps >= _utc(start)) & (stamps < _utc(end))).sum())


def served_only(spec: Any, settings: Any) -> Any:
    """Return ``spec`` learning from the served outcomes alone (``data.served_only``)."""
    update = {"outcomes": str(settings.outcomes_path), "served_only": True}
    return spec.model_copy(update={"data": spec.data.model_copy(update=update)})


def with_served_outcomes(spec: Any, data: Any, settings: Any) -> tuple[Any, Any, str]:
    """Return the retrain's spec and data with the window's served outcomes; and a note.

    Measured on the demo's generator (benchmarks/retrain_quality.py): a retrain one to
    three days after a drift earned 0.78-0.87x the feature oracle from the labels and their
    prior; the offers the stale champion made in those days, with whether they converted,
    lift it to 0.85-0.95x. Unchanged without the application's outcome log, or when
    ``settings.retrain_outcomes`` is off, or for a spec whose data is a file.
    """
    from tasks.data import with_outcomes

    path = settings.outcomes_path
    if spec.data.served_only:
        return spec, data, f"{data.outcome_rows:,} served outcomes since the change, no label"
    if not settings.retrain_outcomes or spec.data.source != "feast" or not path.exists():
        return spec, data, ""
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"outcomes": str(path)})})
    data = with_outcomes(data, spec, settings)
    return spec, data, f"{data.outcome_rows:,} served outcomes fitted with the labels"


def _utc(moment: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def learnt_before(spec: Any, start: datetime) -> bool:
    """Whether a version's training window (its spec's ``data.start``; None: the whole
    history) began before ``start``: one that learnt from the change on is not stale for it."""
    return spec.data.start is None or _utc(spec.data.start) < _utc(start)


def challenger_since(arms: Sequence[Any], start: datetime) -> Any | None:
    """Return a serving challenger that learnt from ``start`` on, or None.

    Such a challenger is a retrain of this very change that the rollout is still judging.
    Measured in the closed loop: the daily check saw the stale champion drifted every day,
    each day's retrain superseded the day before's challenger, and no challenger ever
    gathered the outcomes a promotion needs. So while one is judged, the change is handled.
    """
    return next((a for a in arms if a.alias != CHAMPION and not learnt_before(a.spec, start)), None)


def alarm_ahead_of_labels(reason: str | None, metric_degraded: bool) -> bool:
    """Whether a live alarm's retrain has only labels from before what the alarm saw.

    Labels arrive later than the outcomes the service watches (a day, in the demo): when
    ``banditflow.performance.degraded`` fires, the newest labels may all predate the fall.
    Measured in the demo: the alarm's retrain on the drift day learnt the old world again,
    and its stale challenger took a quarter of the next day's traffic.
    """
    from contract import EVENT_PERFORMANCE_DEGRADED

    return reason == EVENT_PERFORMANCE_DEGRADED and not metric_degraded
