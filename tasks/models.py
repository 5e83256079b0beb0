"""Model families: a registry of sklearn pipelines (preprocessing + estimator) found by name.

A family turns one trial's parameters into a ``Pipeline`` whose first step handles missing
values, scaling and categorical encoding, so what MLflow stores is what serves. The
transformers are the ones skl2onnx converts (SimpleImputer, StandardScaler,
OneHotEncoder(handle_unknown="ignore"), OrdinalEncoder), and categorical columns are strings.
Estimators run with ``n_jobs=1``: the flow parallelises over trials, not inside one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

TaskType = Literal["binary", "multiclass", "regression"]
FeatureType = Literal["numeric", "categorical"]
Preprocessing = Literal["linear", "tree"]
ALL_TASKS: tuple[TaskType, ...] = ("binary", "multiclass", "regression")
CLASSIFICATION: tuple[TaskType, ...] = ("binary", "multiclass")

#: Builder signature: ``builder(params, task, seed) -> estimator`` (no preprocessing).
Builder = Callable[[dict[str, Any], TaskType, int], "BaseEstimator"]


class ModelFamilyError(ValueError):
    """A model family is unknown, does not support the task, or got bad parameters."""


@dataclass(frozen=True)
class ModelFamily:
    """A named estimator builder, its default search space and the tasks it supports."""

    name: str
    builder: Builder
    default_space: Mapping[str, Mapping[str, Any]]
    tasks: tuple[TaskType, ...]
    preprocessing: Preprocessing


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(
    name: str,
    builder: Builder,
    default_space: Mapping[str, Mapping[str, Any]],
    *,
    tasks: Iterable[TaskType] = ALL_TASKS,
    preprocessing: Preprocessing = "tree",
    replace: bool = False,
) -> ModelFamily:
    """Register a model family under ``name`` (``replace=True`` to override one)."""
    tasks = tuple(tasks)
    unknown = set(tasks) - set(ALL_TASKS)
    if unknown:
        raise ModelFamilyError(f"tasks must be among {ALL_TASKS}, got {sorted(unknown)}")
    if preprocessing not in ("linear", "tree"):
        raise ModelFamilyError(f"preprocessing must be 'linear' or 'tree', got {preprocessing=}")
    if name in _FAMILIES and not replace:
        raise ModelFamilyError(
            f"model family {name!r} is already registered; pass replace=True to override it"
        )
    family = ModelFamily(name, builder, dict(default_space), tasks, preprocessing)
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests and plugins that register temporary ones)."""
    _FAMILIES.pop(name, None)


def families() -> list[str]:
    """Return the registered family names."""
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """Return the family registered as ``name``; the error lists the known ones."""
    if name == "xgboost" and name not in _FAMILIES:
        raise ModelFamilyError(
            "model family 'xgboost' needs the xgboost package: pip install 'banditflow[xgboost]'"
        )
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ModelFamilyError(
            f"unknown model family {name!r}; choose from {families()} "
            "or add one with tasks.models.register_family"
        ) from None


