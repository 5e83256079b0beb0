"""Concurrent comparisons: each challenger against the champion over the same period.

An A/B comparison is valid on concurrent traffic. The store's sums run since each arm
joined, so a champion that earned well before a drift and worse after would be judged on
mostly pre-drift outcomes against a challenger that only saw post-drift ones. The first
time a decision run judges a challenger against a champion (or when the challenger joins
seen in rotation), both arms' sums are stored for the pair (inserted if
absent: replicas agree on the first writer); the rule then reads each arm's sums since
then. A promotion makes a new champion, hence new pairs that start afresh.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout.multimetric import GuardrailMetric, live_stats
from rollout.policies import ArmStats
from rollout.store_schema import StoredStats

_log = logging.getLogger(__name__)
Reported = Mapping[str, Mapping[str, tuple[int, float, float]]]


@dataclass(frozen=True)
class Sums:
    """An arm's plain sums and guardrail counts (as stored, or since a baseline)."""

    outcomes: float = 0.0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    attempts: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    metrics: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def plain(self, arm: str) -> ArmStats:
        return ArmStats(arm, max(self.outcomes, 0.0), self.reward_sum, max(self.reward_sq_sum, 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "plain": [self.outcomes, self.reward_sum, self.reward_sq_sum],
            "made": [self.attempts, self.errors],
            "latency": {str(b): n for b, n in self.latency.items()},
            "metrics": {k: list(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sums:
        n, s, q = data.get("plain", (0.0, 0.0, 0.0))
        attempts, errors = data.get("made", (0, 0))
        return cls(
            float(n),
            float(s),
            float(q),
            int(attempts),
            int(errors),
            {int(b): int(c) for b, c in data.get("latency", {}).items()},
            {
                k: (float(v[0]), float(v[1]), float(v[2]))
                for k, v in data.get("metrics", {}).items()
            },
        )

    def minus(self, base: Sums) -> Sums:
        """Return the sums accumulated since ``base`` (never a negative count)."""
        return Sums(
            max(self.outcomes - base.outcomes, 0.0),
            self.reward_sum - base.reward_sum,
            max(self.reward_sq_sum - base.reward_sq_sum, 0.0),
            max(self.attempts - base.attempts, 0),
            max(self.errors - base.errors, 0),
            {b: n - base.latency.get(b, 0) for b, n in self.latency.items()},
            {
                k: tuple(a - b for a, b in zip(v, base.metrics.get(k, (0, 0, 0)), strict=True))  # type: ignore[misc]
                for k, v in self.metrics.items()
            },
        )


def current(
    arm: str,
    stats: Mapping[str, StoredStats],
    latency: Mapping[str, Mapping[int, int]],
    reported: Reported,
) -> Sums:
    """Return ``arm``'s sums as stored now (zero when it has none)."""
    s = stats.get(arm)
    return Sums(
        float(s.outcomes) if s else 0.0,
        s.total_reward_sum if s else 0.0,
        s.total_reward_sq_sum if s else 0.0,
        int(s.attempts) if s else 0,
        int(s.errors) if s else 0,
        dict(latency.get(arm, {})),
        {m: tuple(map(float, cells[arm])) for m, cells in reported.items() if arm in cells},  # type: ignore[misc]
    )


@dataclass(frozen=True)
class Pair:
    """A challenger's comparison: both arms' sums since the pair's baseline."""

    champion: Sums
    challenger: Sums


def concurrent(
    store: Any,
    champion: str,
    challengers: Sequence[str],
    stats: Mapping[str, StoredStats],
    latency: Mapping[str, Mapping[int, int]],
    reported: Reported,
) -> dict[str, Pair]:
    """Return each challenger's pair since its baseline (recorded now if it has none)."""
    now = {a: current(a, stats, latency, reported) for a in [champion, *challengers]}
    proposed = {
        ch: {"champion": now[champion].to_json(), "challenger": now[ch].to_json()}
        for ch in challengers
        if ch != champion
    }
    stored = store.pair_baselines(champion, proposed)
    out = {}
    for ch, base in proposed.items():
        base = stored.get(ch, base)
        out[ch] = Pair(
            now[champion].minus(Sums.from_json(base["champion"])),
            now[ch].minus(Sums.from_json(base["challenger"])),
        )
    return out


_SEEN: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def notice(svc: Any) -> None:
    """Start the pair of each challenger newly seen in rotation with the champion: when it
    joins (at start-up, an admin write, an alias poll). Blocking: call it in a thread."""
    snap = svc.pool.snapshot
    champion = snap.champion
    if champion is None:
        return
    seen = _SEEN.setdefault(svc, set())
    new = [a for a in snap.rotation if a != champion and (a, champion) not in seen]
    if not new:
        return
    store = svc.store
    try:
        concurrent(
            store, champion, new, store.read_stats(), store.read_latency(), store.read_metrics()
        )
    except Exception as exc:  # the decision run records it then
        _log.warning("could not record the baselines of %s: %s", ", ".join(new), exc)
        return
    seen.update((a, champion) for a in new)


def forget(svc: Any, *, challenger: str | None = None, champion: str | None = None) -> None:
    """Drop pairs that no longer describe one period (blocking): a challenger that left, a
    champion that starts a new reign. The next reload records them afresh."""
    _SEEN.pop(svc, None)
    svc.store.forget_baselines(challenger=challenger, champion=champion)


def guardrail_stats(
    metrics: Sequence[GuardrailMetric], champion: str, challenger: str, pair: Pair
) -> dict[str, dict[str, ArmStats]]:
    """Return ``live_stats`` for one pair: the two arms over the pair's period."""
    arms = {champion: pair.champion, challenger: pair.challenger}
    return live_stats(
        metrics,
        {a: (s.attempts, s.errors) for a, s in arms.items()},
        {a: s.latency for a, s in arms.items()},
        {
            m.name: {a: s.metrics[m.name] for a, s in arms.items() if m.name in s.metrics}  # type: ignore[misc]
            for m in metrics
        },
    )
