"""Reports: each arm's statistics and posterior (/arms), the dashboard's history, readiness."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rollout import cadence, decisions, segments
from rollout.pool import ArmEntry
from rollout.schemas import ArmReport, ArmsResponse, ModelRef, ShadowComparison, jsonable
from rollout.store import StoredStats

if TYPE_CHECKING:
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)
READINESS_PROBE = "readiness_probe"  # a config key /readyz writes to prove the store is writable


async def arms_report(svc: RolloutService) -> ArmsResponse:
    """Each arm's statistics, traffic share, P(best) and expected loss."""
    since = svc.clock() - svc.settings.share_window_s
    stats, traffic, shadow, by_segment = await asyncio.to_thread(
        lambda: (
            svc.store.read_stats(),
            svc.store.traffic(since),
            svc.store.shadow_summary(),
            svc.store.read_segment_stats(),
        )
    )
    if not cadence.counted(svc):  # at outcome counts, only the feedback path refreshes
        svc.set_stats(stats)
    snap = svc.pool.snapshot
    serving = svc.serving_arms(snap)
    summary = posterior(svc, serving)
    total_traffic = sum(traffic.get(a, 0) for a in snap.arms) or 0
    reports = []
    for arm, entry in sorted(snap.arms.items()):
        share = (traffic.get(arm, 0) / total_traffic) if total_traffic else None
        reports.append(
            _arm_report(svc, entry, stats.get(arm), summary.get(arm, {}), arm in serving, share)
        )
        if arm in shadow:
            reports[-1].shadow = ShadowComparison(**shadow[arm])
    return ArmsResponse(
        model_name=svc.settings.model_name,
        policy=svc.policy.name,
        policy_params=jsonable(svc.policy.params),
        frozen=svc.frozen,
        auto_decisions=svc.settings.auto_decisions,
        share_window_s=svc.settings.share_window_s,
        arms=reports,
        recommendations=svc.recommendations,
        decisions=decisions.status(svc),
        segments=segments.segment_report(svc, serving, by_segment),
    )


def _arm_report(
    svc: RolloutService,
    entry: ArmEntry,
    s: StoredStats | None,
    sm: Mapping[str, float],
    in_rotation: bool,
    traffic_share: float | None,
) -> ArmReport:
    return ArmReport(
        arm=entry.arm,
        model=ModelRef(name=svc.settings.model_name, version=entry.version),
        role=entry.role,
        in_rotation=in_rotation,
        out_of_rotation_reason=entry.error,
        served=s.served if s else 0,
        pulls=s.pulls if s else 0.0,
        outcomes=s.outcomes if s else 0,
        reward_sum=s.reward_sum if s else 0.0,
        mean=(s.reward_sum / s.pulls) if s and s.pulls > 0 else None,
        traffic_share=traffic_share,
        intended_share=svc.allocation.get(entry.arm, 0.0) if in_rotation else 0.0,
        p_best=sm.get("p_best"),
        expected_loss=sm.get("expected_loss"),
        errors=svc.errors_by_arm.get(entry.arm, 0),
    )


def posterior(svc: RolloutService, arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """P(best), expected loss and mean per arm (empty if the Monte-Carlo step fails)."""
    if not arms:
        return {}
    from rollout.decide import posterior_summary

    try:
        summary = posterior_summary(
            svc.arm_stats(arms), policy=svc.policy, rng=np.random.default_rng(0)
        )
    except Exception as exc:  # a report never fails on the Monte-Carlo step
        _log.error("posterior summary failed: %s", exc)
        return {}
    return {arm: _summary_dict(value) for arm, value in _items(summary)}


def _items(summary: Any) -> list[tuple[str, Any]]:
    if isinstance(summary, Mapping):
        return list(summary.items())
    return [(getattr(s, "arm"), s) for s in summary]  # noqa: B009


def _summary_dict(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {k: float(v) for k, v in value.items() if isinstance(v, int | float)}
    return {
        k: float(getattr(value, k))
        for k in ("mean", "p_best", "expected_loss")
        if hasattr(value, k)
    }


async def history(svc: RolloutService, minutes: float, buckets: int) -> dict[str, Any]:
    """Traffic share over time and cumulative reward per arm, for the dashboard."""
    bucket_s = max(minutes * 60.0 / max(buckets, 1), 1.0)
    since = svc.clock() - minutes * 60.0
    raw = await asyncio.to_thread(svc.store.history, since, bucket_s)
    served: dict[float, dict[str, int]] = defaultdict(dict)
    for t, arm, n in raw["served"]:
        served[t][arm] = n
    cumulative = dict(raw["reward_before"])
    rewards: list[dict[str, Any]] = []
    by_time: dict[float, list[tuple[str, float]]] = defaultdict(list)
    for t, arm, total, _n in raw["rewards"]:
        by_time[t].append((arm, total))
    for t in sorted(by_time):
        for arm, total in by_time[t]:
            cumulative[arm] = cumulative.get(arm, 0.0) + total
        rewards.append({"t": t, "cumulative": dict(cumulative)})
    share = []
    for t in sorted(served):
        total = sum(served[t].values())
        share.append({"t": t, "share": {a: n / total for a, n in served[t].items()}})
    return {"bucket_s": bucket_s, "traffic": share, "rewards": rewards}


def _lookup_status(svc: RolloutService) -> str:
    """Whether entity lookups work: off, opening, ready, or why not (they never block ready)."""
    lookup = svc.lookup
    if not lookup.configured:
        return "off"
    if lookup.error:
        return lookup.error
    return f"ready ({lookup.repo})" if lookup.ready else "opening the Feast store"


def readiness(svc: RolloutService) -> tuple[bool, dict[str, Any]]:
    """Whether the service can serve (an arm to fall back on, the store writable), and why not.

    The store check writes (a readiness probe row): read-only files or a full disk fail it.
    """
    snap = svc.pool.snapshot
    store_ok, store_detail = True, "ok"
    try:
        svc.store.ping()
        svc.store.set_config(READINESS_PROBE, svc.clock())
    except Exception as exc:
        store_ok, store_detail = False, f"cannot write the state store ({type(exc).__name__})"
        svc.store_error = store_detail
    models = {
        arm: {
            "version": e.version,
            "role": e.role,
            "loaded": e.model is not None,
            "in_rotation": e.serving,
            "error": e.error,
            "flavour": e.model.flavour if e.model else None,
        }
        for arm, e in sorted(snap.arms.items())
    }
    anchor = svc.anchor(snap)
    ready = store_ok and anchor is not None and svc.started
    detail: dict[str, Any] = {
        "ready": ready,
        "champion": snap.champion,
        "serving_from": anchor.arm if anchor is not None else None,
        "models": models,
        "store": store_detail,
        "entity_lookups": _lookup_status(svc),
    }
    if snap.champion_model() is None:
        detail["reason"] = svc.no_model_reason(snap)
        if anchor is not None:
            detail["reason"] += f"; serving from {anchor.arm}, the best loaded arm, meanwhile"
    if snap.registry_error:
        detail["registry"] = snap.registry_error
    return ready, detail
