"""One way to score, one way to time, one way to read a direction: every caller uses these.

- :func:`score` turns labels and what a model returned (class probabilities, or predictions
  for regression) into one metric. CV evaluation, the gates, the ONNX comparison and
  compression all call it, so the same model gets the same number everywhere.
- :mod:`tasks.timing` is the one way to time a prediction (CPU milliseconds per row).
- :func:`sign` and :func:`better` are the only places that read ``maximize``/``minimize``.

A metric is a registration (:func:`register_metric`); the spec's validation and every
evaluation see a registered metric with no other edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Direction = Literal["minimize", "maximize"]
TaskType = Literal["binary", "multiclass", "regression"]
DIRECTIONS: tuple[Direction, ...] = ("minimize", "maximize")
ALL_TASKS: tuple[TaskType, ...] = ("binary", "multiclass", "regression")
CLASSIFICATION: tuple[TaskType, ...] = ("binary", "multiclass")

#: ``fn(y_true, scores, classes) -> float``: ``scores`` is the probability matrix when the
#: metric needs probabilities, else the predicted labels (classification) or predictions.
MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]

# Measured on every trial whatever the task (not scored from predictions), so they can be
# objectives and gates too.
SYSTEM_METRICS: dict[str, Direction] = {"latency_ms": "minimize", "model_bytes": "minimize"}


class MetricError(ValueError):
    """A metric is unknown, not defined for the task, or was given the wrong inputs."""


# --- directions ---------------------------------------------------------------------------
def check_direction(direction: str) -> Direction:
    """Return ``direction`` if it is ``maximize`` or ``minimize``; raise otherwise."""
    if direction not in DIRECTIONS:
        raise MetricError(f"direction must be 'maximize' or 'minimize', got {direction=}")
    return direction  # type: ignore[return-value]


def sign(direction: str) -> float:
    """Return the factor that turns a value into a loss: -1 to maximize, +1 to minimize."""
    return -1.0 if check_direction(direction) == "maximize" else 1.0


def better(a: float, b: float, direction: str) -> bool:
    """Return whether ``a`` is strictly better than ``b`` (NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return sign(direction) * a < sign(direction) * b


# --- the registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A registered metric: how to compute it, which way is better, and on what."""

    name: str
    fn: MetricFn
    direction: Direction
    needs_proba: bool
    tasks: tuple[TaskType, ...]


_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    fn: MetricFn,
    direction: str,
    needs_proba: bool,
    *,
    tasks: Iterable[TaskType] = CLASSIFICATION,
    replace: bool = False,
) -> Metric:
    """Register ``fn`` as metric ``name`` (``replace=True`` to override one)."""
    tasks = tuple(tasks)
    if unknown := set(tasks) - set(ALL_TASKS):
        raise MetricError(f"tasks must be among {ALL_TASKS}, got {sorted(unknown)}")
    if name in SYSTEM_METRICS:
        raise MetricError(f"{name!r} is measured, not scored: pick another name")
    if name in _METRICS and not replace:
        raise MetricError(f"metric {name!r} is already registered; pass replace=True")
    metric = Metric(name, fn, check_direction(direction), bool(needs_proba), tasks)
    _METRICS[name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests and plugins that register temporary ones)."""
    _METRICS.pop(name, None)


def get_metric(name: str, task: TaskType | None = None) -> Metric:
    """Return the registered metric ``name`` (defined for ``task`` when given)."""
    metric = _METRICS.get(name)
    if metric is None or (task is not None and task not in metric.tasks):
        where = f" for task {task!r}" if task is not None else ""
        raise MetricError(
            f"metric {name!r} is not defined{where}; choose from {sorted(metrics_for(task))}"
            if task is not None
            else f"unknown metric {name!r}; choose from {sorted(_METRICS)}"
        )
    return metric


def scored_metrics(task: TaskType) -> dict[str, Direction]:
    """Return the metrics computed from predictions for ``task``, with their direction."""
    return {m.name: m.direction for m in _METRICS.values() if task in m.tasks}


def metrics_for(task: TaskType | None) -> dict[str, Direction]:
    """Return every metric a task supports (scored and measured), with its direction."""
    if task is None:
        return {m.name: m.direction for m in _METRICS.values()} | SYSTEM_METRICS
    return scored_metrics(task) | SYSTEM_METRICS


def direction_of(metric: str, task: TaskType | None = None) -> Direction:
    """Return the natural direction of a metric (scored or measured)."""
    if metric in SYSTEM_METRICS:
        return SYSTEM_METRICS[metric]
    return get_metric(metric, task).direction


# --- scoring ------------------------------------------------------------------------------
def predictions(model: Any, X: Any, task: TaskType) -> np.ndarray:
    """Return what serving returns: class probabilities, or predictions for regression."""
    if task == "regression":
        return np.asarray(model.predict(X), dtype=float).reshape(-1)
    return np.asarray(model.predict_proba(X), dtype=float)


def score(
    metric: str,
    y_true: Any,
    proba_or_pred: Any,
    *,
    classes: Sequence[Any] | np.ndarray | None,
    task: TaskType | None = None,
) -> float:
    """Return ``metric`` of one model's output on labelled rows.

    ``proba_or_pred``: the probability matrix (columns in ``classes`` order) for a
    classifier, or the predictions of a regressor (``classes=None``). Undefined values
    (a ranking metric on rows of one class) are NaN, never an exception.
    """
    task = task or _task_of(classes)
    m = get_metric(metric, task)
    y = np.asarray(y_true)
    out = np.asarray(proba_or_pred)
    if task == "regression":
        return float(m.fn(y, out.astype(float).reshape(-1), None))
    labels = np.asarray(classes)
    if out.ndim != 2 or out.shape[1] != len(labels):
        raise MetricError(
            f"{metric}: expected probabilities of shape (n, {len(labels)}), got {out.shape}"
        )
    if task == "binary" and len(labels) != 2:
        raise MetricError(f"a binary task needs two classes, the model has {list(labels)}")
    given = out if m.needs_proba else labels[np.argmax(out, axis=1)]
    return float(m.fn(y, given, labels))


def score_all(
    names: Iterable[str], y_true: Any, proba_or_pred: Any, *, classes: Any, task: TaskType
) -> dict[str, float]:
    """Return ``{metric: score}`` for several metrics on the same output."""
    return {n: score(n, y_true, proba_or_pred, classes=classes, task=task) for n in names}


def score_model(metric: str, model: Any, X: Any, y_true: Any, task: TaskType) -> float:
    """Score a fitted model (sklearn pipeline, or anything with ``predict[_proba]``)."""
    classes = None if task == "regression" else np.asarray(model.classes_)
    return score(metric, y_true, predictions(model, X, task), classes=classes, task=task)


def _task_of(classes: Any) -> TaskType:
    if classes is None:
        return "regression"
    return "binary" if len(classes) == 2 else "multiclass"


def _positive(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    # The positive class of a binary task is classes[1]: sklearn sorts classes_, so it is
    # the greater label (1 of 0/1, True of False), the column predict_proba puts last.
    return (y == classes[1]).astype(int)


def _ranking(fn: Callable[..., float]) -> MetricFn:
    def metric(y: np.ndarray, proba: np.ndarray, classes: np.ndarray | None) -> float:
        assert classes is not None
        positive = _positive(y, classes)
        if positive.min(initial=1) == positive.max(initial=0):
            return math.nan  # rows of one class: a ranking is undefined
        return float(fn(positive, proba[:, 1]))

    return metric


def _skm() -> Any:
    # sklearn.metrics costs ~1 s to import: only when something is scored, not at spec load.
    from sklearn import metrics as skm

    return skm


def _roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    return float(_skm().roc_auc_score(y, proba))


def _average_precision(y: np.ndarray, proba: np.ndarray) -> float:
    return float(_skm().average_precision_score(y, proba))


def _f1(y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None) -> float:
    assert classes is not None
    if len(classes) == 2:
        return float(_skm().f1_score(y, pred, pos_label=classes[1], zero_division=0.0))
    return float(_skm().f1_score(y, pred, labels=classes, average="macro", zero_division=0.0))


def _brier(y: np.ndarray, proba: np.ndarray, classes: np.ndarray | None) -> float:
    assert classes is not None
    return float(_skm().brier_score_loss(_positive(y, classes), proba[:, 1]))


def _log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray | None) -> float:
    return float(_skm().log_loss(y, proba, labels=classes))


def _accuracy(y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None) -> float:
    return float(_skm().accuracy_score(y, pred))


def _rmse(y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None) -> float:
    return float(np.sqrt(_skm().mean_squared_error(y, pred)))


def _mae(y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None) -> float:
    return float(_skm().mean_absolute_error(y, pred))


def _r2(y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None) -> float:
    return float(_skm().r2_score(y, pred))


_BINARY: tuple[TaskType, ...] = ("binary",)
_REGRESSION: tuple[TaskType, ...] = ("regression",)
for _name, _fn, _direction, _needs_proba, _tasks in (
    ("roc_auc", _ranking(_roc_auc), "maximize", True, _BINARY),
    ("average_precision", _ranking(_average_precision), "maximize", True, _BINARY),
    ("brier", _brier, "minimize", True, _BINARY),
    ("log_loss", _log_loss, "minimize", True, CLASSIFICATION),
    ("accuracy", _accuracy, "maximize", False, CLASSIFICATION),
    ("f1", _f1, "maximize", False, CLASSIFICATION),
    ("rmse", _rmse, "minimize", False, _REGRESSION),
    ("mae", _mae, "minimize", False, _REGRESSION),
    ("r2", _r2, "maximize", False, _REGRESSION),
):
    register_metric(_name, _fn, _direction, _needs_proba, tasks=_tasks)


def row_terms(metric: str, y_true: Any, proba: Any, *, classes: Any) -> np.ndarray | None:
    """Per-row terms whose mean is ``metric`` (log loss, Brier; else None), sklearn's clip."""
    if metric not in ("log_loss", "brier") or classes is None:
        return None
    y, out, labels = np.asarray(y_true), np.asarray(proba), np.asarray(classes)
    if metric == "brier":
        return np.asarray((_positive(y, labels) - out[:, 1].astype(np.float64)) ** 2)
    eps = np.finfo(out.dtype).eps if np.issubdtype(out.dtype, np.floating) else 1e-15
    clipped = np.clip(out, eps, 1 - eps)  # classes_ are sorted: searchsorted finds y's column
    picked = clipped[np.arange(len(y)), np.searchsorted(labels, y)] / clipped.sum(axis=1)
    return np.asarray(-np.log(picked), dtype=np.float64)


__all__ = [
    "DIRECTIONS",
    "SYSTEM_METRICS",
    "Metric",
    "MetricError",
    "better",
    "check_direction",
    "direction_of",
    "get_metric",
    "metrics_for",
    "predictions",
    "register_metric",
    "score",
    "score_all",
    "score_model",
    "sign",
    "unregister_metric",
]
