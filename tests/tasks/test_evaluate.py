"""Trial evaluation: every metric, latency and size; pruning; failures come back, never raise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.data import split_study_data
from tasks.evaluate import EvalConfig, evaluate_trial
from tasks.spec import StudySpec


def _data(task: str = "binary", n: int = 400, positives: int | None = None, **extra):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    frame.loc[::10, "x2"] = np.nan
    signal = frame["x1"] + 0.8 * (frame["colour"] == "red") + rng.normal(0, 0.7, n)
    if task == "regression":
        frame["y"] = signal
    else:
        frame["y"] = (signal > 0.4).astype(int)
    if positives is not None:
        frame["y"] = 0
        frame.loc[: positives - 1, "y"] = 1
    spec = StudySpec.parse(
        {
            "name": "e",
            "task": task,
            "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
            "model": {"family": "ridge" if task == "regression" else "logistic_regression"},
            "objectives": {"rmse": "minimize"} if task == "regression" else {"roc_auc": "maximize"},
            "evaluation": {"folds": 3, "latency_calls": 20, "test_fraction": 0.2},
            "gates": {"performance": None},
            **extra,
        }
    )
    return spec, split_study_data(frame, spec)


def test_binary_trial_measures_every_metric_latency_and_size() -> None:
    spec, data = _data()
    out = evaluate_trial(spec, {"C": 1.0, "penalty": "l2"}, data, trial_id="7")
    assert out.status == "completed", out.reason
    assert out.trial_id == "7" and out.folds_done == 3
    expected = {"roc_auc", "log_loss", "accuracy", "f1", "average_precision", "brier"}
    assert expected | {"latency_ms", "model_bytes", "fit_seconds", "eval_seconds"} <= set(
        out.values
    )
    assert 0.75 < out.values["roc_auc"] <= 1.0  # a clearly learnable signal
    assert 0 < out.values["latency_ms"] < 100
    assert out.values["model_bytes"] > 1000
    assert len(out.running_scores) == 3
    assert out.running_scores[-1] == pytest.approx(out.values["roc_auc"])


def test_regression_trial_and_holdout_method() -> None:
    spec, data = _data("regression")
    out = evaluate_trial(spec, {"alpha": 0.1}, data)
    assert out.status == "completed", out.reason
    assert {"rmse", "mae", "r2"} <= set(out.values)
    assert out.values["r2"] > 0.3
    config = EvalConfig.from_spec(spec)
    holdout = EvalConfig(**{**config.__dict__, "method": "holdout"})
    out = evaluate_trial(holdout, {"alpha": 0.1}, data)
    assert out.status == "completed" and out.folds_done == 1


def test_median_rule_prunes_a_trial_below_the_threshold() -> None:
    spec, data = _data(budget={"pruning": {"after_folds": 1}})
    pruned = evaluate_trial(spec, {"C": 1.0}, data, prune_threshold=0.999)
    assert pruned.status == "pruned"
    assert pruned.folds_done == 1 and "median rule" in pruned.reason
    assert pruned.compute_saved_seconds > 0
    assert "roc_auc" in pruned.values
    kept = evaluate_trial(spec, {"C": 1.0}, data, prune_threshold=0.5)
    assert kept.status == "completed" and kept.folds_done == 3


def test_bad_params_fail_with_the_reason() -> None:
    spec, data = _data()
    out = evaluate_trial(spec, {"C": -1.0}, data)
    assert out.status == "failed"
    assert "C" in out.reason and "InvalidParameterError" in out.reason


def test_nan_objective_fails_the_trial() -> None:
    # 3 positives, 3 folds (too few to stratify): a fold with one class has a NaN roc_auc.
    spec, data = _data(positives=3)
    out = evaluate_trial(spec, {"C": 1.0}, data)
    assert out.status == "failed"
    assert "roc_auc is NaN" in out.reason


def test_timeout_fails_the_trial() -> None:
    spec, data = _data()
    config = EvalConfig(**{**EvalConfig.from_spec(spec).__dict__, "timeout_seconds": 1e-6})
    out = evaluate_trial(config, {"C": 1.0}, data)
    assert out.status == "failed" and out.reason.startswith("timeout")
