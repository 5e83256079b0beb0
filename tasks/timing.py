"""One way to time a prediction: every caller (evaluation, the gates, the ONNX comparison,
compression, quantization) charges a model the same cost.

:func:`single_row_latency_ms` times single-row predictions as CPU time of the calling thread
(``time.thread_time``), p95 after a stated warm-up, with native thread pools held to one
thread (as the rollout service runs) and the garbage collector off (as :mod:`timeit` does):
a busy machine slows wall time, not this, and collecting the caller's heap (a flow process
holds MLflow and Prefect objects) is not the model's cost.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.metrics import MetricError, TaskType

DEFAULT_LATENCY_CALLS = 200
DEFAULT_LATENCY_WARMUP = 10
LATENCY_QUANTILE = 95.0
#: The latency clock: CPU seconds of the calling thread. Module-level so that a test can
#: swap it for every caller at once (evaluation, gates, ONNX comparison, compression).
CLOCK: Callable[[], float] = time.thread_time


@dataclass(frozen=True)
class Latency:
    """Single-row prediction cost: CPU milliseconds of the calling thread per call."""

    p50_ms: float
    p95_ms: float
    calls: int
    warmup: int


def measure_latency(
    predict: Callable[[Any], Any],
    X: Any,
    *,
    calls: int = DEFAULT_LATENCY_CALLS,
    warmup: int = DEFAULT_LATENCY_WARMUP,
    clock: Callable[[], float] | None = None,
    prepare: Callable[[Any], Any] | None = None,
) -> Latency:
    """Time ``calls`` single-row ``predict`` calls on rows of frame ``X`` (cycled).

    Each call is charged the CPU time of the calling thread, so other processes on a busy
    machine do not count; native thread pools (OpenMP, BLAS) are held to one thread for the
    measurement, so no work escapes to a thread the clock does not see, as in serving.
    ``warmup`` calls first fill caches and lazy imports, as a serving process has.
    ``prepare`` turns each one-row frame into the flavour's own input before the clock
    runs (ONNX feeds: the service builds them from JSON, not from a DataFrame).
    ``clock`` (seconds; default :data:`CLOCK`, the thread's CPU time) is for tests.
    """
    from threadpoolctl import threadpool_limits

    if len(X) == 0:
        raise MetricError("cannot time predictions on zero rows")
    if calls < 1 or warmup < 0:
        raise MetricError(f"calls must be >= 1 and warmup >= 0, got {calls=}, {warmup=}")
    rows = [X.iloc[[i % len(X)]] for i in range(min(len(X), 64))]
    if prepare is not None:
        rows = [prepare(row) for row in rows]
    now = clock or CLOCK
    times = np.empty(calls)
    collecting = gc.isenabled()
    gc.disable()  # a collection inside a timed call would be its p95 at 10 calls
    try:
        with threadpool_limits(limits=1):
            for i in range(warmup):
                predict(rows[i % len(rows)])
            for i in range(calls):
                start = now()
                predict(rows[i % len(rows)])
                times[i] = now() - start
    finally:
        if collecting:
            gc.enable()
    return Latency(
        p50_ms=float(np.percentile(times, 50) * 1000.0),
        p95_ms=float(np.percentile(times, LATENCY_QUANTILE) * 1000.0),
        calls=calls,
        warmup=warmup,
    )


def single_row_latency_ms(
    predict: Callable[[Any], Any],
    X: Any,
    *,
    calls: int = DEFAULT_LATENCY_CALLS,
    warmup: int = DEFAULT_LATENCY_WARMUP,
    prepare: Callable[[Any], Any] | None = None,
) -> float:
    """Return the p95 single-row CPU latency in milliseconds (see :func:`measure_latency`)."""
    return measure_latency(predict, X, calls=calls, warmup=warmup, prepare=prepare).p95_ms


def model_predictor(model: Any, task: TaskType) -> Callable[[Any], Any]:
    """Return the call serving makes on a sklearn model: ``predict_proba`` or ``predict``."""
    return model.predict if task == "regression" else model.predict_proba  # type: ignore[no-any-return]


def serialized_bytes(model: Any) -> int:
    """Return the size of a sklearn model as it is logged (cloudpickle)."""
    import cloudpickle

    return len(cloudpickle.dumps(model))


__all__ = [
    "CLOCK",
    "Latency",
    "measure_latency",
    "model_predictor",
    "serialized_bytes",
    "single_row_latency_ms",
]
