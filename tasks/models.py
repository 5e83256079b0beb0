"""Model families: a registry of sklearn pipelines (preprocessing + estimator) found by name.

A family turns one trial's parameters into a ``Pipeline`` whose first step handles missing
values, scaling and categorical encoding, so what MLflow stores is what serves. The
transformers are the ones skl2onnx converts (SimpleImputer, StandardScaler, PowerTransformer,
OneHotEncoder(handle_unknown="ignore"), OrdinalEncoder), and categorical columns are strings.
Estimators run with ``n_jobs=1``: the flow parallelises over trials, not inside one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from contract import MODEL_FAMILY_ENTRY_POINT_GROUP

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

TaskType = Literal["binary", "multiclass", "regression"]
FeatureType = Literal["numeric", "categorical"]
# linear: impute, standardize, one-hot; power: the same with a Yeo-Johnson transform fitted
# per numeric column (log-like on skewed counts); tree: impute, ordinal codes.
Preprocessing = Literal["linear", "power", "tree"]
ALL_TASKS: tuple[TaskType, ...] = ("binary", "multiclass", "regression")
CLASSIFICATION: tuple[TaskType, ...] = ("binary", "multiclass")

#: Builder signature: ``builder(params, task, seed) -> estimator`` (no preprocessing).
Builder = Callable[[dict[str, Any], TaskType, int], "BaseEstimator"]


class ModelFamilyError(ValueError):
    """A model family is unknown, does not support the task, or got bad parameters."""


@dataclass(frozen=True)
class Fidelity:
    """What a budget-aware pruner (tasks/pruners.py) may cut a trial's evaluation by.

    ``rows``: each fold's training rows subsampled; ``iterations``: the estimator's
    ``param`` (boosting iterations, trees), grown by warm start from rung to rung;
    ``folds``: the CV folds evaluated so far.
    """

    kind: Literal["rows", "iterations", "folds"] = "rows"
    param: str | None = None


@dataclass(frozen=True)
class ModelFamily:
    """A named estimator builder, its default search space and the tasks it supports."""

    name: str
    builder: Builder
    default_space: Mapping[str, Mapping[str, Any]]
    tasks: tuple[TaskType, ...]
    preprocessing: Preprocessing
    fidelity: Fidelity = Fidelity()


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(
    name: str,
    builder: Builder,
    default_space: Mapping[str, Mapping[str, Any]],
    *,
    tasks: Iterable[TaskType] = ALL_TASKS,
    preprocessing: Preprocessing = "tree",
    replace: bool = False,
    fidelity: Fidelity | None = None,
) -> ModelFamily:
    """Register a model family under ``name`` (``replace=True`` to override one)."""
    tasks = tuple(tasks)
    unknown = set(tasks) - set(ALL_TASKS)
    if unknown:
        raise ModelFamilyError(f"tasks must be among {ALL_TASKS}, got {sorted(unknown)}")
    if preprocessing not in ("linear", "power", "tree"):
        raise ModelFamilyError(
            f"preprocessing must be 'linear', 'power' or 'tree', got {preprocessing=}"
        )
    if name in _FAMILIES and not replace:
        raise ModelFamilyError(
            f"model family {name!r} is already registered; pass replace=True to override it"
        )
    if fidelity is not None and fidelity.kind == "iterations" and not fidelity.param:
        raise ModelFamilyError("an 'iterations' fidelity names its parameter, e.g. 'max_iter'")
    family = ModelFamily(
        name, builder, dict(default_space), tasks, preprocessing, fidelity or Fidelity()
    )
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests and plugins that register temporary ones)."""
    _FAMILIES.pop(name, None)


def families() -> list[str]:
    """Return the registered family names."""
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """Return the family registered as ``name``; the error lists the known ones.

    A name not registered in this process is looked up in the entry-point group
    ``banditflow.model_families`` first, so a family a package installs reaches every
    process (pool and Dask workers included) without anyone importing it by hand.
    """
    if name not in _FAMILIES:
        load_family_plugins()
    if name in _FAMILIES:
        return _FAMILIES[name]
    if name in _PLUGIN_ERRORS:
        raise ModelFamilyError(f"model family {name!r} failed to load: {_PLUGIN_ERRORS[name]}")
    if name == "xgboost":
        raise ModelFamilyError(
            "model family 'xgboost' needs the xgboost package: pip install 'banditflow[xgboost]'"
        )
    raise ModelFamilyError(
        f"unknown model family {name!r}; choose from {families()}, register one with "
        "tasks.models.register_family, or install a package that declares it in the "
        f"{MODEL_FAMILY_ENTRY_POINT_GROUP!r} entry-point group"
    )


_PLUGIN_ERRORS: dict[str, str] = {}