def default_space(family: str, *, fixed: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Return a copy of the family's default search space without the ``fixed`` keys."""
    space = get_family(family).default_space
    return copy.deepcopy({k: dict(v) for k, v in space.items() if k not in set(fixed)})


def merge_params(fixed: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Return one trial's parameters: the searched ones, overridden by the fixed ones.

    A value the spec fixes is the user's decision; the search space never overrides it.
    """
    return {**dict(params), **dict(fixed)}


def infer_feature_types(X: pd.DataFrame) -> dict[str, FeatureType]:
    """Classify columns: numbers and booleans are numeric, everything else categorical."""
    import pandas as pd

    types: dict[str, FeatureType] = {}
    for column in X.columns:
        dtype = X[column].dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        types[str(column)] = "numeric" if numeric else "categorical"
    return types


def build_preprocessor(feature_types: Mapping[str, FeatureType], kind: Preprocessing) -> Any:
    """Return the ColumnTransformer for linear (scale, one-hot) or tree (ordinal) models."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = [c for c, t in feature_types.items() if t == "numeric"]
    categorical = [c for c, t in feature_types.items() if t == "categorical"]
    if not numeric and not categorical:
        raise ModelFamilyError("no feature columns: feature_types is empty")
    if kind == "linear":
        num_steps = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        encoder: Any = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    else:
        num_steps = Pipeline([("impute", SimpleImputer(strategy="median"))])
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float64
        )
    # No imputer for categoricals: skl2onnx converts a string imputer only when the missing
    # marker is a string, so tasks/data.py writes missing categories as "missing" and the
    # encoders treat anything unseen (NaN included) as unknown.
    cat_steps = Pipeline([("encode", encoder)])
    transformers = []
    if numeric:
        transformers.append(("num", num_steps, numeric))
    if categorical:
        transformers.append(("cat", cat_steps, categorical))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def build_model(
    family: str,
    params: Mapping[str, Any],
    *,
    task: TaskType,
    feature_types: Mapping[str, FeatureType] | None = None,
    X: pd.DataFrame | None = None,
    seed: int = 0,
) -> Pipeline:
    """Return an unfitted ``Pipeline(preprocess, model)`` for one trial's parameters."""
    from sklearn.pipeline import Pipeline

    fam = get_family(family)
    if task not in fam.tasks:
        raise ModelFamilyError(
            f"model family {family!r} does not support task {task!r} (it supports {fam.tasks})"
        )
    if feature_types is None:
        if X is None:
            raise ModelFamilyError("build_model needs feature_types or an X sample")
        feature_types = infer_feature_types(X)
    known = set(fam.default_space)
    try:
        estimator = fam.builder(dict(params), task, seed)
    except TypeError as exc:
        raise ModelFamilyError(
            f"model family {family!r} rejected parameters {dict(params)}: {exc} "
            f"(its default space has {sorted(known)})"
        ) from exc
    return Pipeline(
        [("preprocess", build_preprocessor(feature_types, fam.preprocessing)), ("model", estimator)]
    )


# --- built-in families -------------------------------------------------------------------


def _pop_int(params: dict[str, Any], key: str, default: int | None) -> int | None:
    value = params.pop(key, default)
    return None if value is None else int(value)


def _logistic(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression

    penalty = params.pop("penalty", "l2")
    ratio = float(params.pop("l1_ratio", 0.5))
    # sklearn 1.8 deprecated `penalty`: the spec keeps it (readable, and it makes l1_ratio
    # conditional) and maps it to l1_ratio here. lbfgs is fast for l2; only saga does l1.
    l1_ratio = {"l2": 0.0, "l1": 1.0, "elasticnet": ratio}.get(penalty)
    if l1_ratio is None:
        raise ModelFamilyError(f"penalty must be l2, l1 or elasticnet, got {penalty=}")
    solver = "lbfgs" if l1_ratio == 0.0 else "saga"
    return LogisticRegression(
        C=float(params.pop("C", 1.0)),
        l1_ratio=l1_ratio,
        solver=params.pop("solver", solver),
        max_iter=_pop_int(params, "max_iter", 500),
        class_weight=params.pop("class_weight", None),
        random_state=seed,
        **params,
    )


def _ridge(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=float(params.pop("alpha", 1.0)), **params)


def _random_forest(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestRegressor if task == "regression" else RandomForestClassifier
    return cls(
        n_estimators=_pop_int(params, "n_estimators", 100),
        max_depth=_pop_int(params, "max_depth", None),
        min_samples_leaf=_pop_int(params, "min_samples_leaf", 1),
        max_features=params.pop("max_features", "sqrt"),
        random_state=seed,
        n_jobs=1,
        **params,
    )


def _hist_gradient_boosting(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    return cls(
        learning_rate=float(params.pop("learning_rate", 0.1)),
        max_iter=_pop_int(params, "max_iter", 100),
        max_leaf_nodes=_pop_int(params, "max_leaf_nodes", 31),
        min_samples_leaf=_pop_int(params, "min_samples_leaf", 20),
        l2_regularization=float(params.pop("l2_regularization", 0.0)),
        random_state=seed,
        **params,
    )


def _xgboost(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    import xgboost

    cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
    return cls(random_state=seed, n_jobs=1, tree_method="hist", **params)


register_family(
    "logistic_regression",
    _logistic,
    {
        "C": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
        "penalty": {"type": "categorical", "choices": ["l2", "l1", "elasticnet"]},
        "l1_ratio": {
            "type": "float",
            "low": 0.05,
            "high": 0.95,
            "condition": {"penalty": ["elasticnet"]},
        },
    },
    tasks=CLASSIFICATION,
    preprocessing="linear",
)
register_family(
    "ridge",
    _ridge,
    {"alpha": {"type": "float", "low": 1e-4, "high": 100.0, "log": True}},
    tasks=("regression",),
    preprocessing="linear",
)
register_family(
    "random_forest",
    _random_forest,
    {
        "n_estimators": {"type": "int", "low": 50, "high": 300, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 16},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 32, "log": True},
        "max_features": {"type": "categorical", "choices": ["sqrt", "log2", 0.5]},
    },
)
register_family(
    "hist_gradient_boosting",
    _hist_gradient_boosting,
    {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "max_iter": {"type": "int", "low": 50, "high": 400, "log": True},
        "max_leaf_nodes": {"type": "int", "low": 8, "high": 64, "log": True},
        "min_samples_leaf": {"type": "int", "low": 5, "high": 100, "log": True},
        "l2_regularization": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
    },
)

try:  # xgboost is an extra: register it only when installed (get_family names the pip line).
    import importlib.util

    _HAS_XGBOOST = importlib.util.find_spec("xgboost") is not None
except ValueError:  # pragma: no cover - a broken install
    _HAS_XGBOOST = False
if _HAS_XGBOOST:  # pragma: no cover - not installed in CI
    register_family(
        "xgboost",
        _xgboost,
        {
            "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "n_estimators": {"type": "int", "low": 50, "high": 400, "log": True},
            "max_depth": {"type": "int", "low": 2, "high": 10},
            "subsample": {"type": "float", "low": 0.5, "high": 1.0},
            "reg_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
        },
    )
