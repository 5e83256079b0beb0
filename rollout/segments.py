"""What each decision logs beside its arm: the segment, the propensity, the policy.

A segment is the values of the declared request features (``segment_by``), e.g.
``region=north``: the unit of the per-segment report and of contextual Thompson sampling.
The propensity is the chosen arm's share in the allocation in force, which the service
computes once per statistics refresh by Monte Carlo with the policy's own sampler
(``Policy.allocation``), never per request.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout.policies.base import DEFAULT_ALLOCATION_DRAWS, Policy
from rollout.store import DecisionRow

if TYPE_CHECKING:
    from rollout.schemas import PredictRequest
    from rollout.service import RolloutService

MAX_SEGMENT_CHARS = 200
_POLICY_LABELS: weakref.WeakKeyDictionary[Policy, str] = weakref.WeakKeyDictionary()


def segment_of(features: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """Return the segment label of a request's features, or None when none is declared."""
    if not keys:
        return None
    label = "|".join(f"{k}={features.get(k)}" for k in keys)
    return label[:MAX_SEGMENT_CHARS]


def propensity(allocation: Mapping[str, float], arm: str) -> float:
    """Return P(the policy chose ``arm``) as the allocation in force states it.

    A Monte-Carlo share can round a rarely chosen arm to 0 though it was chosen: floor it
    at half a draw, so an inverse-propensity weight stays finite.
    """
    return max(float(allocation.get(arm, 0.0)), 0.5 / DEFAULT_ALLOCATION_DRAWS)


def policy_label(policy: Policy) -> str:
    """Return the policy's name and parameters as compact JSON (computed once per policy)."""
    label = _POLICY_LABELS.get(policy)
    if label is None:
        label = json.dumps({"name": policy.name, "params": policy.params}, default=str)[:500]
        _POLICY_LABELS[policy] = label
    return label


def decision(
    svc: RolloutService,
    request_id: str,
    arm: str,
    now: float,
    req: PredictRequest,
    features: Mapping[str, Any],
    chosen: str | None = None,
) -> DecisionRow:
    """Return the row to log for one decision: arm, unit, propensity, policy, segment.

    A row re-routed after its arm failed (``chosen`` differs) was served by another arm:
    it logs no propensity, so off-policy evaluation leaves it out; the sample-ratio test
    counts it as the draw it was (``drawn``).
    """
    rerouted = chosen is not None and chosen != arm
    p = propensity(_allocation_for(svc, features), chosen if rerouted and chosen else arm)
    return DecisionRow(
        request_id,
        arm,
        now,
        req.unit_id,
        None if rerouted else p,
        policy_label(svc.policy),
        segment_of(features, svc.settings.segment_by),
        chosen if rerouted else None,
        p if rerouted else None,
    )


MAX_SEGMENTS_SHOWN = 50