def load_family_plugins() -> list[str]:
    """Register every family declared in the ``banditflow.model_families`` entry points.

    An entry point ``name = "module:OBJECT"`` names a :class:`ModelFamily` (registered under
    ``name``) or a function of no arguments that registers or returns one. Families already
    registered are left alone; a plugin that fails to load is remembered, and its error is
    what :func:`get_family` says when that family is asked for. Returns the names added.
    """
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=MODEL_FAMILY_ENTRY_POINT_GROUP):
        if ep.name in _FAMILIES:
            continue
        try:
            obj = ep.load()
            family = obj if isinstance(obj, ModelFamily) else obj()
            if isinstance(family, ModelFamily) and ep.name not in _FAMILIES:
                _FAMILIES[ep.name] = replace_name(family, ep.name)
            if ep.name not in _FAMILIES:
                raise ModelFamilyError(f"{ep.value} did not give a ModelFamily")
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            _PLUGIN_ERRORS[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        _PLUGIN_ERRORS.pop(ep.name, None)
        added.append(ep.name)
    return added


def family_modules() -> list[str]:
    """Return the modules the registered families and entry points come from (preloads)."""
    from importlib.metadata import entry_points

    modules = {f.builder.__module__ for f in _FAMILIES.values()}
    modules |= {ep.module for ep in entry_points(group=MODEL_FAMILY_ENTRY_POINT_GROUP)}
    return sorted(modules)


def replace_name(family: ModelFamily, name: str) -> ModelFamily:
    """Return ``family`` under another name (an entry point's name is the family's)."""
    import dataclasses

    return family if family.name == name else dataclasses.replace(family, name=name)


def default_space(family: str, *, fixed: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Return a copy of the family's default search space without the ``fixed`` keys."""
    space = get_family(family).default_space
    return copy.deepcopy({k: dict(v) for k, v in space.items() if k not in set(fixed)})


# A trial parameter of the data, not of the estimator: the weight of the study's prior rows
# (``data.history_days``) in every fit. build_model never passes it to a family's builder.
HISTORY_WEIGHT = "history_weight"


def history_weight(params: Mapping[str, Any]) -> float:
    """Return the trial's weight of the prior rows (0: not used); refuse a bad one."""
    import math

    value = params.get(HISTORY_WEIGHT)
    if value is None:
        return 0.0
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise ModelFamilyError(f"{HISTORY_WEIGHT} must be a finite number >= 0, got {value!r}")
    return weight


def fit_model(
    model: Pipeline,
    X: pd.DataFrame,
    y: Any,
    params: Mapping[str, Any],
    history: tuple[pd.DataFrame, Any] | None = None,
) -> Pipeline:
    """Fit ``build_model``'s pipeline on ``X, y`` and, weighted, the prior rows ``history``.

    With ``params[history_weight] = w > 0`` and prior rows, the estimator sees them with
    sample weight ``w`` beside the rows' weight 1: the prior's likelihood raised to ``w``
    (a power prior, Ibrahim & Chen 2000). The preprocessing is fitted on both, unweighted.
    """
    import numpy as np
    import pandas as pd
    from sklearn.utils.validation import has_fit_parameter

    weight = history_weight(params)
    if weight == 0 or history is None or len(history[0]) == 0:
        return model.fit(X, y)
    estimator = model.steps[-1][1]
    if not has_fit_parameter(estimator, "sample_weight"):
        raise ModelFamilyError(
            f"{type(estimator).__name__} takes no sample_weight, so {HISTORY_WEIGHT} cannot "
            "weight the prior rows: search another family or drop the parameter"
        )
    X_all = pd.concat([X, history[0][list(X.columns)]], ignore_index=True)
    y_all = pd.concat([pd.Series(np.asarray(y)), pd.Series(np.asarray(history[1]))])
    weights = np.r_[np.ones(len(X)), np.full(len(history[0]), weight)]
    return model.fit(X_all, y_all.to_numpy(), **{f"{model.steps[-1][0]}__sample_weight": weights})


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
    """Return the ColumnTransformer: linear (scale or power, one-hot) or tree (ordinal codes)."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        OneHotEncoder,
        OrdinalEncoder,
        PowerTransformer,
        StandardScaler,
    )

    numeric = [c for c, t in feature_types.items() if t == "numeric"]
    categorical = [c for c, t in feature_types.items() if t == "categorical"]
    if not numeric and not categorical:
        raise ModelFamilyError("no feature columns: feature_types is empty")
    if kind in ("linear", "power"):
        scale = StandardScaler() if kind == "linear" else PowerTransformer(standardize=True)
        num_steps = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", scale)])
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
    own = {k: v for k, v in params.items() if k != HISTORY_WEIGHT}  # the data's, not the model's
    try:
        estimator = fam.builder(own, task, seed)
    except TypeError as exc:
        raise ModelFamilyError(
            f"model family {family!r} rejected parameters {dict(params)}: {exc} "
            f"(its default space has {sorted(known)})"
        ) from exc
    return Pipeline(
        [("preprocess", build_preprocessor(feature_types, fam.preprocessing)), ("model", estimator)]
    )


# The shipped families (also declared as entry points, so workers find them the same way).
import tasks.families  # noqa: E402, F401
