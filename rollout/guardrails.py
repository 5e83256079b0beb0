"""Guardrails: an arm whose recent error rate or p99 latency breaks a limit leaves rotation.

Only a rate over a window of recent predictions moves an arm (as Envoy's and SageMaker's
outlier detection do), never a single failure; the champion is the fallback and is never
pulled, only reported.

Beside the windows, every prediction is counted for the store (made, failed, latency
bucket per arm): the writer takes those counts with each group commit
(``take``/``restore``), and a promotion's guardrail metrics read them since the arm joined
(``rollout.multimetric``), exact across replicas.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from rollout.store_health import HealthCounts, latency_bucket

_WINDOW = 500  # recent predictions per arm the limits are checked over
_CHECK_EVERY = 25  # predictions between two checks of one arm


@dataclass
class _Window:
    """Recent outcomes of one arm's predictions."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    failures: deque[bool] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    since_check: int = 0


class Guardrails:
    """Per-arm windows of latency and failures, and the limits they are checked against."""

    def __init__(
        self, *, max_error_rate: float, max_p99_ms: float, min_requests: int, min_failures: int = 1
    ) -> None:
        self.max_error_rate = max_error_rate
        self.max_p99_ms = max_p99_ms
        self.min_requests = min_requests
        self.min_failures = min_failures
        self._windows: dict[str, _Window] = defaultdict(_Window)
        self._unstored: dict[str, HealthCounts] = {}  # counted here, not yet in the store
        self._last: dict[str, tuple[int, int]] = {}  # per arm: (bucket, rows) last recorded

    def record(self, arm: str, latency_s: float, ok: bool, rows: int = 1) -> None:
        """Record ``rows`` predictions of one arm (each took ``latency_s``)."""
        w = self._windows[arm]
        w.latencies.extend([latency_s] * min(rows, _WINDOW))
        w.failures.extend([not ok] * min(rows, _WINDOW))
        w.since_check += rows
        h = self._unstored.get(arm)
        if h is None:
            h = self._unstored[arm] = HealthCounts()
        bucket = latency_bucket(latency_s * 1000.0)
        h.attempts += rows
        h.errors += 0 if ok else rows
        h.buckets[bucket] = h.buckets.get(bucket, 0) + rows
        self._last[arm] = (bucket, 0 if ok else rows)

    @property
    def unstored(self) -> bool:
        """Whether predictions were counted that the store does not have yet."""
        return bool(self._unstored)

    def take(self) -> dict[str, HealthCounts]:
        """Return the counts not yet stored, and forget them (the writer commits them)."""
        taken, self._unstored = self._unstored, {}
        return taken

    def restore(self, taken: dict[str, HealthCounts]) -> None:
        """Put back counts whose commit failed (they go with the next one)."""
        for arm, h in taken.items():
            self._unstored.setdefault(arm, HealthCounts()).add(h)

    def breach(self, arm: str) -> str | None:
        """Return why ``arm`` breaks a limit now, or None.

        Failures: at least ``min_failures`` of them and a rate over ``max_error_rate`` in the
        window. Latency: the window's p99, once it holds ``min_requests`` predictions
        (checked every few predictions: a percentile is not free).
        """
        w = self._windows.get(arm)
        if w is None or not w.failures:
            return None
        failures = sum(w.failures)
        error_rate = failures / len(w.failures)
        if failures >= self.min_failures and error_rate > self.max_error_rate:
            return (
                f"guardrail: failed to predict at a rate of {error_rate:.3f} > "
                f"{self.max_error_rate} over its last {len(w.failures)} predictions"
            )
        if w.since_check < _CHECK_EVERY or len(w.latencies) < self.min_requests:
            return None
        w.since_check = 0
        p99_ms = float(np.percentile(np.fromiter(w.latencies, float), 99)) * 1000
        if p99_ms > self.max_p99_ms:
            return f"guardrail: p99 latency {p99_ms:.1f} ms > {self.max_p99_ms} ms"
        return None

    def forgive(self, arm: str, rows: int) -> None:
        """Take back the last ``rows`` failures of ``arm``: the input was at fault, not it."""
        w = self._windows.get(arm)
        if w is None:
            return
        for _ in range(min(rows, len(w.failures))):
            w.failures.pop()
            w.latencies.pop()
        # The same request's counts are still unstored: scoring does not await in between.
        h, (bucket, failed) = self._unstored.get(arm), self._last.pop(arm, (0, 0))
        if h is not None and failed:
            n = min(rows, failed, h.buckets.get(bucket, 0))
            h.attempts, h.errors = h.attempts - n, h.errors - n
            h.buckets[bucket] -= n

    def forget(self, arm: str) -> None:
        """Start an arm's window afresh (it was restored by an operator)."""
        self._windows.pop(arm, None)
