"""Decisions: the rule over the challengers, the champion's watches, the SRM check; act on them.

Each run (every ``decision_interval_s``, at every ``decide_every_outcomes`` acknowledged
outcomes (rollout.cadence), or ``POST /admin/decide``):

1. the sample-ratio test takes the units assigned since the last run (arm and propensity:
   one per request without a unit, one per sticky unit at its first assignment); a
   mismatch freezes automatic decisions and says why;
2. the live performance watch takes the champion's new outcomes; an alarm emits
   ``banditflow.performance.degraded`` (a retrain follows, even when no feature moved);
3. after a promotion, the champion watch judges the new champion against the one it
   replaced (kept in rotation on probation) and against the guardrails: roll back;
4. otherwise the decision rule (rollout.decide) judges each other challenger on the plain
   (undiscounted) sums since its pair's baseline, against the champion's over the same
   period (rollout.baselines), with the configured policy's posterior, and a promotion also needs
   every guardrail metric (rollout.multimetric: error rate, p99 latency) shown not worse
   than the champion's by its margin: promote the best / retire.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import contract
from rollout import admin, baselines, cadence
from rollout.events import emit
from rollout.multimetric import GuardrailMetric, from_settings, guardrail_blocker
from rollout.multimetric import verdict as guardrail_verdict
from rollout.policies import ArmStats
from rollout.schemas import Recommendation
from rollout.srm import SampleRatioTest
from rollout.store_health import quantile_ms
from rollout.watch import ChampionWatch, RewardWatch

if TYPE_CHECKING:
    from rollout.pool import PoolSnapshot, ServingModel
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)
WATCH_KEY = admin.WATCH_KEY


@dataclass
class Watches:
    """A service's sequential state between runs (per replica; rebuilt after a restart)."""

    performance: RewardWatch
    metrics: list[GuardrailMetric] = field(default_factory=list)
    srm: SampleRatioTest = field(default_factory=SampleRatioTest)
    champion: str | None = None
    seen: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the champion's plain sums so far
    assigned: dict[str, tuple[int, float]] = field(default_factory=dict)  # given to the SRM
    srm_reason: str | None = None
    degraded: str | None = None
    guardrails: dict[str, dict[str, Any]] = field(default_factory=dict)  # last run's verdicts
    p99_ms: dict[str, float | None] = field(default_factory=dict)  # from each arm's histogram
    applied: list[dict[str, Any]] = field(default_factory=list)  # what runs did, at which count
    restarts: list[dict[str, Any]] = field(default_factory=list)  # the policy's, at alarms


_WATCHES: weakref.WeakKeyDictionary[Any, Watches] = weakref.WeakKeyDictionary()


def watches(svc: RolloutService) -> Watches:
    if svc not in _WATCHES:
        _WATCHES[svc] = Watches(
            performance=RewardWatch(reward_kind=svc.policy.reward_kind),
            metrics=guardrail_metrics(svc),
        )
    return _WATCHES[svc]


def decision_rule(svc: RolloutService) -> Any:
    """Build the decision rule from settings (invalid parameters raise here, at start-up)."""
    from rollout.decide import DecisionRule

    guardrail_metrics(svc)  # an invalid guardrail metric fails at start-up too
    return DecisionRule(**svc.settings.decision_params)


def guardrail_metrics(svc: RolloutService) -> list[GuardrailMetric]:
    s = svc.settings
    return from_settings(s.guardrail_metrics, s.guardrail_max_p99_ms)


def outcomes(svc: RolloutService) -> int:
    """Return the outcomes counted over every arm (plain, in the statistics last read)."""
    return sum(int(s.outcomes) for s in svc.stats.values())


def plain(svc: RolloutService, arm: str) -> ArmStats:
    """Return an arm's undiscounted statistics since it joined (what the rules read)."""
    s = svc.stats.get(arm)
    return s.plain_stats() if s is not None else ArmStats(arm)


async def run_decisions(svc: RolloutService) -> list[Recommendation]:
    """Run the checks and the rule; act on them when automatic decisions are on."""
    if svc.writer is not None:
        await svc.writer.flush()  # every decision and prediction count so far is read
    await svc.refresh_state()
    snap = svc.pool.snapshot
    if snap.champion is None:
        svc.recommendations = []
        return []
    w = watches(svc)
    seen = outcomes(svc)  # what this run judged on, recorded with what it did
    _check_sample_ratio(svc, w)
    await _watch_performance(svc, w, snap.champion)
    rollback = _watch_champion(svc, snap)
    recs = [rollback] if rollback is not None else await _judge_challengers(svc, snap, w)
    for rec in recs:
        # A mismatch freezes what the rewards decide; a rollback protects, it still runs.
        blocked = svc.frozen or (w.srm_reason is not None and rec.action != "rollback")
        if svc.settings.auto_decisions and not blocked and rec.action != "keep":
            try:
                await act(svc, rec)
                rec.applied = True
                w.applied.append({"outcomes": seen, "action": rec.action, "arm": rec.arm})
            except Exception as exc:
                _log.error("could not %s %s: %s", rec.action, rec.arm, exc)
        elif w.srm_reason is not None and rec.action != "keep":
            rec.reason += f" (not applied: automatic decisions frozen, {w.srm_reason})"
    svc.recommendations = recs
    svc.metrics.srm_log_e.set(min(w.srm.log_e, 1e6))
    svc.metrics.decisions_frozen.set(float(w.srm_reason is not None))
    svc.metrics.change_statistic.set(w.performance.statistic)
    return recs


