"""One way to score, time and read a direction: the behaviours settled, and the callers agree."""

from __future__ import annotations

import itertools
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import tasks.timing as timing
from tasks.metrics import (
    MetricError,
    better,
    metrics_for,
    register_metric,
    score,
    sign,
    unregister_metric,
)
from tasks.timing import measure_latency


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {"x1": rng.normal(size=n), "x2": rng.normal(size=n), "c": rng.choice(["a", "b"], n)}
    )
    logit = 1.5 * X.x1 - 0.7 * X.x2 + 0.5 * (X.c == "a")
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


# --- directions -------------------------------------------------------------------------
def test_sign_turns_a_value_into_a_loss_and_better_compares_by_direction() -> None:
    assert sign("maximize") == -1.0 and sign("minimize") == 1.0
    assert better(0.9, 0.8, "maximize") and not better(0.8, 0.9, "maximize")
    assert better(0.1, 0.2, "minimize") and not better(0.2, 0.1, "minimize")
    assert not better(0.5, 0.5, "maximize")
    assert not better(math.nan, 0.1, "minimize") and better(0.1, math.nan, "minimize")
    with pytest.raises(MetricError, match="direction must be"):
        sign("maximise")


# --- the settled scoring behaviours -----------------------------------------------------
def test_the_positive_class_is_classes_1_for_string_labels() -> None:
    classes = np.array(["no", "yes"])
    y = np.array(["yes", "no", "yes", "no"])
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    # "yes" (classes[1]) is positive: ranks 0.8, 0.6 above 0.1 but below 0.7 -> AUC 0.75.
    assert score("roc_auc", y, proba, classes=classes) == pytest.approx(0.75)
    assert score("f1", y, proba, classes=classes) == pytest.approx(0.8)  # tp 2, fp 1
    assert score("brier", y, proba, classes=classes) == pytest.approx(
        np.mean((np.array([1, 0, 1, 0]) - proba[:, 1]) ** 2)
    )


