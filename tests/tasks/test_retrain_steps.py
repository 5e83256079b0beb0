"""The retrain steps: window, warm start from the previous best points, study naming."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from tasks.retrain import (
    feature_view_name,
    resolve_window,
    retrain_spec,
    windowed,
)
from tasks.retrain_family import top_points
from tasks.spec import StudySpec


@dataclass
class Record:
    params: dict[str, Any]
    values: dict[str, float]
    status: str = "completed"
    trial_id: str = "0"
    extra: dict[str, Any] = field(default_factory=dict)


def test_feature_view_comes_from_the_event_resource_id_or_a_plain_name() -> None:
    assert feature_view_name("banditflow.feature_view.customer_activity") == "customer_activity"
    assert feature_view_name("customer_activity") == "customer_activity"
    assert feature_view_name(None) is None and feature_view_name("") is None


def test_top_points_are_the_best_completed_trials_best_first() -> None:
    spec = StudySpec(name="s", objectives={"roc_auc": "maximize"})
    trials = [
        Record({"c": 1}, {"roc_auc": 0.70}),
        Record({"c": 2}, {"roc_auc": 0.90}),
        Record({"c": 3}, {"roc_auc": 0.95}, status="failed"),
        Record({"c": 4}, {"roc_auc": 0.80}),
        Record({"c": 2}, {"roc_auc": 0.89}),  # the same point twice is enqueued once
        Record({"c": 5}, {"roc_auc": float("nan")}),
    ]
    assert top_points(trials, spec, 2) == [{"c": 2}, {"c": 4}]
    assert top_points(trials, spec, 10) == [{"c": 2}, {"c": 4}, {"c": 1}]
    low = StudySpec(
        name="s", task="regression", objectives={"rmse": "minimize"}, gates={"performance": None}
    )
    reg = [Record({"a": 1}, {"rmse": 3.0}), Record({"a": 2}, {"rmse": 1.0})]
    assert top_points(reg, low, 1) == [{"a": 2}]


def test_window_uses_the_event_range_widened_to_the_spec_minimum(settings) -> None:
    spec = StudySpec(name="s")
    end = datetime(2026, 3, 1, tzinfo=UTC)
    start, stop = resolve_window(end - timedelta(days=1), end, spec, settings)
    assert stop == end and start == end - timedelta(days=spec.drift.recent_days)
    start, stop = resolve_window(end - timedelta(days=30), end, spec, settings)
    assert start == end - timedelta(days=30)


def test_window_without_a_range_ends_at_the_newest_label(settings) -> None:
    newest = pd.Timestamp("2026-04-10 12:00", tz="UTC")
    pd.DataFrame(
        {"customer_id": [1, 2], "event_timestamp": [newest - pd.Timedelta(days=3), newest]}
    ).to_parquet(settings.data_dir / "sessions.parquet")
    start, end = resolve_window(None, None, StudySpec(name="s"), settings)
    assert end == newest.to_pydatetime() + timedelta(seconds=1)
    assert end - start == timedelta(days=7)


def test_retrain_spec_keeps_model_and_search_with_a_new_name_window_and_warm_start() -> None:
    previous = StudySpec(name="conversion", seed=3, budget={"max_trials": 9})
    lo, hi = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 8, tzinfo=UTC)
    spec = retrain_spec(previous, "conversion", lo, hi, [{"learning_rate": 0.1}])
    assert spec.name == "conversion--retrain-20260308T000000"
    assert (spec.data.start, spec.data.end) == (lo, hi)
    assert spec.warm_start == [{"learning_rate": 0.1}]
    assert spec.model == previous.model and spec.budget == previous.budget
    assert spec.registration.model_name == "conversion"  # candidates join the model
    again = retrain_spec(spec, "conversion", lo, hi + timedelta(days=1), [])
    assert again.name == "conversion--retrain-20260309T000000"
    assert windowed(previous, None, None).data.start is None


@pytest.mark.parametrize("bad", [-1, 0])
def test_warm_start_top_zero_or_less_gives_no_points(bad: int) -> None:
    spec = StudySpec(name="s")
    assert top_points([Record({"c": 1}, {"roc_auc": 0.7})], spec, bad) == []
