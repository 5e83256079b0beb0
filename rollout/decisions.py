"""Decisions: apply the decision rule (rollout.decide) to the arms, and act when told to."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from rollout import admin
from rollout.schemas import Recommendation

if TYPE_CHECKING:
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)


def decision_rule(svc: RolloutService) -> Any:
    """Build the decision rule from settings (invalid parameters raise here, at start-up)."""
    from rollout.decide import DecisionRule

    return DecisionRule(**svc.settings.decision_params)


async def run_decisions(svc: RolloutService) -> list[Recommendation]:
    """Apply the decision rule; act on it when automatic decisions are on."""
    from rollout.decide import decide

    await svc.refresh_state()
    snap = svc.pool.snapshot
    if snap.champion is None or svc.frozen:
        svc.recommendations = []
        return []
    challengers = [a for a in snap.rotation if a != snap.champion]
    if not challengers:
        svc.recommendations = []
        return []
    stats = {s.arm: s for s in svc.arm_stats([snap.champion, *challengers])}
    decisions = decide(
        stats[snap.champion],
        [stats[a] for a in challengers],
        svc.rule,
        np.random.default_rng(svc.settings.seed),
        reward_kind=svc.policy.reward_kind,
    )
    recs = []
    for d in decisions:
        rec = Recommendation(action=str(d.action), arm=d.arm, reason=d.reason)
        if svc.settings.auto_decisions and rec.action in ("promote", "retire", "rollback"):
            try:
                await act(svc, rec)
                rec.applied = True
            except Exception as exc:
                _log.error("could not %s %s: %s", rec.action, rec.arm, exc)
        recs.append(rec)
    svc.recommendations = recs
    return recs


async def act(svc: RolloutService, rec: Recommendation) -> None:
    """Carry out one recommendation through the same registry writes as the admin routes."""
    if rec.action == "promote":
        await admin.promote(svc, rec.arm, f"auto: {rec.reason}")
    elif rec.action == "retire":
        await admin.retire_arm(svc, rec.arm, f"auto: {rec.reason}")
    elif rec.action == "rollback":
        await admin.rollback(svc, f"auto: {rec.reason}")
