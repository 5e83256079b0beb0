"""ONNX serving flavour: every shipped family converts and agrees, or falls back with a tag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contract import TAG_ONNX_FALLBACK, TAG_ONNX_URI, TAG_SERVING_FLAVOUR
from tasks.onnx import (
    DEFAULT_ATOL,
    convert_and_check,
    input_types,
    load_session,
    record_serving_flavour,
    session_predict,
)

FEATURES: dict[str, Any] = {
    "x1": "numeric",
    "x2": "numeric",
    "visits": "numeric",
    "is_premium": "numeric",
    "channel": "categorical",
    "region": "categorical",
}
# Small but real: each family's default preprocessing (imputer, scaler or ordinal/one-hot).
FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 0.5},
    "random_forest": {"n_estimators": 40, "max_depth": 8},
    "hist_gradient_boosting": {"max_iter": 40, "learning_rate": 0.1},
    "mlp": {"hidden_units": 32, "learning_rate_init": 0.01},
}


def make_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Numeric (with gaps), 0/1 and string columns, like ``tasks.data`` hands them over."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n)),
            "visits": rng.poisson(3, n).astype(float),
            "is_premium": rng.integers(0, 2, n),
            "channel": rng.choice(["web", "app", "store", "missing"], n),
            "region": rng.choice(["north", "south", "east"], n),
        }
    )
    logit = 1.4 * X.x1 - 0.8 * X.x2.fillna(0) + 0.2 * X.visits + 0.7 * (X.channel == "app") - 0.9
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def frames():
    X, y = make_frame(1200, seed=5)
    Xh, yh = make_frame(400, seed=6)
    return X, y, Xh, yh


def _fit(family: str, X: pd.DataFrame, y: np.ndarray, task: Any = "binary") -> Any:
    from tasks.models import build_model

    params = FAMILY_PARAMS[family]
    return build_model(family, params, task=task, feature_types=FEATURES, seed=0).fit(X, y)


def test_inputs_are_one_typed_column_each(frames):
    X, _, _, _ = frames
    types = {name: type(t).__name__ for name, t in input_types(X, FEATURES)}
    assert types == {
        "x1": "FloatTensorType",
        "x2": "FloatTensorType",
        "visits": "FloatTensorType",
        "is_premium": "FloatTensorType",
        "channel": "StringTensorType",
        "region": "StringTensorType",
    }


@pytest.mark.parametrize("family", sorted(FAMILY_PARAMS))
def test_every_shipped_family_converts_and_agrees_with_sklearn(frames, family):
    X, y, Xh, _ = frames
    model = _fit(family, X, y)
    outcome, onnx_bytes = convert_and_check(
        model, Xh, task="binary", feature_types=FEATURES, timing_calls=30
    )
    assert outcome.converted, outcome.reason
    assert outcome.max_probability_diff is not None
    assert outcome.max_probability_diff <= DEFAULT_ATOL
    assert outcome.label_mismatches == 0 and outcome.rows_checked == len(Xh)
    if outcome.flavour == "onnx":
        assert onnx_bytes is not None
        assert outcome.onnx_ms_p95 is not None and outcome.sklearn_ms_p95 is not None
        assert outcome.onnx_ms_p95 < outcome.sklearn_ms_p95
        session = load_session(onnx_bytes)
        assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
        assert [i.name for i in session.get_inputs()] == list(X.columns)
    else:  # agreement holds; only the timing can keep sklearn, and the reason says so
        assert outcome.reason.startswith("ONNX is not faster")


def test_a_regressor_converts_too(frames):
    X, y, Xh, _ = frames
    target = X.x1.to_numpy() * 2 + X.visits.to_numpy()
    model = _fit("hist_gradient_boosting", X, target, task="regression")
    outcome, _ = convert_and_check(model, Xh, task="regression", timing_calls=20)
    assert outcome.converted and outcome.label_mismatches == 0, outcome.reason


def test_a_step_skl2onnx_cannot_convert_falls_back(frames):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y, Xh, _ = frames
    model = _fit("logistic_regression", X, y)
    custom = Pipeline([("custom", FunctionTransformer(_identity)), *model.steps]).fit(X, y)
    outcome, onnx_bytes = convert_and_check(custom, Xh, task="binary", timing_calls=10)
    assert outcome.flavour == "sklearn" and onnx_bytes is None and not outcome.converted
    assert outcome.reason.startswith("conversion failed")


def test_a_conversion_that_disagrees_falls_back(frames):
    """Native categorical splits: skl2onnx converts them, wrongly; the check catches it."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    from tasks.models import build_preprocessor

    X, y, Xh, _ = frames
    pre = build_preprocessor(FEATURES, "tree")  # numeric first, then channel, region
    model = Pipeline(
        [
            ("preprocess", pre),
            ("model", HistGradientBoostingClassifier(max_iter=30, categorical_features=[4, 5])),
        ]
    ).fit(X, y)
    outcome, onnx_bytes = convert_and_check(model, Xh, task="binary", timing_calls=10)
    assert outcome.converted and outcome.flavour == "sklearn" and onnx_bytes is None
    assert outcome.reason.startswith("ONNX disagrees with sklearn")


