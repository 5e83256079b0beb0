"""Model families: each builds, fits and predicts on mixed data; the registry is extensible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.models import (
    ModelFamilyError,
    build_model,
    default_space,
    families,
    get_family,
    infer_feature_types,
    register_family,
    unregister_family,
)
from tasks.spec import ParamSpec


@pytest.fixture(scope="module")
def mixed() -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(7)
    n = 300
    X = pd.DataFrame(
        {
            "amount": rng.normal(50, 10, n),
            "visits": rng.integers(0, 20, n).astype(float),
            "channel": rng.choice(["web", "app", "store"], n).astype(object),
        }
    )
    X.loc[::9, "amount"] = np.nan
    X.loc[::13, "channel"] = np.nan
    signal = (X["amount"].fillna(50) - 50) / 10 + (X["channel"] == "app") * 1.5
    y_cls = (signal + rng.normal(0, 0.5, n) > 0.3).astype(int)
    y_reg = signal + rng.normal(0, 0.1, n)
    return X, y_cls, y_reg


CASES = [
    ("logistic_regression", "binary", {"C": 0.5, "penalty": "l2"}),
    ("logistic_regression", "binary", {"C": 2.0, "penalty": "elasticnet", "l1_ratio": 0.4}),
    ("logistic_regression", "multiclass", {"penalty": "l1"}),
    ("ridge", "regression", {"alpha": 0.1}),
    ("random_forest", "binary", {"n_estimators": 20, "max_depth": 4}),
    ("random_forest", "regression", {"n_estimators": 20}),
    ("hist_gradient_boosting", "binary", {"max_iter": 30, "learning_rate": 0.1}),
    ("hist_gradient_boosting", "regression", {"max_iter": 30}),
]


@pytest.mark.parametrize(("family", "task", "params"), CASES)
def test_family_fits_and_predicts_mixed_data_with_nans(mixed, family, task, params) -> None:
    X, y_cls, y_reg = mixed
    y = y_reg if task == "regression" else y_cls
    if task == "multiclass":
        y = pd.Series(np.digitize(y_reg, [-0.5, 0.5]))
    pipe = build_model(family, params, task=task, X=X, seed=1)
    pipe.fit(X, y)
    # Unseen category and missing values at predict time must not break serving.
    new = pd.DataFrame(
        {"amount": [np.nan, 55.0], "visits": [3.0, np.nan], "channel": ["kiosk", None]}
    )
    pred = pipe.predict(new)
    assert len(pred) == 2
    if task == "regression":
        assert pipe.score(X, y) > 0.5  # R^2 on a learnable signal
    else:
        assert pipe.score(X, y) > 0.6
        proba = pipe.predict_proba(new)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert pipe.steps[0][0] == "preprocess"  # preprocessing travels with the model


def test_estimators_are_single_threaded() -> None:
    for family in ("random_forest",):
        pipe = build_model(family, {}, task="binary", feature_types={"a": "numeric"})
        assert pipe.named_steps["model"].n_jobs == 1


def test_logistic_maps_penalty_to_l1_ratio_and_solver() -> None:
    types = {"a": "numeric"}
    l2 = build_model("logistic_regression", {"penalty": "l2"}, task="binary", feature_types=types)
    en = build_model(
        "logistic_regression",
        {"penalty": "elasticnet", "l1_ratio": 0.3},
        task="binary",
        feature_types=types,
    )
    assert (l2["model"].l1_ratio, l2["model"].solver) == (0.0, "lbfgs")
    assert (en["model"].l1_ratio, en["model"].solver) == (0.3, "saga")


def test_default_spaces_validate_as_spec_params_and_use_log_scales() -> None:
    for family in families():
        space = default_space(family)
        parsed = {name: ParamSpec.model_validate(p) for name, p in space.items()}
        assert parsed
    lr = default_space("logistic_regression")
    assert lr["C"]["log"] is True
    assert lr["l1_ratio"]["condition"] == {"penalty": ["elasticnet"]}
    assert default_space("hist_gradient_boosting")["learning_rate"]["log"] is True
    # A copy: editing it does not change the registry.
    lr["C"]["low"] = 99
    assert default_space("logistic_regression")["C"]["low"] == 1e-3


def test_unknown_family_and_unsupported_task_errors() -> None:
    with pytest.raises(ModelFamilyError, match="unknown model family 'svm'"):
        get_family("svm")
    with pytest.raises(ModelFamilyError, match="does not support task 'regression'"):
        build_model("logistic_regression", {}, task="regression", feature_types={"a": "numeric"})
    with pytest.raises(ModelFamilyError, match="feature_types or an X sample"):
        build_model("random_forest", {}, task="binary")
    with pytest.raises(ModelFamilyError, match="rejected parameters"):
        build_model("ridge", {"nonsense": 1}, task="regression", feature_types={"a": "numeric"})


def test_xgboost_without_the_extra_names_the_pip_install() -> None:
    if "xgboost" in families():
        pytest.skip("xgboost is installed here")
    with pytest.raises(ModelFamilyError, match=r"pip install 'banditflow\[xgboost\]'"):
        get_family("xgboost")


def test_register_a_new_family(mixed) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    def knn(params, task, seed):
        return KNeighborsClassifier(n_neighbors=int(params.pop("n_neighbors", 5)), **params)

    register_family(
        "knn",
        knn,
        {"n_neighbors": {"type": "int", "low": 1, "high": 30}},
        tasks=("binary",),
        preprocessing="linear",
    )
    try:
        assert "knn" in families()
        with pytest.raises(ModelFamilyError, match="already registered"):
            register_family("knn", knn, {})
        X, y, _ = mixed
        pipe = build_model("knn", {"n_neighbors": 7}, task="binary", X=X).fit(X, y)
        assert pipe["model"].n_neighbors == 7
        assert pipe.score(X, y) > 0.6
    finally:
        unregister_family("knn")
    assert "knn" not in families()


def test_infer_feature_types() -> None:
    X = pd.DataFrame({"n": [1.0], "i": [1], "b": [True], "s": ["x"], "c": pd.Categorical(["a"])})
    assert infer_feature_types(X) == {
        "n": "numeric",
        "i": "numeric",
        "b": "numeric",
        "s": "categorical",
        "c": "categorical",
    }
