"""A quantized choice serves quantized: the compression stage's pick is what the gates judge.

When the compression stage (tasks/stages.py) picks a ``quantized`` variant, registration
registers it as its own version, ``<trial>-quantized``. Its sklearn pipeline is the trial
refit from its parameters: the seeded refit is the model the stage quantized, so its ONNX
graph, quantized again here, is the graph the stage measured. What serves it is that
quantized graph, never the float one: the version's serving flavour is ``onnx`` with the
quantized file as its ONNX artifact (``banditflow.onnx_uri``), and the gates judge that
flavour (its scores, single-row latency and bytes). The version is tagged
``banditflow.compression = quantized``.

The stage kept the variant within ``stages.compression.tolerance`` of the uncompressed
model's primary metric on the hold-out; the same check is made again here on the gates'
hold-out, and a quantized graph outside it (or one that cannot be built) is refused with an
error: the version fails its gates rather than serve something else than was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.gates import Holdout
    from tasks.onnx import ServingFlavour
    from tasks.spec import StudySpec

QUANTIZED = "quantized"
TAG_COMPRESSION = "banditflow.compression"


class QuantizationRefused(RuntimeError):
    """The quantized graph of a chosen variant could not be built or lost too much."""


def is_quantized(trial_id: str) -> bool:
    """Whether a registered trial is the compression stage's quantized variant."""
    return str(trial_id).endswith(f"-{QUANTIZED}")


def quantized_serving(
    client: MlflowClient,
    spec: StudySpec,
    state: Any,
    holdout: Holdout,
    feature_types: Mapping[str, str] | None = None,
) -> ServingFlavour | None:
    """The flavour that serves a ``<trial>-quantized`` version (tagged so); None for others.

    ``state``: the register step's ``VersionState`` (its trial id, version and model).
    """
    if not is_quantized(state.registered.trial_id):
        return None
    from tasks.compression import DEFAULT_TOLERANCE, primary_metric
    from tasks.metrics import direction_of

    stage = spec.stages.compression if spec.stages else None
    metric = primary_metric(spec)
    serving = quantized_flavour(
        state.loaded_model(),
        holdout,
        task=spec.task,
        metric=metric,
        direction=direction_of(metric, spec.task),
        tolerance=stage.tolerance if stage else DEFAULT_TOLERANCE,
        feature_types=feature_types,
        timing_calls=spec.evaluation.latency_calls,
    )
    client.set_model_version_tag(spec.name, state.version, TAG_COMPRESSION, QUANTIZED)
    return serving


def quantized_flavour(
    model: Any,
    holdout: Holdout,
    *,
    task: Any,
    metric: str,
    direction: str,
    tolerance: float,
    feature_types: Mapping[str, str] | None = None,
    timing_calls: int = 200,
) -> ServingFlavour:
    """Convert, quantize, check the metric lost against sklearn's, time it; or refuse."""
    from tasks.compression import _has_matrix_products, _quantize, metric_lost
    from tasks.metrics import predictions, score
    from tasks.onnx import (
        OnnxOutcome,
        ServingFlavour,
        _onnx_scores,
        load_session,
        model_inputs,
        onnx_latency_ms,
        to_onnx,
    )
    from tasks.timing import model_predictor, single_row_latency_ms

    frame = model_inputs(model, holdout.X)
    try:
        base = to_onnx(model, frame.head(5), feature_types)
    except Exception as exc:  # noqa: BLE001 - any conversion failure refuses the variant
        raise QuantizationRefused(f"the chosen quantized variant does not convert: {exc}") from exc
    if not _has_matrix_products(base):
        raise QuantizationRefused("the chosen quantized variant's graph has no matrix products")
    graph = _quantize(base)
    session = load_session(graph)
    predict = _onnx_scores(session, task, list(frame.columns))
    classes = None if task == "regression" else np.asarray(model.classes_)
    value = score(metric, holdout.y, predict(frame), classes=classes, task=task)
    reference = score(
        metric, holdout.y, predictions(model, frame, task), classes=classes, task=task
    )
    lost, within = metric_lost(value, reference, direction, tolerance)
    if not within:
        raise QuantizationRefused(
            f"the quantized graph loses {lost:+.4g} {metric} against the sklearn model on the "
            f"hold-out (tolerance {tolerance:g})"
        )
    outcome = OnnxOutcome(
        "onnx",
        "",
        converted=True,
        rows_checked=len(frame),
        sklearn_ms_p95=single_row_latency_ms(
            model_predictor(model, task), frame, calls=timing_calls
        ),
        onnx_ms_p95=onnx_latency_ms(session, frame, calls=timing_calls),
        onnx_bytes=len(graph),
    )
    return ServingFlavour("onnx", predict, len(graph), outcome.onnx_ms_p95, outcome, graph)
