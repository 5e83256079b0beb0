"""The retrain's prior rows: loaded before the window, fitted with a weight, never scored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from tasks.data import load_study_data
from tasks.evaluate import evaluate_trial
from tasks.models import (
    HISTORY_WEIGHT,
    ModelFamilyError,
    build_model,
    fit_model,
    history_weight,
)
from tasks.retrain_prior import WARM_WEIGHT, takes_weights, with_prior
from tasks.spec import StudySpec

START = datetime(2026, 3, 1, tzinfo=UTC)


def _world(path: Path, *, days_before: int = 30, days_after: int = 2, seed: int = 0) -> Path:
    """A drift-free world: the prior rows tell the same story as the few rows after START."""
    rng = np.random.default_rng(seed)
    before, after = 200 * days_before, 60 * days_after
    stamps = np.r_[
        START.timestamp() - rng.uniform(1, days_before * 86_400, before),
        START.timestamp() + rng.uniform(1, days_after * 86_400, after),
    ]
    n = before + after
    x = rng.normal(size=(n, 6))
    logit = x @ np.array([1.0, -0.8, 0.6, 0.4, -0.3, 0.2]) - 1.0
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["region"] = rng.choice(["north", "south"], n)
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame["event_timestamp"] = pd.to_datetime(stamps, unit="s", utc=True)
    frame.to_parquet(path)
    return path


def _spec(path: Path, **data: object) -> StudySpec:
    return StudySpec.parse(
        {
            "name": "prior",
            "data": {"source": "file", "path": str(path), "target": "y", "start": START, **data},
            "model": {"family": "logistic_regression"},
            "objectives": {"log_loss": "minimize"},
            "evaluation": {"folds": 3, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )


def test_history_days_needs_a_window_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history_days counts back from data.start"):
        StudySpec.parse(
            {"name": "x", "data": {"source": "file", "path": "d.csv", "history_days": 3}}
        )


def test_prior_rows_are_the_days_before_the_window_and_not_in_it(tmp_path: Path, settings) -> None:
    path = _world(tmp_path / "w.parquet")
    plain = load_study_data(_spec(path), settings)
    data = load_study_data(_spec(path, history_days=10), settings)
    assert plain.X_history is None and plain.history is None
    # The window is the same with or without its prior; the prior is the 10 days before.
    pd.testing.assert_frame_equal(plain.X_train, data.X_train)
    pd.testing.assert_frame_equal(plain.X_test, data.X_test)
    frame = pd.read_parquet(path)
    ten_days = frame[(frame.event_timestamp >= START - pd.Timedelta(days=10))]
    assert data.history_rows == int((ten_days.event_timestamp < START).sum()) > 0
    assert list(data.X_history.columns) == data.feature_columns
    assert data.summary()["rows_history"] == data.history_rows


def test_a_prior_period_without_labels_gives_no_prior_rows(tmp_path: Path, settings) -> None:
    path = _world(tmp_path / "w.parquet", days_before=1)
    data = load_study_data(_spec(path, start=START + pd.Timedelta(days=1), history_days=0.001))
    assert data.X_history is not None and data.history_rows == 0


def test_the_weight_is_the_datas_not_the_estimators(tmp_path: Path, settings) -> None:
    data = load_study_data(_spec(_world(tmp_path / "w.parquet"), history_days=30), settings)
    params = {"C": 1.0, HISTORY_WEIGHT: 0.5}
    model = build_model("logistic_regression", params, task="binary", X=data.X_train)
    assert HISTORY_WEIGHT not in model.steps[-1][1].get_params()
    # Weight 0 (or none) fits the window alone; a weight moves the fit.
    alone = fit_model(
        build_model("logistic_regression", {}, task="binary", X=data.X_train),
        data.X_train,
        data.y_train,
        {},
        data.history,
    )
    zero = fit_model(
        build_model("logistic_regression", {}, task="binary", X=data.X_train),
        data.X_train,
        data.y_train,
        {HISTORY_WEIGHT: 0.0},
        data.history,
    )
    np.testing.assert_allclose(alone[-1].coef_, zero[-1].coef_)
    weighted = fit_model(model, data.X_train, data.y_train, params, data.history)
    assert not np.allclose(alone[-1].coef_, weighted[-1].coef_)
    for bad in (-0.1, float("nan"), "lots"):
        with pytest.raises(ModelFamilyError, match="history_weight must be a finite number"):
            history_weight({HISTORY_WEIGHT: bad})


def test_an_estimator_without_sample_weights_is_refused_by_name(tmp_path: Path, settings) -> None:
    data = load_study_data(_spec(_world(tmp_path / "w.parquet"), history_days=30), settings)
    numeric = [c for c in data.feature_columns if c.startswith("x")]
    knn = Pipeline([("model", KNeighborsClassifier())])
    with pytest.raises(ModelFamilyError, match="KNeighborsClassifier takes no sample_weight"):
        fit_model(
            knn,
            data.X_train[numeric],
            data.y_train,
            {HISTORY_WEIGHT: 0.1},
            (data.X_history[numeric], data.y_history),
        )


def test_prior_rows_help_a_small_window_and_are_never_scored(
    tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.evaluate

    spec = _spec(_world(tmp_path / "w.parquet"), history_days=30)
    data = load_study_data(spec, settings)
    scored: list[int] = []
    real = tasks.evaluate.score_fold

    def counting(model, X, y, task):  # type: ignore[no-untyped-def]
        scored.append(len(X))
        return real(model, X, y, task)

    monkeypatch.setattr(tasks.evaluate, "score_fold", counting)
    alone = evaluate_trial(spec, {"C": 1.0}, data)
    pooled = evaluate_trial(spec, {"C": 1.0, HISTORY_WEIGHT: 1.0}, data)
    assert alone.status == pooled.status == "completed", (alone.reason, pooled.reason)
    # ~30 rows a fold against 6,000 more of the same world: a better fit on the same folds.
    assert data.history_rows > 5_000
    assert pooled.values["log_loss"] < alone.values["log_loss"]
    # Each trial's folds scored the window's training rows once each, no prior row.
    assert scored == [*scored[:3], *scored[:3]] and sum(scored[:3]) == len(data.X_train)


def test_with_prior_adds_the_weight_to_the_space_and_the_warm_start(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "w.parquet")
    searched, warm = with_prior(spec, [{"C": 0.5}, {"C": 2.0, HISTORY_WEIGHT: 0.2}], 14)
    assert searched.data.history_days == 14
    assert searched.model.space is not None
    from tasks.models import default_space

    assert set(searched.model.space) == {*default_space("logistic_regression"), HISTORY_WEIGHT}
    weight = searched.model.space[HISTORY_WEIGHT]
    assert weight.log and weight.low == 1e-3 and weight.high == 1.0
    assert warm == [{"C": 0.5, HISTORY_WEIGHT: WARM_WEIGHT}, {"C": 2.0, HISTORY_WEIGHT: 0.2}]
    assert searched.warm_start == warm
    unchanged, same = with_prior(spec, [{"C": 0.5}], 0)
    assert unchanged == spec and same == [{"C": 0.5}]
    # A retrained champion's spec carries its prior; its windows (drift checks, the next
    # retrain's rows) load the window alone, and the next retrain adds its own prior.
    from tasks.retrain import windowed

    again = windowed(searched, START, START + pd.Timedelta(days=2))
    assert again.data.history_days is None and again.data.start == START


def test_takes_weights_asks_the_estimator(tmp_path: Path, settings) -> None:
    spec = _spec(_world(tmp_path / "w.parquet"))
    data = load_study_data(spec, settings)
    assert takes_weights(spec, data)
