"""Feedback: check rewards, resolve each request id's arm, and record them in one group commit."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rollout import cadence
from rollout.errors import (
    FeedbackWindowClosed,
    RewardOutOfRange,
    StoreUnavailable,
    UnknownRequest,
)
from rollout.policies import Policy
from rollout.schemas import FeedbackRequest, FeedbackResponse
from rollout.store import FeedbackRow

if TYPE_CHECKING:
    from rollout.service import RolloutService


def check_reward(policy: Policy, reward: float) -> None:
    """Raise ``RewardOutOfRange`` for a reward the policy cannot learn from."""
    if not math.isfinite(reward):
        raise RewardOutOfRange(f"reward must be a finite number, got {reward}")
    bounds = policy.reward_range
    if bounds is not None and not (bounds[0] <= reward <= bounds[1]):
        raise RewardOutOfRange(
            f"reward {reward} is outside [{bounds[0]}, {bounds[1]}], the range of policy "
            f"{policy.name!r} ({policy.reward_kind} rewards)"
        )


async def record_one(svc: RolloutService, req: FeedbackRequest) -> FeedbackResponse:
    """Record one reward; an unknown id is a 404, a late one a 410."""
    result = (await record_many(svc, [req]))[0]
    if result.status == "unknown":
        raise UnknownRequest(
            f"unknown request_id {req.request_id!r}: no prediction was recorded under it"
        )
    if result.status == "window_closed":
        raise FeedbackWindowClosed(
            f"feedback for {req.request_id!r} came after the "
            f"{svc.settings.feedback_window_s:.0f} s window closed"
        )
    return result


async def record_many(
    svc: RolloutService, reqs: Sequence[FeedbackRequest]
) -> list[FeedbackResponse]:
    """Record rewards durably (one group commit) and say, per row, what happened."""
    for i, req in enumerate(reqs):
        try:
            check_reward(svc.policy, req.reward)
        except RewardOutOfRange as exc:
            if len(reqs) > 1:
                exc.message = f"row {i}: {exc.message}"
            raise
    assert svc.tokens is not None and svc.writer is not None
    now = svc.clock()
    results: list[FeedbackResponse | None] = [None] * len(reqs)
    to_write: list[tuple[int, FeedbackRow]] = []
    tokens = [svc.tokens.verify(req.request_id) for req in reqs]
    client = [r.request_id for r, t in zip(reqs, tokens, strict=True) if t is None]
    try:
        # A client's own id: its decision says when it was made (and by which arm).
        known = await asyncio.to_thread(svc.client_ids.known, client) if client else {}
    except Exception as exc:
        raise StoreUnavailable(f"cannot read the state store ({type(exc).__name__})") from exc
    for i, req in enumerate(reqs):
        token = tokens[i] or known.get(req.request_id)
        arm = None
        if token is not None:
            arm, issued = token
            if now - issued > svc.settings.feedback_window_s:
                results[i] = FeedbackResponse(
                    request_id=req.request_id, status="window_closed", arm=arm
                )
                continue
        others = () if req.metrics is None else tuple(sorted(req.metrics.items()))
        to_write.append((i, FeedbackRow(req.request_id, float(req.reward), arm, now, others)))
    if to_write:
        try:
            statuses = await svc.writer.submit_feedback([row for _, row in to_write])
        except Exception as exc:
            # Nothing of this batch was committed: the client may send it all again.
            svc.metrics.errors.labels("store", "").inc()
            raise StoreUnavailable(
                f"cannot write the state store ({type(exc).__name__}); nothing was recorded, "
                "send the feedback again"
            ) from exc
        for (i, row), (status, arm) in zip(to_write, statuses, strict=True):
            # The store's own status and arm: built as they are, not validated again.
            results[i] = FeedbackResponse.model_construct(
                request_id=row.request_id, status=status, arm=arm
            )
            if status == "accepted" and arm is not None:
                counted, rewards = _arm_counters(svc, arm)
                counted.inc()
                rewards.inc(max(row.reward, 0.0))
            elif status == "duplicate":
                svc.metrics.duplicates.inc()
        # At outcome counts, the refresh or decision a batch reaches runs before its answer.
        accepted = sum(1 for status, _ in statuses if status == "accepted")
        await cadence.outcomes_acknowledged(svc, accepted)
    return [r for r in results if r is not None]


def _arm_counters(svc: RolloutService, arm: str) -> tuple[Any, Any]:
    """Return the arm's feedback and reward counters (``labels()`` looked up once per arm)."""
    cache: dict[str, tuple[Any, Any]] = svc.__dict__.setdefault("_feedback_counters", {})
    counters = cache.get(arm)
    if counters is None:
        m = svc.metrics
        counters = cache[arm] = (m.feedback.labels(arm), m.rewards.labels(arm))
    return counters


async def expire_decisions(svc: RolloutService) -> int:
    """Count decisions whose window closed without feedback (``expired`` setting)."""
    s = svc.settings
    return await asyncio.to_thread(
        svc.store.expire,
        svc.clock() - s.feedback_window_s,
        mode=s.expired,
        default_reward=s.expired_reward,
        discount=svc.policy.discount,
    )
