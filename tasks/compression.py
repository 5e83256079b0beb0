"""Compress candidates for serving: quantize matrix products, prune tree ensembles.

For each candidate (a fitted pipeline after HPO) :func:`compress_model` builds variants:

- ``quantized``: ONNX Runtime dynamic quantization (int8 weights) of the ONNX graph, when
  the graph has matrix products (MatMul/Gemm: the MLP, logistic regression);
- ``trees=k``: the first ``k`` trees of a forest, or the first ``k`` boosting iterations of
  a histogram gradient boosting model (no refit: a prefix of the fitted ensemble);
- ``leaves<=L``: the same ensemble refit with at most ``L`` leaves per tree (needs the
  training rows; the fit is the family's own with one parameter changed).

Each variant is served as ONNX when it converts (the bytes and latency are the ONNX file's),
scored on the hold-out with the one :func:`tasks.metrics.score`, timed with the one
single-row measurement (p95 CPU), and kept only within ``tolerance`` of the uncompressed
model's metric. The kept variants and the uncompressed ones enter the Pareto set of
(primary metric, p95 single-row latency, bytes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.metrics import direction_of, predictions, score, sign
from tasks.onnx import (
    OnnxConversionError,
    check_agreement,
    load_session,
    model_inputs,
    onnx_latency_ms,
    onnx_predictor,
    to_onnx,
)
from tasks.timing import model_predictor, serialized_bytes, single_row_latency_ms

if TYPE_CHECKING:
    from tasks.spec import StudySpec, TaskType

DEFAULT_TOLERANCE = 0.002  # of the primary metric, in its own units (0.002 ROC AUC)
TREE_FRACTIONS = (0.5, 0.25, 0.125)
LEAF_FRACTIONS = (0.5, 0.25)
MATRIX_OPS = {"MatMul", "Gemm"}


@dataclass
class Variant:
    """One way to serve a candidate: what it costs and what it loses."""

    candidate: str
    name: str  # "uncompressed" | "quantized" | "trees=k" | "leaves<=L"
    flavour: str  # "onnx" | "sklearn"
    metric: str
    value: float
    lost: float  # metric lost against the uncompressed model (positive = worse)
    p95_ms: float
    size_bytes: int
    within_tolerance: bool
    model: Any = field(default=None, repr=False)  # the sklearn pipeline (None: quantized)
    onnx_bytes: bytes | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        keep = ("candidate", "name", "flavour", "metric", "value", "lost", "p95_ms")
        return {k: getattr(self, k) for k in keep} | {
            "size_bytes": self.size_bytes,
            "within_tolerance": self.within_tolerance,
        }


@dataclass
class CompressionResult:
    """Every variant of every candidate, and the Pareto set over all of them."""

    variants: list[Variant]
    pareto: list[Variant]
    tolerance: float
    metric: str
    direction: str

    def to_markdown(self) -> str:
        head = f"| candidate | variant | flavour | {self.metric} | lost | p95 ms | bytes "
        lines = [head + "| kept | pareto |", "|---|---|---|---:|---:|---:|---:|---|---|"]
        front = {id(v) for v in self.pareto}
        for v in self.variants:
            lines.append(
                f"| {v.candidate} | {v.name} | {v.flavour} | {v.value:.4f} | {v.lost:+.4f} "
                f"| {v.p95_ms:.3f} | {v.size_bytes} | {'yes' if v.within_tolerance else 'no'} "
                f"| {'yes' if id(v) in front else ''} |"
            )
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Setup:
    X: pd.DataFrame
    y: np.ndarray
    task: TaskType
    metric: str
    direction: str
    tolerance: float
    latency_calls: int


def compress_model(
    model: Any,
    holdout_X: pd.DataFrame,
    holdout_y: Any,
    *,
    task: TaskType,
    metric: str,
    candidate: str = "0",
    tolerance: float = DEFAULT_TOLERANCE,
    train: tuple[pd.DataFrame, Any] | None = None,
    latency_calls: int = 200,
) -> list[Variant]:
    """Return the uncompressed variant of ``model`` first, then each compressed one."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance=}")
    setup = _Setup(
        model_inputs(model, holdout_X),
        np.asarray(holdout_y),
        task,
        metric,
        direction_of(metric, task),
        float(tolerance),
        latency_calls,
    )
    base = _measure(setup, candidate, "uncompressed", model, None, reference=None)
    variants = [base]
    if base.onnx_bytes is not None and _has_matrix_products(base.onnx_bytes):
        variants.append(
            _measure(setup, candidate, "quantized", None, _quantize(base.onnx_bytes), base, model)
        )
    for name, pruned in _pruned(model, train):
        variants.append(_measure(setup, candidate, name, pruned, None, base))
    return variants


