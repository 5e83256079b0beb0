"""Prometheus metrics of one app: requests, latency, per-arm pulls and rewards, errors.

Each app owns a registry (tests build many apps in one process). Under several uvicorn
workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``banditflow serve --workers N`` does) and
/metrics aggregates every worker's files.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's counters and histograms, in their own registry."""

    def __init__(self) -> None:
        from prometheus_client import values

        # Whether our values live in per-process files is fixed when prometheus_client is
        # imported, not by the environment now: importing Feast (entity lookups) sets
        # PROMETHEUS_MULTIPROC_DIR later, and /metrics then read files ours were never in.
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rollout_requests", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "rollout_request_latency_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_latency = Histogram(
            "rollout_model_latency_seconds",
            "Model predict latency per arm",
            ["arm"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pulls = Counter("rollout_arm_pulls", "Decisions served per arm", ["arm"], registry=r)
        self.feedback = Counter(
            "rollout_arm_feedback", "Feedback counted per arm", ["arm"], registry=r
        )
        self.rewards = Counter(
            "rollout_arm_rewards", "Sum of rewards counted per arm", ["arm"], registry=r
        )
        self.duplicates = Counter(
            "rollout_feedback_duplicates", "Duplicate feedback acknowledged", registry=r
        )
        self.errors = Counter(
            "rollout_errors",
            "Errors by kind (and arm where one is involved)",
            ["kind", "arm"],
            registry=r,
        )
        self.out_of_rotation = Gauge(
            "rollout_arm_out_of_rotation", "1 when an arm is out of rotation", ["arm"], registry=r
        )
        self.shadow = Counter(
            "rollout_shadow_predictions", "Shadow predictions logged", ["arm"], registry=r
        )
        # The decisions' sequential checks (rollout.decisions).
        self.srm_log_e = Gauge(
            "rollout_srm_log_evalue", "Log e-value of the sample-ratio test", registry=r
        )
        self.decisions_frozen = Gauge(
            "rollout_decisions_frozen", "1 when a sample ratio mismatch froze decisions", registry=r
        )
        self.change_statistic = Gauge(
            "rollout_champion_change_statistic", "The live watch's statistic", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text (every worker's when multiprocess mode is on)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Count requests and time them per route template (a plain ASGI middleware: cheap)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, status) -> its counter and histogram children: ``labels()`` once each.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            key = (path, status["code"])
            children = self._children.get(key)
            if children is None:
                m = self.metrics
                children = (m.requests.labels(path, str(key[1])), m.latency.labels(path))
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