async def _judge_challengers(
    svc: RolloutService, snap: PoolSnapshot, w: Watches
) -> list[Recommendation]:
    from rollout.decide import decide, log_promotion_bar

    champion = snap.champion
    assert champion is not None
    on_probation = _watched(svc, champion).get("replaced")
    challengers = [a for a in snap.rotation if a not in (champion, on_probation)]
    if not challengers:
        w.guardrails = {}
        return []
    stats, latency, reported = await asyncio.to_thread(
        lambda: (svc.store.read_stats(), svc.store.read_latency(), svc.store.read_metrics())
    )
    # Each challenger against the champion's outcomes over the same period (concurrent).
    pairs = await asyncio.to_thread(
        baselines.concurrent, svc.store, champion, challengers, stats, latency, reported
    )
    blocker = None
    if w.metrics:
        w.p99_ms = {a: quantile_ms(latency.get(a, {}), 0.99) for a in [champion, *challengers]}
        per_pair = {a: baselines.guardrail_stats(w.metrics, champion, a, pairs[a]) for a in pairs}
        blocks = {
            a: guardrail_blocker(w.metrics, per_pair[a], champion, svc.rule, len(challengers))
            for a in pairs
        }
        blocker = lambda arm: blocks[arm](arm)  # noqa: E731
        bar = log_promotion_bar(svc.rule, len(challengers))
        w.guardrails = {
            a: {
                m.name: guardrail_verdict(
                    m, per_pair[a][m.name].get(champion), per_pair[a][m.name].get(a), bar
                )
                for m in w.metrics
            }
            for a in challengers
        }
    decisions = decide(
        plain(svc, champion),
        [pairs[a].challenger.plain(a) for a in challengers],
        svc.rule,
        np.random.default_rng(svc.settings.seed),
        policy=svc.policy,
        blocker=blocker,
        concurrent={a: pairs[a].champion.plain(champion) for a in challengers},
    )
    return [Recommendation(action=str(d.action), arm=d.arm, reason=d.reason) for d in decisions]


def _watched(svc: RolloutService, champion: str) -> dict[str, Any]:
    """Return the watch of the promotion that made ``champion``, or {} if none runs."""
    watch = svc.config.get(WATCH_KEY) or {}
    return watch if watch.get("champion") == champion else {}


def standby(svc: RolloutService, snap: PoolSnapshot) -> ServingModel | None:
    """Return the model to serve while the champion fails: the champion it replaced."""
    replaced = _watched(svc, snap.champion or "").get("replaced")
    entry = snap.arms.get(str(replaced)) if replaced else None
    return entry.model if entry is not None and entry.serving else None


def champion_watch(svc: RolloutService) -> ChampionWatch:
    return ChampionWatch(false_rollback_rate=svc.rule.false_promotion_rate)


def _watch_champion(svc: RolloutService, snap: PoolSnapshot) -> Recommendation | None:
    """Return a rollback when the champion fails its watch; end the watch at its horizon."""
    champion = snap.champion
    assert champion is not None
    watch = _watched(svc, champion)
    breach = svc.guardrails.breach(champion)
    if not watch and breach is None:
        return None
    if not watch and contract.PREVIOUS_CHAMPION not in snap.aliases:
        return None  # nothing to roll back to: the guardrail is reported, the champion stays
    now = plain(svc, champion)
    n0, s0, q0 = watch.get("baseline", (0.0, 0.0, 0.0))
    since = ArmStats(
        champion, max(now.pulls - n0, 0.0), now.reward_sum - s0, max(now.reward_sq_sum - q0, 0.0)
    )
    replaced = str(watch.get("replaced", ""))
    before = plain(svc, replaced) if replaced else ArmStats(champion)
    n1, s1, q1 = watch.get("replaced_baseline", (0.0, 0.0, 0.0))  # concurrent: since promotion
    before = ArmStats(
        before.arm,
        max(before.pulls - n1, 0.0),
        before.reward_sum - s1,
        max(before.reward_sq_sum - q1, 0.0),
    )
    rule = champion_watch(svc)
    why = rule.check(
        since,
        before,
        reward_kind=svc.policy.reward_kind,
        guardrail_breach=breach,
    )
    if why is not None:
        return Recommendation(action="rollback", arm=champion, reason=f"roll back: {why}")
    if watch and rule.finished(since):
        return Recommendation(
            action="end-watch",
            arm=replaced,
            reason=f"probation over: {champion} kept after {since.pulls:,.0f} outcomes",
        )
    if watch and rule.settled(since, before, reward_kind=svc.policy.reward_kind):
        return Recommendation(
            action="end-watch",
            arm=replaced,
            reason=(
                f"probation over: {champion} shown better than {replaced} (mean "
                f"{since.mean:.4g} over {since.pulls:,.0f} outcomes since the promotion vs "
                f"{before.mean:.4g} over {before.pulls:,.0f}; always valid, wrong-rate <= "
                f"{rule.false_rollback_rate:g})"
            ),
        )
    return None


