"""Model families: each builds, fits and predicts on mixed data; the registry is extensible."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    merge_params,
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
    ("mlp", "binary", {"hidden_units": 16, "alpha": 1e-3, "learning_rate_init": 0.01}),
    ("mlp", "regression", {"hidden_units": 16, "layers": 2, "learning_rate_init": 0.01}),
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


# --- fixed values and the search space ------------------------------------------------
def test_a_fixed_value_wins_over_the_search_space() -> None:
    assert merge_params({"n_estimators": 60}, {"n_estimators": 51, "max_depth": 3}) == {
        "n_estimators": 60,
        "max_depth": 3,
    }
    assert "n_estimators" not in default_space("random_forest", fixed=["n_estimators"])
    assert "n_estimators" in default_space("random_forest")


def test_the_spec_refuses_a_key_both_fixed_and_searched() -> None:
    from tasks.spec import SpecError, StudySpec

    model = {
        "family": "random_forest",
        "fixed": {"n_estimators": 60},
        "space": {"n_estimators": {"type": "int", "low": 10, "high": 100}},
    }
    with pytest.raises(SpecError, match=r"\['n_estimators'\] are both fixed and searched"):
        StudySpec.parse({"name": "s", "model": model})


def test_a_trial_builds_the_fixed_value_not_the_suggested_one(mixed) -> None:
    """Issue 10's bug: a fixed 60 trees came out 51 (the suggestion overrode the fixed value)."""
    from tasks.data import split_study_data
    from tasks.evaluate import evaluate_trial
    from tasks.spec import StudySpec

    X, y, _ = mixed
    base = {
        "name": "f",
        "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
        "evaluation": {"folds": 2, "latency_calls": 10},
        "gates": {"performance": None},
    }
    fixed = StudySpec.parse(
        base | {"model": {"family": "random_forest", "fixed": {"n_estimators": 60}}}
    )
    plain = StudySpec.parse(base | {"model": {"family": "random_forest"}})
    data = split_study_data(X.assign(y=y), fixed)
    with_fixed = evaluate_trial(fixed, {"n_estimators": 51, "max_depth": 4}, data)
    sixty = evaluate_trial(plain, {"n_estimators": 60, "max_depth": 4}, data)
    fifty_one = evaluate_trial(plain, {"n_estimators": 51, "max_depth": 4}, data)
    # Same seed, same rows: the pickled forest of 60 trees is the same size byte for byte.
    assert with_fixed.values["model_bytes"] == sixty.values["model_bytes"]
    assert with_fixed.values["model_bytes"] != fifty_one.values["model_bytes"]
    assert with_fixed.values["roc_auc"] == sixty.values["roc_auc"]


# --- a family installed as a package reaches worker processes ---------------------------
PLUGIN_SOURCE = Path(__file__).parents[1] / "data" / "family_plugin"


@pytest.fixture(scope="module")
def installed_family(
    tmp_path_factory: pytest.TempPathFactory, pip_installed: Any
) -> Iterator[Path]:
    """Install tests/data/family_plugin with pip into a private folder on sys.path."""
    with pip_installed(PLUGIN_SOURCE, tmp_path_factory.mktemp("family")) as target:
        try:
            yield target
        finally:
            sys.modules.pop("banditflow_extra_trees", None)
            unregister_family("extra_trees")


def test_shipped_families_are_entry_points_too() -> None:
    from importlib.metadata import entry_points

    from contract import MODEL_FAMILY_ENTRY_POINT_GROUP

    declared = {ep.name: ep.load() for ep in entry_points(group=MODEL_FAMILY_ENTRY_POINT_GROUP)}
    for name in ("logistic_regression", "ridge", "random_forest", "hist_gradient_boosting", "mlp"):
        assert declared[name] is get_family(name)


@pytest.mark.slow
def test_a_family_installed_as_a_package_runs_in_a_process_pool_worker(
    installed_family: Path, mixed
) -> None:
    import tasks.models as models
    from tasks.data import split_study_data
    from tasks.evaluate import EvalConfig
    from tasks.executors import TrialPool
    from tasks.spec import StudySpec

    assert "extra_trees" not in models._FAMILIES  # nothing in this process registered it
    X, y, _ = mixed
    spec = StudySpec.parse(
        {
            "name": "p",
            "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
            "model": {"family": "random_forest"},
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )
    data = split_study_data(X.assign(y=y), spec)
    config = EvalConfig.from_spec(spec)
    config = EvalConfig(**{**config.__dict__, "family": "extra_trees"})
    with TrialPool(data, workers=1) as pool:
        outcome = pool.run(config, {"n_estimators": 15}, trial_id="0")
    assert outcome.status == "completed", outcome.reason
    assert outcome.values["roc_auc"] > 0.7
    assert "extra_trees" not in models._FAMILIES  # the worker found it by itself
    # ... and so does this process, by name, through the same entry point.
    assert get_family("extra_trees").builder.__module__ == "banditflow_extra_trees"


@pytest.mark.slow
def test_a_family_installed_as_a_package_runs_on_a_dask_worker(installed_family: Path, mixed):
    """A Dask worker process (spawned by its nanny) finds the family by its entry point."""
    distributed = pytest.importorskip("distributed")
    from tasks.data import split_study_data
    from tasks.evaluate import EvalConfig, evaluate_trial
    from tasks.spec import StudySpec

    X, y, _ = mixed
    spec = StudySpec.parse(
        {
            "name": "d",
            "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )
    data = split_study_data(X.assign(y=y), spec)
    config = EvalConfig(**{**EvalConfig.from_spec(spec).__dict__, "family": "extra_trees"})
    unregister_family("extra_trees")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        outcome = client.submit(evaluate_trial, config, {"n_estimators": 15}, data).result()
    assert outcome.status == "completed", outcome.reason
    assert outcome.values["roc_auc"] > 0.7
