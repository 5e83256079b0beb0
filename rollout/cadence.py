"""When the service re-reads its statistics and decides: on the wall clock, or at counts.

On the wall clock (the default, for production) background loops re-read the statistics
every ``stats_refresh_ms`` and decide every ``decision_interval_s``. What such a tick sees
depends on how far the traffic and the writer's group commits have got by then, so under
load the same traffic gets a different story: another allocation between refreshes, a
promotion some thousands of outcomes later.

At counts (``refresh_every_outcomes``, ``decide_every_outcomes``): every acknowledged
feedback batch advances a counter, started from the outcomes already in the store. When a
batch carries it across a multiple, the writer is flushed (every decision and prediction
count so far is in the store), the statistics are re-read (the Thompson draws and the
allocation start again from them, from the RNG the ``seed`` setting seeded) and, at a
decision point, the checks and the rule run — all before the feedback is acknowledged. So a
client that sends the same traffic in the same order meets every refresh and decision at
the same place in its stream, and the same seed gives the same decisions at the same
outcome counts, on a quiet machine or a loaded one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollout.service import RolloutService


@dataclass
class Cadence:
    """The acknowledged-outcome counter and the lock that orders the points it crosses."""

    count: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refreshes: int = 0
    decision_runs: int = 0


_log = logging.getLogger(__name__)
_CADENCE: weakref.WeakKeyDictionary[Any, Cadence] = weakref.WeakKeyDictionary()


def counted(svc: RolloutService) -> bool:
    """Whether refreshes or decisions follow the outcome count (not the wall clock)."""
    s = svc.settings
    return s.refresh_every_outcomes is not None or s.decide_every_outcomes is not None


def begin(svc: RolloutService) -> Cadence:
    """Start the counter at the outcomes already stored (call once the state is loaded)."""
    c = _CADENCE[svc] = Cadence(count=sum(int(s.outcomes) for s in svc.stats.values()))
    if counted(svc) and getattr(svc.policy, "choose_in_segment", None) is not None:
        from rollout.segments import load_segments

        load_segments(svc)  # a contextual policy's first draws wait for no background read
    return c


def cadence(svc: RolloutService) -> Cadence:
    return _CADENCE.get(svc) or begin(svc)


def crossed(before: int, after: int, every: int | None) -> bool:
    """Whether going from ``before`` to ``after`` passes a multiple of ``every``."""
    return every is not None and after // every > before // every


async def outcomes_acknowledged(svc: RolloutService, n: int) -> None:
    """Count ``n`` newly accepted outcomes; refresh and decide at the points they cross."""
    if n <= 0 or not counted(svc):
        return
    s = svc.settings
    c = cadence(svc)
    async with c.lock:
        before, c.count = c.count, c.count + n
        decide = crossed(before, c.count, s.decide_every_outcomes)
        refresh = crossed(before, c.count, s.refresh_every_outcomes)
        if not (decide or refresh):
            return
        try:
            await _point(svc, c, decide=decide)
        except Exception:
            # The feedback is recorded whatever happens here: its answer stays a 200, and the
            # next point the count crosses reads and decides again.
            svc.metrics.errors.labels("cadence", "").inc()
            _log.exception(
                "the %s point at %d outcomes failed", "decision" if decide else "refresh", c.count
            )


async def _point(svc: RolloutService, c: Cadence, *, decide: bool) -> None:
    assert svc.writer is not None
    await svc.writer.flush()
    if decide:
        c.decision_runs += 1
        await svc.run_decisions()  # re-reads the statistics first
    else:
        c.refreshes += 1
        await svc.refresh_state()
    if getattr(svc.policy, "choose_in_segment", None) is not None:
        from rollout.segments import refresh_segments

        await refresh_segments(svc)  # a contextual policy's per-segment statistics too


async def exclusive(svc: RolloutService, job: Callable[[], Awaitable[Any]]) -> Any:
    """Run a wall-clock job (the alias poll) between points, never inside one.

    At counts, a poll that ran while a decision point was promoting would see the registry
    half-way and re-draw the allocation at a moment the wall clock chose.
    """
    if not counted(svc):
        return await job()
    async with cadence(svc).lock:
        return await job()


def status(svc: RolloutService) -> dict[str, Any]:
    """What ``GET /arms`` shows of the cadence."""
    s = svc.settings
    if not counted(svc):
        return {
            "mode": "wall clock",
            "stats_refresh_ms": s.stats_refresh_ms,
            "decision_interval_s": s.decision_interval_s,
        }
    c = cadence(svc)
    return {
        "mode": "outcome counts",
        "refresh_every_outcomes": s.refresh_every_outcomes,
        "decide_every_outcomes": s.decide_every_outcomes,
        "acknowledged": c.count,
        "refreshes": c.refreshes,
        "decision_runs": c.decision_runs,
    }
