"""The shipped model families: sklearn estimators behind ``tasks.models.register_family``.

Each is also declared in pyproject.toml's ``banditflow.model_families`` entry points (the
ModelFamily objects below), the same way a third-party package adds its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.models import CLASSIFICATION, Fidelity, ModelFamilyError, TaskType, register_family

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


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


LOGISTIC_REGRESSION = register_family(
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
# The same model on Yeo-Johnson-transformed numerics: the demo's counts are skewed and act
# on the log-odds through their logarithm, which a few thousand rows cannot learn from a
# linear term (a retrain after a drift has no more; tasks/retrain_family.py screens both).
LOGISTIC_REGRESSION_POWER = register_family(
    "logistic_regression_power",
    _logistic,
    dict(LOGISTIC_REGRESSION.default_space),
    tasks=CLASSIFICATION,
    preprocessing="power",
)
RIDGE = register_family(
    "ridge",
    _ridge,
    {"alpha": {"type": "float", "low": 1e-4, "high": 100.0, "log": True}},
    tasks=("regression",),
    preprocessing="linear",
)
RANDOM_FOREST = register_family(
    "random_forest",
    _random_forest,
    {
        "n_estimators": {"type": "int", "low": 50, "high": 300, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 16},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 32, "log": True},
        "max_features": {"type": "categorical", "choices": ["sqrt", "log2", 0.5]},
    },
    fidelity=Fidelity("iterations", "n_estimators"),  # trees added by warm start
)
HIST_GRADIENT_BOOSTING = register_family(
    "hist_gradient_boosting",
    _hist_gradient_boosting,
    {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "max_iter": {"type": "int", "low": 50, "high": 400, "log": True},
        "max_leaf_nodes": {"type": "int", "low": 8, "high": 64, "log": True},
        "min_samples_leaf": {"type": "int", "low": 5, "high": 100, "log": True},
        "l2_regularization": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
    },
    fidelity=Fidelity("iterations", "max_iter"),  # boosting iterations, by warm start
)


def _mlp(params: dict[str, Any], task: TaskType, seed: int) -> BaseEstimator:
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    units = _pop_int(params, "hidden_units", 64) or 64
    layers = _pop_int(params, "layers", 1) or 1
    if not 1 <= layers <= 4:
        raise ModelFamilyError(f"mlp: layers must be 1 to 4, got {layers=}")
    cls = MLPRegressor if task == "regression" else MLPClassifier
    return cls(
        hidden_layer_sizes=(units,) * layers,
        alpha=float(params.pop("alpha", 1e-4)),
        learning_rate_init=float(params.pop("learning_rate_init", 1e-3)),
        max_iter=_pop_int(params, "max_iter", 300),
        early_stopping=bool(params.pop("early_stopping", False)),
        random_state=seed,
        **params,
    )


# A multi-layer perceptron: matrix products, so ONNX Runtime's quantization has work to do.
MLP = register_family(
    "mlp",
    _mlp,
    {
        "hidden_units": {"type": "int", "low": 16, "high": 256, "log": True},
        "layers": {"type": "int", "low": 1, "high": 2},
        "alpha": {"type": "float", "low": 1e-5, "high": 10.0, "log": True},
        "learning_rate_init": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    },
    preprocessing="linear",
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