def compress_candidates(
    spec: StudySpec,
    candidates: Sequence[tuple[str, Any]],
    data: Any,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    refit_leaves: bool = True,
) -> CompressionResult:
    """Compress each ``(candidate id, fitted pipeline)`` on the study's hold-out rows.

    ``data`` is ``tasks.data.StudyData`` (``X_test``/``y_test`` judge; ``X_train``/
    ``y_train`` refit the fewer-leaves variants when ``refit_leaves``). The metric is the
    study's first scored objective (else the performance gate's metric).
    """
    metric = primary_metric(spec)
    train = (data.X_train, data.y_train) if refit_leaves else None
    variants: list[Variant] = []
    for candidate, model in candidates:
        variants += compress_model(
            model,
            data.X_test,
            data.y_test,
            task=spec.task,
            metric=metric,
            candidate=str(candidate),
            tolerance=tolerance,
            train=train,
            latency_calls=spec.evaluation.latency_calls,
        )
    direction = direction_of(metric, spec.task)
    return CompressionResult(
        variants, pareto_set(variants, direction), tolerance, metric, direction
    )


compress_candidates_task = task(name="compress-candidates", cache_policy=NO_CACHE)(
    compress_candidates
)


def primary_metric(spec: StudySpec) -> str:
    """The metric compression must keep: the first objective scored from predictions."""
    from tasks.metrics import SYSTEM_METRICS

    for name in spec.objectives:
        if name not in SYSTEM_METRICS:
            return name
    if spec.gates.performance is not None:
        return spec.gates.performance.metric
    return "rmse" if spec.task == "regression" else "log_loss"


def pareto_set(variants: Sequence[Variant], direction: str) -> list[Variant]:
    """Return the kept variants no other kept one beats on (metric, p95 latency, bytes)."""
    from tasks.optimizers.base import dominates

    kept = [v for v in variants if v.within_tolerance and math.isfinite(v.value)]

    def loss(v: Variant) -> list[float]:
        return [sign(direction) * v.value, v.p95_ms, float(v.size_bytes)]

    return [v for v in kept if not any(dominates(loss(o), loss(v)) for o in kept if o is not v)]


# --- measuring one variant ---------------------------------------------------------------
def _measure(
    setup: _Setup,
    candidate: str,
    name: str,
    model: Any,
    onnx_bytes: bytes | None,
    reference: Variant | None,
    classes_from: Any = None,
) -> Variant:
    """Serve the variant as ONNX when it converts and agrees with itself; score and time it."""
    if onnx_bytes is None and model is not None:
        onnx_bytes = _onnx_of(model, setup)
    if onnx_bytes is not None:
        session = load_session(onnx_bytes)
        predict: Callable[[pd.DataFrame], Any] = _onnx_scores(onnx_predictor(session), setup.task)
        flavour, size = "onnx", len(onnx_bytes)
    else:
        predict = lambda frame: predictions(model, frame, setup.task)  # noqa: E731
        flavour, size = "sklearn", serialized_bytes(model)
    source = model if model is not None else classes_from
    classes = None if setup.task == "regression" else np.asarray(source.classes_)
    value = score(setup.metric, setup.y, predict(setup.X), classes=classes, task=setup.task)
    if flavour == "onnx":
        p95 = onnx_latency_ms(session, setup.X, calls=setup.latency_calls)
    else:
        timed = model_predictor(model, setup.task)
        p95 = single_row_latency_ms(timed, setup.X, calls=setup.latency_calls)
    lost, within = 0.0, True
    if reference is not None:
        lost, within = metric_lost(value, reference.value, setup.direction, setup.tolerance)
    return Variant(
        candidate, name, flavour, setup.metric, value, lost, p95, size, within, model, onnx_bytes
    )