def test_no_predicted_positive_scores_f1_zero_without_a_warning() -> None:
    classes = np.array([0, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score("f1", np.array([1, 0, 0]), proba, classes=classes) == 0.0


def test_rows_of_one_class_make_ranking_metrics_nan_not_an_error() -> None:
    classes = np.array([0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    y = np.array([1, 1])
    assert math.isnan(score("roc_auc", y, proba, classes=classes))
    assert math.isnan(score("average_precision", y, proba, classes=classes))
    assert score("accuracy", y, proba, classes=classes) == 0.5  # still defined
    assert math.isfinite(score("log_loss", y, proba, classes=classes))


def test_bad_inputs_and_undefined_metrics_say_what_is_wrong() -> None:
    with pytest.raises(MetricError, match="not defined for task 'multiclass'"):
        score("roc_auc", [0, 1, 2], np.eye(3), classes=[0, 1, 2])
    with pytest.raises(MetricError, match="shape"):
        score("log_loss", [0, 1], np.array([0.2, 0.8]), classes=[0, 1])
    assert score("rmse", [1.0, 2.0], [1.0, 4.0], classes=None) == pytest.approx(math.sqrt(2))


# --- registration -----------------------------------------------------------------------
def test_a_metric_registered_in_test_code_is_valid_in_a_spec_and_measured_by_trials() -> None:
    from tasks.evaluate import evaluate_trial

    def recall_at_half(y: np.ndarray, proba: np.ndarray, classes: np.ndarray | None) -> float:
        positive = y == classes[1]  # type: ignore[index]
        return float(np.mean(proba[positive, 1] >= 0.5))

    register_metric("recall_at_half", recall_at_half, "maximize", True, tasks=("binary",))
    try:
        assert metrics_for("binary")["recall_at_half"] == "maximize"
        assert "recall_at_half" not in metrics_for("regression")
        X, y = _frame(300, seed=4)
        spec, data = _study(X, y, "logistic_regression", "recall_at_half")
        outcome = evaluate_trial(spec, {"C": 1.0}, data)
        assert outcome.status == "completed", outcome.reason
        assert 0.5 < outcome.values["recall_at_half"] <= 1.0
    finally:
        unregister_metric("recall_at_half")
    assert "recall_at_half" not in metrics_for("binary")


# --- timing -----------------------------------------------------------------------------
def test_latency_is_cpu_time_so_waiting_is_not_charged() -> None:
    X, _ = _frame(20, seed=1)

    def waits(row: pd.DataFrame) -> None:
        time.sleep(0.005)  # blocked, as on a busy machine: no CPU of this thread

    def spins(row: pd.DataFrame) -> None:
        end = time.thread_time() + 0.003
        while time.thread_time() < end:
            pass

    waiting = measure_latency(waits, X, calls=20, warmup=2)
    spinning = measure_latency(spins, X, calls=20, warmup=2)
    assert waiting.p95_ms < 2.0  # 5 ms of wall time each, well under 2 ms of CPU
    assert spinning.p50_ms >= 3.0  # CPU spent is charged in full
    assert waiting.calls == 20 and waiting.warmup == 2


def test_latency_does_not_charge_a_collection_of_the_callers_heap() -> None:
    """The collector is off while the clock runs (as timeit does) and on again after."""
    import gc

    X, _ = _frame(20, seed=1)
    seen: list[bool] = []

    def predict(row: pd.DataFrame) -> None:
        seen.append(gc.isenabled())

    assert gc.isenabled()
    measure_latency(predict, X, calls=20, warmup=2)
    assert seen and not any(seen)
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        measure_latency(lambda row: 1 / 0, X, calls=2, warmup=0)
    assert gc.isenabled()  # restored when a prediction raises


def _study(X: pd.DataFrame, y: np.ndarray, family: str, objective: str):
    from tasks.data import split_study_data
    from tasks.spec import StudySpec

    spec = StudySpec.parse(
        {
            "name": "m",
            "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
            "model": {"family": family},
            "objectives": {objective: "maximize"},
            "evaluation": {"folds": 2, "latency_calls": 20, "test_fraction": 0.3},
            "gates": {"performance": None},
        }
    )
    return spec, split_study_data(X.assign(y=y), spec)


def test_evaluation_gate_and_onnx_comparison_agree_on_the_same_model(monkeypatch) -> None:
    """The three callers score with one function and time with one clock and one statistic."""
    from tasks.evaluate import evaluate_trial, score_fold
    from tasks.gates import score_metric
    from tasks.models import build_model
    from tasks.onnx import convert_and_check, load_session, onnx_predictor, to_onnx

    X, y = _frame(800, seed=2)
    spec, data = _study(X, y, "random_forest", "roc_auc")
    X_hold, y_hold = data.X_test, np.asarray(data.y_test)
    types = data.feature_types
    model = build_model("random_forest", {"n_estimators": 20}, task="binary", feature_types=types)
    model.fit(data.X_train, data.y_train)

    fold = score_fold(model, X_hold, pd.Series(y_hold), "binary")
    for name in ("roc_auc", "log_loss", "f1", "accuracy", "brier", "average_precision"):
        assert score_metric(name, model, X_hold, y_hold, "binary") == fold[name]
    session = load_session(to_onnx(model, X_hold.head(5), types))
    onnx_proba = np.asarray(onnx_predictor(session)(X_hold)[1], dtype=float)
    onnx_auc = score("roc_auc", y_hold, onnx_proba, classes=model.classes_)
    assert onnx_auc == pytest.approx(fold["roc_auc"], abs=1e-4)  # float32 rounding only

    # A clock that advances 1/1024 s per reading (exact in binary): the one measurement
    # gives exactly that, so a caller timing its own way (wall clock) would not read it.
    ticks = itertools.count()
    monkeypatch.setattr(timing, "CLOCK", lambda: next(ticks) / 1024)
    tick_ms = 1000 / 1024
    gate = score_metric("latency_ms", model, X_hold, y_hold, "binary")
    outcome, _ = convert_and_check(model, X_hold, task="binary", timing_calls=20)
    trial = evaluate_trial(spec, {"n_estimators": 20}, data)
    assert trial.status == "completed", trial.reason
    assert gate == tick_ms
    assert outcome.sklearn_ms_p95 == tick_ms and outcome.onnx_ms_p95 == tick_ms
    assert trial.values["latency_ms"] == tick_ms