async def _watch_performance(svc: RolloutService, w: Watches, champion: str) -> None:
    """Feed the champion's new outcomes to the change detector; emit the event on an alarm."""
    now = plain(svc, champion)
    totals = (now.pulls, now.reward_sum, now.reward_sq_sum)
    if champion != w.champion:
        w.champion, w.seen, w.degraded = champion, totals, None
        w.performance = RewardWatch(reward_kind=svc.policy.reward_kind)
        return
    dn, ds, dq = (a - b for a, b in zip(totals, w.seen, strict=True))
    w.seen = totals
    if not w.performance.update(dn, ds, dq):
        return
    w.degraded = w.performance.describe()
    _log.warning("champion %s: %s", champion, w.degraded)
    w.performance.reset()
    if svc.settings.restart_on_alarm:  # the arms' earlier rewards describe the old world
        restarted = await asyncio.to_thread(svc.store.restart_policy_sums)
        w.restarts.append({"outcomes": outcomes(svc), "arms": restarted, "why": w.degraded})
        await svc.refresh_state()
    version = champion.removeprefix("v")
    await emit(
        svc.settings,
        svc.metrics,
        contract.EVENT_PERFORMANCE_DEGRADED,
        version,
        w.degraded,
        {"champion": version},
    )


def _check_sample_ratio(svc: RolloutService, w: Watches) -> None:
    """Give the units assigned since the last run (arm, sum of log propensity) to the SRM.

    From the store's ``assigned`` counters: exact, and the same whatever the writer's
    timing once it has been flushed; a sticky unit counts once, not once per request.
    """
    totals = {a: (int(s.assigned), float(s.assigned_log_p)) for a, s in svc.stats.items()}
    counts = {a: n - w.assigned.get(a, (0, 0.0))[0] for a, (n, _) in totals.items()}
    log_p = sum(lp - w.assigned.get(a, (0, 0.0))[1] for a, (_, lp) in totals.items())
    w.assigned = totals
    if any(n < 0 for n in counts.values()):  # the store was reset under us: start again
        w.srm.reset()
        return
    counts = {a: n for a, n in counts.items() if n > 0}
    if not counts:
        return
    if w.srm.update_logged(counts, min(log_p, 0.0)) and w.srm_reason is None:
        w.srm_reason = f"sample ratio mismatch: {w.srm.describe()}"
        _log.error("automatic decisions frozen: %s", w.srm_reason)


async def act(svc: RolloutService, rec: Recommendation) -> None:
    """Carry out one recommendation through the same registry writes as the admin routes."""
    if rec.action == "promote":
        await admin.promote(svc, rec.arm, f"auto: {rec.reason}")
    elif rec.action == "retire":
        await admin.retire_arm(svc, rec.arm, f"auto: {rec.reason}")
    elif rec.action == "rollback":
        await admin.rollback(svc, f"auto: {rec.reason}")
    elif rec.action == "end-watch":
        await admin.end_probation(svc, rec.arm, rec.reason)


def status(svc: RolloutService) -> dict[str, Any]:
    """What ``GET /arms`` shows of the decisions: stated rates, SRM, the watches."""
    w = watches(svc)
    rule = svc.rule
    champion = svc.pool.snapshot.champion
    return _finite(
        {
            "rule": "always-valid mSPRT on plain sums, each challenger against the champion's "
            "outcomes over the same period (since the pair's baseline), with the policy's "
            "posterior for P(best) and expected loss; a promotion also needs each guardrail "
            "metric shown non-inferior (intersection-union: the stated rate holds over the "
            "family)",
            "false_promotion_rate": getattr(rule, "false_promotion_rate", None),
            "false_retirement_rate": getattr(rule, "false_retirement_rate", None),
            "false_rollback_rate": getattr(rule, "false_promotion_rate", None),
            "automatic": svc.settings.auto_decisions and not svc.frozen and w.srm_reason is None,
            "frozen_reason": w.srm_reason,
            "srm": {"e_value": w.srm.e_value, "units": w.srm.units, "mismatch": w.srm.mismatch},
            "guardrail_metrics": {
                m.name: {"margin": m.margin, "threshold_ms": m.threshold_ms} for m in w.metrics
            },
            "guardrails": w.guardrails,
            "p99_ms": w.p99_ms,
            "applied": w.applied[-50:],
            "cadence": cadence.status(svc),
            "outcomes": outcomes(svc),
            "champion_watch": _watched(svc, champion) if champion else {},
            "performance": {
                "reference_mean": w.performance.reference_mean,
                "statistic": w.performance.statistic,
                "threshold": w.performance.threshold,
                "last_alarm": w.degraded,
                "restart_on_alarm": svc.settings.restart_on_alarm,
                "policy_restarts": w.restarts[-20:],
            },
        }
    )


def _finite(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
