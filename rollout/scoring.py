"""Scoring: each arm's rows in one call, failures to the anchor, outcomes to the guardrails."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from rollout import decisions
from rollout.errors import BadInput, NoModelAvailable
from rollout.pool import PoolSnapshot, ServingModel

if TYPE_CHECKING:
    from rollout.service import RolloutService


def score_by_arm(
    svc: RolloutService,
    snap: PoolSnapshot,
    anchor: ServingModel,
    rows: list[dict[str, Any]],
    arms: list[str],
) -> tuple[list[Any], list[float | None], list[ServingModel]]:
    """Score each arm's rows in one call; a failing arm's rows go to the anchor.

    A failure counts against the arm (its guardrail window), it never pulls it alone;
    rows the anchor cannot score either are the request's fault (422), not a model's.
    """
    by_arm: dict[str, list[int]] = defaultdict(list)
    for i, arm in enumerate(arms):
        by_arm[arm].append(i)
    predictions: list[Any] = [None] * len(rows)
    scores: list[float | None] = [None] * len(rows)
    served: list[ServingModel] = [anchor] * len(rows)
    for arm, idx in by_arm.items():
        model = snap.arms[arm].model or anchor
        part = [rows[i] for i in idx]
        try:
            preds, scs = _score(svc, model, part)
        except Exception as exc:
            # The anchor failing falls back to the arm on probation (rollout.decisions).
            target = decisions.standby(svc, snap) if model is anchor else None
            preds, scs = _fallback(svc, model, target or anchor, part, exc)
            model = target or anchor
        for j, i in enumerate(idx):
            arms[i] = model.arm
            predictions[i], scores[i], served[i] = preds[j], scs[j], model
    _check_guardrails(svc, snap, anchor, list(by_arm))
    return predictions, scores, served


def _fallback(
    svc: RolloutService,
    failed: ServingModel,
    anchor: ServingModel,
    rows: list[dict[str, Any]],
    exc: Exception,
) -> tuple[list[Any], list[float | None]]:
    """Score rows ``failed`` could not; say whose fault it was when the anchor cannot."""
    why = type(exc).__name__
    if failed is anchor:
        raise NoModelAvailable(f"{anchor.arm} failed to predict ({why}); retry later") from exc
    try:
        return _score(svc, anchor, rows, count=False)
    except Exception as second:
        # Two models fail on the same rows: the rows are at fault; forgive the first.
        svc.guardrails.forgive(failed.arm, len(rows))
        raise BadInput(
            f"no model can score this input ({why}, {type(second).__name__}): check its values"
        ) from second


class ArmMetrics(NamedTuple):
    """One arm's Prometheus children (``labels()`` takes a lock and a lookup per call)."""

    latency: Any
    pulls: Any


def arm_metrics(svc: RolloutService, arm: str) -> ArmMetrics:
    """Return the per-arm metric children of ``svc``, looked up once per arm."""
    cache: dict[str, ArmMetrics] = svc.__dict__.setdefault("_arm_metrics", {})
    children = cache.get(arm)
    if children is None:
        m = svc.metrics
        children = cache[arm] = ArmMetrics(m.model_latency.labels(arm), m.pulls.labels(arm))
    return children


def _score(
    svc: RolloutService,
    model: ServingModel,
    rows: Sequence[Mapping[str, Any]],
    *,
    count: bool = True,
) -> tuple[list[Any], list[float | None]]:
    """Predict, timing it; ``count``: record the outcome in the arm's guardrail window."""
    start = time.perf_counter()
    ok = False
    try:
        result = model.predict(rows)
        ok = True
        return result
    finally:
        elapsed = time.perf_counter() - start
        arm_metrics(svc, model.arm).latency.observe(elapsed)
        if count or ok:
            _guard(svc, model.arm, elapsed / max(len(rows), 1), ok, max(len(rows), 1))


def _guard(svc: RolloutService, arm: str, latency_s: float, ok: bool, rows: int) -> None:
    """Record predictions of one arm in its guardrail window."""
    svc.guardrails.record(arm, latency_s, ok, rows)
    if not ok:
        svc.errors_by_arm[arm] += 1
        svc.metrics.errors.labels("predict", arm).inc()


def _check_guardrails(
    svc: RolloutService, snap: PoolSnapshot, anchor: ServingModel, arms: list[str]
) -> None:
    """Pull each of ``arms`` that breaks a guardrail (never the champion or the anchor)."""
    for arm in arms:
        if arm in (snap.champion, anchor.arm):
            continue  # the fallback: report, never pull it
        reason = svc.guardrails.breach(arm)
        if reason is not None:
            svc.pull(arm, reason)
