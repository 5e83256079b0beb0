"""The demo's world: the generated truth, what of it has happened, and the day's arrivals.

The generator makes the whole period at once (customers, one activity row per customer and
day, labelled sessions) and keeps it in the world's own folder, which the system never
reads. The system's data folder starts with the history (everything before the live
period); each simulated day end, the application's ingestion job hands over what arrived
that day: the next day's activity snapshot (pushed through the feature store, which emits
``banditflow.features.updated``), the labels whose delay has passed and the outcomes of the
offers its visits got (the application's outcome log).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.datagen import FILES, GeneratorConfig, generate

START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class WorldPlan:
    """The world's sizes and knobs; live days are counted from the end of the history."""

    seed: int = 0
    customers: int = 6_000
    sessions_per_day: int = 1_300  # labelled sessions the generator makes per day
    history_days: int = 100  # the past the system starts from
    live_days: int = 10
    drift_day: int | None = 4  # the live day the drift knob turns on (None: knob off)
    drift_strength: float = 2.0
    visits_per_day: int = 12_000
    offer_cost: float = 0.08
    feedback_delay_mean_s: float = 3_600.0  # simulated seconds
    feedback_loss: float = 0.05
    label_delay_days: float = 1.0  # a session's label arrives this long after the session

    def __post_init__(self) -> None:
        if self.drift_day is not None and not 0 <= self.drift_day < self.live_days:
            raise ValueError(f"drift_day must be a live day, got {self.drift_day=}")
        if self.label_delay_days < 0:
            raise ValueError(f"label_delay_days must be >= 0, got {self.label_delay_days=}")

    @property
    def live_start(self) -> datetime:
        return START + timedelta(days=self.history_days)

    @property
    def drift_at(self) -> datetime | None:
        if self.drift_day is None:
            return None
        return self.live_start + timedelta(days=self.drift_day)

    def day_start(self, day: int) -> datetime:
        """Return the moment live day ``day`` starts (its end is ``day_start(day + 1)``)."""
        return self.live_start + timedelta(days=day)

    def generator(self) -> GeneratorConfig:
        days = self.history_days + self.live_days
        return GeneratorConfig(
            seed=self.seed,
            n_customers=self.customers,
            rows=self.sessions_per_day * days,
            start=START,
            days=days,
            drift_at=self.drift_at,
            drift_strength=self.drift_strength,
        )


@dataclass
class Arrivals:
    """What the application's ingestion job hands over at one day's end."""

    day: int
    activity: pd.DataFrame  # the snapshot the next day's visits see
    labels: pd.DataFrame  # labelled sessions whose label arrived this day