def segment_report(
    svc: RolloutService, arms: Sequence[str], seg_stats: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per declared segment: each arm's decisions, outcomes, mean reward, share and P(best).

    ``seg_stats``: ``Store.read_segment_stats()``. P(best) is the configured policy's
    posterior on the segment's plain counts (a contextual policy's own, shrunk one).
    """
    import numpy as np

    from rollout.policies.base import ArmStats

    rng = np.random.default_rng(0)
    pooled = [svc.stats[a].plain_stats() if a in svc.stats else ArmStats(a) for a in arms]
    busiest = sorted(seg_stats, key=lambda s: -sum(v[0] for v in seg_stats[s].values()))[
        :MAX_SEGMENTS_SHOWN
    ]
    out = []
    for segment in busiest:
        cells = seg_stats[segment]
        stats = [
            ArmStats(a, float(cells[a][1]), cells[a][2], max(cells[a][3], 0.0))
            if a in cells
            else ArmStats(a)
            for a in arms
        ]
        if not stats:
            continue
        draws_of = getattr(svc.policy, "segment_draws", None)
        draws = (
            draws_of(stats, pooled, rng, 2000)
            if draws_of is not None
            else svc.policy.posterior_draws(stats, rng, 2000)
        )
        p_best = np.bincount(draws.argmax(axis=1), minlength=len(arms)) / len(draws)
        served = sum(int(cells[a][0]) for a in arms if a in cells)
        out.append(
            {
                "segment": segment,
                "arms": {
                    a: {
                        "served": int(cells[a][0]) if a in cells else 0,
                        "outcomes": int(cells[a][1]) if a in cells else 0,
                        "mean": (cells[a][2] / cells[a][1]) if a in cells and cells[a][1] else None,
                        "traffic_share": (cells[a][0] / served) if a in cells and served else None,
                        "p_best": float(p_best[i]),
                    }
                    for i, a in enumerate(arms)
                },
            }
        )
    return out


class _SegmentRouting:
    """Per-segment statistics (refreshed off the request path) and pre-drawn choices."""

    def __init__(self) -> None:
        self.stats: Mapping[str, Mapping[str, Any]] = {}
        self.loaded_at = -1e18
        self.loading = False
        self.key: Any = None
        self.draws: dict[str, list[str]] = {}
        self.allocation: dict[str, dict[str, float]] = {}


_ROUTING: weakref.WeakKeyDictionary[Any, _SegmentRouting] = weakref.WeakKeyDictionary()
_DRAWS = 256


def _routing(svc: RolloutService) -> _SegmentRouting:
    state = _ROUTING.get(svc)
    if state is None:
        state = _ROUTING[svc] = _SegmentRouting()
    from rollout.cadence import counted

    stale = svc.clock() - state.loaded_at > svc.settings.stats_refresh_ms / 1e3
    if not state.loading and (stale if not counted(svc) else state.loaded_at < -1e17):
        state.loading = True
        svc.spawn(refresh_segments(svc))
    return state


async def refresh_segments(svc: RolloutService) -> None:
    """Re-read the per-segment statistics (a worker thread); routing then draws anew."""
    try:
        await asyncio.to_thread(load_segments, svc)
    finally:
        _ROUTING[svc].loading = False


def load_segments(svc: RolloutService) -> None:
    """Read the per-segment statistics now (blocking): routing then draws anew."""
    state = _ROUTING.get(svc)
    if state is None:
        state = _ROUTING[svc] = _SegmentRouting()
    try:
        state.stats = svc.store.read_segment_stats()
        state.draws, state.allocation = {}, {}
    finally:
        state.loaded_at = svc.clock()


def contextual_choice(
    svc: RolloutService, arms: list[str], features: Mapping[str, Any] | None
) -> str | None:
    """Return a contextual policy's choice for this request's segment (None: not contextual).

    Choices are drawn 256 at a time per segment from the statistics of the last refresh,
    and the segment's allocation (the propensity to log) is computed once per refresh.
    """
    choose = getattr(svc.policy, "choose_in_segment", None)
    segment = segment_of(features or {}, svc.settings.segment_by)
    if choose is None or segment is None:
        return None
    from rollout.policies.base import ArmStats

    state = _routing(svc)
    key = (tuple(arms), id(svc.policy), id(state.stats))
    if key != state.key:
        state.key, state.draws, state.allocation = key, {}, {}
    pending = state.draws.get(segment)
    if not pending:
        cells = state.stats.get(segment, {})
        stats = [
            ArmStats(a, float(cells[a][1]), cells[a][2], max(cells[a][3], 0.0))
            if a in cells
            else ArmStats(a)
            for a in arms
        ]
        pooled = [svc.stats[a].plain_stats() if a in svc.stats else ArmStats(a) for a in arms]
        picks = choose(stats, pooled, svc.rng, _DRAWS)
        pending = state.draws[segment] = [arms[int(i)] for i in picks]
        state.allocation[segment] = svc.policy.segment_allocation(stats, pooled, svc.rng)  # type: ignore[attr-defined]
    return pending.pop()


def _allocation_for(svc: RolloutService, features: Mapping[str, Any]) -> Mapping[str, float]:
    """Return the allocation a decision was drawn from: its segment's for a contextual policy."""
    state = _ROUTING.get(svc)
    if state is not None and getattr(svc.policy, "contextual", False):
        segment = segment_of(features, svc.settings.segment_by)
        if segment is not None and segment in state.allocation:
            return state.allocation[segment]
    return svc.allocation