def _identity(X: Any) -> Any:
    return X


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)


@pytest.mark.integration
@pytest.mark.slow
def test_the_flavour_is_tagged_and_the_onnx_uri_downloads(tmp_path, frames):
    import mlflow

    from tasks.registry import register_trial
    from tasks.settings import PipelineSettings
    from tasks.spec import StudySpec
    from tasks.tracking import configure_mlflow, ensure_experiment

    X, y, Xh, _ = frames
    settings = PipelineSettings(home=tmp_path).ensure_dirs()
    client = configure_mlflow(settings)
    experiment_id = ensure_experiment("onnx-study", settings)
    spec = StudySpec.parse({"name": "served", "model": {"family": "random_forest"}})
    fast, fitted = register_trial(
        client,
        spec,
        Trial("1", FAMILY_PARAMS["random_forest"]),
        X,
        y,
        study="onnx-study",
        experiment_id=experiment_id,
        feature_types=FEATURES,
    )
    assert fitted is not None
    model: Any = fitted
    outcome, onnx_bytes = convert_and_check(model, Xh, task="binary", timing_calls=30)
    tags = record_serving_flavour(client, spec.name, fast.version, fast.run_id, outcome, onnx_bytes)
    stored = client.get_model_version(spec.name, fast.version).tags
    assert stored[TAG_SERVING_FLAVOUR] == outcome.flavour == tags[TAG_SERVING_FLAVOUR]
    if outcome.flavour == "onnx":
        # What the rollout service does: fetch the URI, open a one-thread session, predict.
        path = mlflow.artifacts.download_artifacts(stored[TAG_ONNX_URI], dst_path=str(tmp_path))
        labels, proba = session_predict(load_session(path), Xh)
        assert np.abs(proba - model.predict_proba(Xh)).max() <= DEFAULT_ATOL
        assert (labels == model.predict(Xh)).all()
        assert TAG_ONNX_FALLBACK not in stored
    else:
        assert stored[TAG_ONNX_FALLBACK].startswith("ONNX is not faster")

    # A pipeline that cannot convert: tagged sklearn with the reason, no URI.
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    custom = Pipeline([("custom", FunctionTransformer(_identity)), *model.steps]).fit(X, y)
    slow, _ = register_trial(
        client,
        spec,
        Trial("2", {"n_estimators": 10}),
        X,
        y,
        study="onnx-study",
        experiment_id=experiment_id,
        feature_types=FEATURES,
    )
    outcome, onnx_bytes = convert_and_check(custom, Xh, task="binary", timing_calls=10)
    record_serving_flavour(client, spec.name, slow.version, slow.run_id, outcome, onnx_bytes)
    stored = client.get_model_version(spec.name, slow.version).tags
    assert stored[TAG_SERVING_FLAVOUR] == "sklearn" and TAG_ONNX_URI not in stored
    assert stored[TAG_ONNX_FALLBACK].startswith("conversion failed")