class World:
    """The generated truth (``truth_dir``) and the history given to the system (``data_dir``)."""

    def __init__(self, plan: WorldPlan, truth_dir: Path, data_dir: Path) -> None:
        self.plan = plan
        self.truth_dir = Path(truth_dir)
        self.data_dir = Path(data_dir)
        self._activity: pd.DataFrame | None = None
        self._sessions: pd.DataFrame | None = None

    def generate(self) -> dict[str, Any]:
        """Generate the whole period; give the system its history. Returns a few facts."""
        generate(self.plan.generator(), self.truth_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in ("customers", "config"):
            target = self.data_dir / FILES[name]
            target.write_bytes((self.truth_dir / FILES[name]).read_bytes())
        start = pd.Timestamp(self.plan.live_start)
        activity = self.activity
        _write(activity[activity["event_timestamp"] <= start], self.data_dir / FILES["activity"])
        sessions = self.sessions
        arrived = self._label_arrival(sessions) <= start
        _write(sessions[arrived].drop(columns="p_true"), self.data_dir / FILES["sessions"])
        return {
            "customers": self.plan.customers,
            "history_labels": int(arrived.sum()),
            "conversion_rate": float(sessions.loc[arrived, "converted"].mean()),
            "live_start": self.plan.live_start,
        }

    @property
    def activity(self) -> pd.DataFrame:
        if self._activity is None:
            self._activity = pd.read_parquet(self.truth_dir / FILES["activity"])
        return self._activity

    @property
    def sessions(self) -> pd.DataFrame:
        if self._sessions is None:
            self._sessions = pd.read_parquet(self.truth_dir / FILES["sessions"])
        return self._sessions

    def _label_arrival(self, sessions: pd.DataFrame) -> pd.Series:
        return sessions["event_timestamp"] + pd.Timedelta(days=self.plan.label_delay_days)

    def arrivals(self, day: int) -> Arrivals:
        """Return what arrives at the end of live day ``day``."""
        lo = pd.Timestamp(self.plan.day_start(day))
        hi = pd.Timestamp(self.plan.day_start(day + 1))
        activity = self.activity[self.activity["event_timestamp"] == hi]
        arrival = self._label_arrival(self.sessions)
        labels = self.sessions[(arrival > lo) & (arrival <= hi)].drop(columns="p_true")
        return Arrivals(day, activity.reset_index(drop=True), labels.reset_index(drop=True))


def _write(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def append_labels(labels: pd.DataFrame, data_dir: Path) -> int:
    """Append arrived labels to the application's label table (what training sets join)."""
    return _append(labels, Path(data_dir) / FILES["sessions"])


OUTCOME_COLUMNS = ("customer_id", "event_timestamp", "converted")


def served_outcomes(served: pd.DataFrame) -> pd.DataFrame:
    """Return the outcome log's rows of served visits, with when each outcome was known.

    The application knows the outcome of an offer it made (the visit converted or not)
    once the visit's feedback delay has passed; a visit it made no offer to has none.
    """
    offered = served[served["offered"].to_numpy(bool)]
    at = pd.to_datetime(offered["at"], utc=True)
    return pd.DataFrame(
        {
            "customer_id": offered["customer_id"].to_numpy(np.int64),
            "event_timestamp": at.to_numpy(),
            "converted": offered["converted"].to_numpy(np.int64),
            "known_at": (at + pd.to_timedelta(offered["delay_s"], unit="s")).to_numpy(),
        }
    )


def append_outcomes(outcomes: pd.DataFrame, path: Path) -> int:
    """Append known outcomes to the application's outcome log (``settings.outcomes_path``)."""
    rows = outcomes[list(OUTCOME_COLUMNS)]
    if not Path(path).exists():
        _write(rows.iloc[:0], Path(path))
    return _append(rows, Path(path))


def _append(rows: pd.DataFrame, path: Path) -> int:
    if rows.empty:
        return 0
    existing = pd.read_parquet(path)
    added = rows[list(existing.columns)].astype(existing.dtypes.to_dict())
    _write(pd.concat([existing, added], ignore_index=True), path)
    return int(len(added))


def ingest_day(
    arrivals: Arrivals, *, settings: Any, outcomes: pd.DataFrame | None = None
) -> dict[str, int]:
    """The application's ingestion job at a day's end: labels and outcomes, then features.

    Labels (and the served offers' known outcomes) are written before the push, so the
    retrain that the push's event starts sees them. The push goes through the project's
    ingestion task, which emits ``banditflow.features.updated``.
    """
    from tasks.ingest import flush_events, push_activity

    labels = append_labels(arrivals.labels, settings.data_dir)
    known = 0 if outcomes is None else append_outcomes(outcomes, settings.outcomes_path)
    pushed = 0
    if not arrivals.activity.empty:
        pushed = push_activity(arrivals.activity, settings=settings, to="online_and_offline")
    flush_events()
    return {"labels": labels, "outcomes": known, "activity": pushed}


def ingest_history(plan: WorldPlan, *, settings: Any) -> dict[str, int]:
    """The first ingestion: apply the feature repository and materialize the history."""
    from tasks.features import apply_repository
    from tasks.ingest import flush_events, materialize_incremental

    applied = apply_repository(settings)
    updates = materialize_incremental(plan.live_start + timedelta(seconds=1), settings=settings)
    flush_events()
    return {"objects": len(applied), "rows": sum(int(u["rows"]) for u in updates)}