def metric_lost(
    value: float, reference: float, direction: str, tolerance: float
) -> tuple[float, bool]:
    """Return the metric a variant lost against its reference, and whether that is within
    ``tolerance``: one rule for the stage's variants and the registered quantized graph."""
    lost = sign(direction) * (value - reference)
    return lost, math.isfinite(value) and lost <= tolerance


def _onnx_of(model: Any, setup: _Setup) -> bytes | None:
    """The model's ONNX bytes when it converts and agrees with sklearn; else None."""
    try:
        onnx_bytes = to_onnx(model, setup.X.head(5))
        session = load_session(onnx_bytes)
    except OnnxConversionError:
        return None
    except Exception:  # noqa: BLE001 - onnxruntime refuses a graph it has no kernel for
        return None
    _, disagreement = check_agreement(model, session, setup.X, task=setup.task)
    return None if disagreement else onnx_bytes


def _onnx_scores(run: Callable[[pd.DataFrame], list[np.ndarray]], task: TaskType) -> Any:
    def predict(frame: pd.DataFrame) -> np.ndarray:
        outputs = run(frame)
        if task == "regression":
            return np.asarray(outputs[0], dtype=float).reshape(-1)
        return np.asarray(outputs[-1], dtype=float)  # probabilities follow the label

    return predict


# --- the compressions --------------------------------------------------------------------
def _has_matrix_products(onnx_bytes: bytes) -> bool:
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    return any(node.op_type in MATRIX_OPS for node in graph.node)


def _quantize(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized per call."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "quantized.onnx"
        source.write_bytes(onnx_bytes)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # it advises pre-processing on every call, at WARNING
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return target.read_bytes()


def _pruned(model: Any, train: tuple[pd.DataFrame, Any] | None) -> list[tuple[str, Any]]:
    """Return ``(name, pipeline)`` for each fewer-trees and fewer-leaves variant."""
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    out: list[tuple[str, Any]] = []
    if hasattr(estimator, "estimators_") and hasattr(estimator, "n_estimators"):
        total = len(estimator.estimators_)
        for k in sorted({max(1, int(total * f)) for f in TREE_FRACTIONS}, reverse=True):
            if k < total:
                out.append((f"trees={k}", _first_trees(model, k)))
    elif hasattr(estimator, "_predictors"):
        total = len(estimator._predictors)
        for k in sorted({max(1, int(total * f)) for f in TREE_FRACTIONS[:2]}, reverse=True):
            if k < total:
                out.append((f"trees={k}", _first_iterations(model, k)))
    leaves = _max_leaves(estimator)
    if train is not None and leaves is not None:
        for cap in sorted({max(2, int(leaves * f)) for f in LEAF_FRACTIONS}, reverse=True):
            if cap < leaves:
                out.append((f"leaves<={cap}", _refit_leaves(model, cap, train)))
    return out


def _first_trees(model: Any, k: int) -> Any:
    pruned = copy.deepcopy(model)
    estimator = pruned.steps[-1][1] if hasattr(pruned, "steps") else pruned
    estimator.estimators_ = estimator.estimators_[:k]
    estimator.n_estimators = k
    return pruned


def _first_iterations(model: Any, k: int) -> Any:
    pruned = copy.deepcopy(model)
    estimator = pruned.steps[-1][1] if hasattr(pruned, "steps") else pruned
    estimator._predictors = estimator._predictors[:k]  # staged prediction: the first k stages
    return pruned


def _max_leaves(estimator: Any) -> int | None:
    if hasattr(estimator, "estimators_") and hasattr(estimator, "max_leaf_nodes"):
        return max(int(tree.get_n_leaves()) for tree in estimator.estimators_)
    if hasattr(estimator, "_predictors"):
        return max(int(p.get_n_leaf_nodes()) for stage in estimator._predictors for p in stage)
    return None


def _refit_leaves(model: Any, cap: int, train: tuple[pd.DataFrame, Any]) -> Any:
    from sklearn.base import clone

    refit = clone(model)
    estimator = refit.steps[-1][1] if hasattr(refit, "steps") else refit
    estimator.set_params(max_leaf_nodes=cap)
    return refit.fit(*train)
