"""The retrain's family screen: cross-validation on the retrain's rows picks what it searches.

Real sklearn pipelines on the demo's generator (a day of post-drift labels) and on a
problem no linear model can learn, so a screen that always kept the champion's family, or
always picked the same one, fails one of them. The picked family's pipeline converts to ONNX
and the gates judge that ONNX model.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.data import split_study_data
from tasks.retrain_family import choose_family, with_family
from tasks.spec import StudySpec

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=8)
LINEAR = {"logistic_regression", "logistic_regression_power"}
# The screen's choice logic on three families (the ``retrain_families`` setting): the MLP and
# the forest cost most of its fits, and these two problems need no more to tell families apart.
SCREENED = ["hist_gradient_boosting", *sorted(LINEAR)]


def spec_of(family: str, **data: Any) -> StudySpec:
    return StudySpec.parse(
        {
            "name": "screen",
            "data": {"source": "file", "path": "unused.parquet", **data},
            "objectives": {"log_loss": "minimize"},
            "model": {"family": family},
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {
                "performance": {"metric": "log_loss", "max_regression": 0.002, "floor": 0.4},
                "fairness": {
                    "sensitive_attribute": "age_band",
                    "decision_threshold": 0.08,
                    "max_demographic_parity_difference": 0.5,
                    "max_equalized_odds_difference": 0.6,
                },
            },
        }
    )


@pytest.fixture(scope="module")
def after_drift(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySpec, Any]:
    """One day of labels after a strong drift: what the demo's first retrain has."""
    from tasks.datagen import GeneratorConfig, generate, labelled_sessions

    folder: Path = tmp_path_factory.mktemp("world")
    config = GeneratorConfig(
        seed=0,
        n_customers=1_500,
        rows=1_500 * 10,
        start=START,
        days=10,
        drift_at=DRIFT_AT,
        drift_strength=2.0,
    )
    generate(config, folder)
    frame = labelled_sessions(folder)
    spec = spec_of("hist_gradient_boosting", start=DRIFT_AT, end=DRIFT_AT + timedelta(days=1))
    return spec, split_study_data(frame, spec)


def test_few_rows_after_a_drift_move_the_retrain_off_the_champions_boosting(after_drift):
    spec, data = after_drift
    assert 1_000 < len(data.X_train) < 1_500
    champion_point = {"learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 31}
    choice = choose_family(spec, data, [champion_point], only=SCREENED)
    assert {s.family for s in choice.scores} == set(SCREENED)
    boosting = [s for s in choice.scores if s.family == "hist_gradient_boosting"]
    assert [s.params for s in boosting] == [{}, champion_point]  # its own best points too
    assert choice.family in LINEAR and choice.changed
    best = min(s.value for s in choice.scores if s.family == choice.family)
    assert best < min(s.value for s in boosting)
    assert "family screen (log_loss" in choice.detail()

    searched = with_family(spec, choice)
    assert searched.model.family == choice.family and searched.model.space is None
    assert searched.data == spec.data and searched.gates == spec.gates


def test_a_problem_no_line_separates_keeps_a_flexible_family():
    rng = np.random.default_rng(1)
    n = 1_500
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    y = ((X.a * X.b > 0) ^ (rng.random(n) < 0.05)).astype(int)  # an XOR with 5 % noise
    frame = X.assign(converted=y)
    spec = spec_of("hist_gradient_boosting", timestamp_column=None)
    data = split_study_data(frame, spec)
    choice = choose_family(spec, data, [], only=SCREENED)
    assert choice.family not in LINEAR, choice.detail()
    assert with_family(spec, choice).warm_start == choice.warm_start


def test_the_picked_family_serves_as_onnx_and_the_gates_judge_that_model(after_drift):
    from tasks.gates import holdout_from, run_gates
    from tasks.models import build_model
    from tasks.onnx import serving_flavour

    spec, data = after_drift
    model = build_model(
        "logistic_regression_power", {}, task="binary", feature_types=data.feature_types
    ).fit(data.X_train, data.y_train)
    holdout = holdout_from(data, spec.gates)
    serving = serving_flavour(
        model, holdout.X, task="binary", feature_types=data.feature_types, timing_calls=20
    )
    assert serving.name == "onnx", serving.outcome
    assert serving.outcome.max_probability_diff < 1e-4
    report = run_gates(spec.gates, model, holdout, task="binary", latency_calls=10, serving=serving)
    assert report.serving_flavour == "onnx"
    onnx_p = serving.predict(holdout.X)[:, 1]
    assert np.allclose(onnx_p, model.predict_proba(holdout.X)[:, 1], atol=1e-4)
