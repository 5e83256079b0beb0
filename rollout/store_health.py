"""Per-arm health and assignment counters in the store: what the guardrail metrics of a
promotion and the sample-ratio test read.

Since each arm joined: the predictions it made and how many failed (``rollout_arm_stats``),
its per-prediction latencies as a log-spaced histogram (``rollout_latency_buckets``,
``PER_DOUBLING`` buckets per doubling from 1 µs: a bucket's edges are 9 % apart), and the
units the policy's draw assigned to it with the sum of their log propensities. Every count
moves by the same atomic SQL upsert as the reward counters (``x = x + excluded.x``), so
replicas sharing one database add exactly.

Why a histogram of counts and not a running p99: a quantile has no sufficient statistic
that adds across batches and replicas, but "how many predictions were slower than T" does,
for any ``T`` on a bucket edge. That count is a sum of i.i.d. Bernoulli indicators, so the
share above a threshold fixed in advance can be tested with the same always-valid mSPRT as
any other rate (``rollout.multimetric``); and ``p99 <= T`` exactly when that share is at
most 1 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, select

from rollout import upserts
from rollout.store_schema import DecisionRow, arm_metrics, arm_stats, latency_buckets

BASE_MS = 0.001  # the lower edge of bucket 0 (1 µs)
PER_DOUBLING = 8
MAX_BUCKET = 8 * 27  # ~134 s: anything slower lands in the last bucket


def latency_bucket(latency_ms: float) -> int:
    """Return the histogram bucket of one latency (milliseconds)."""
    if not latency_ms > BASE_MS:  # also NaN
        return 0
    return min(int(PER_DOUBLING * math.log2(latency_ms / BASE_MS)), MAX_BUCKET)


def bucket_edge(bucket: int) -> float:
    """Return the lower edge (milliseconds) of ``bucket``."""
    return BASE_MS * 2.0 ** (bucket / PER_DOUBLING)


def slower_than(buckets: Mapping[int, int], threshold_ms: float) -> tuple[int, float]:
    """Return (predictions at or above the edge ``threshold_ms`` rounds down to, that edge)."""
    first = latency_bucket(threshold_ms)
    return sum(n for b, n in buckets.items() if b >= first), bucket_edge(first)


def quantile_ms(buckets: Mapping[int, int], q: float) -> float | None:
    """Return the upper edge of the bucket holding the ``q`` quantile (None: no data)."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= q * total:
            return bucket_edge(b + 1)
    return bucket_edge(max(buckets) + 1)


@dataclass
class HealthCounts:
    """One arm's predictions not yet in the store: made, failed, latency histogram."""

    attempts: int = 0
    errors: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, other: HealthCounts) -> None:
        self.attempts += other.attempts
        self.errors += other.errors
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n


HealthBatch = Mapping[str, HealthCounts]


class HealthCounters:
    """Health and assignment upserts and reads; ``Store`` provides I/O."""

    dialect: str  # rollout.upserts' key, set by ``Store``

    def _read(self) -> Connection:
        raise NotImplementedError

    def _insert(self, table: Table) -> Any:
        raise NotImplementedError

    def _add_to_arms(self, conn: Connection, by_arm: Mapping[str, Mapping[str, float]]) -> None:
        """Atomically add named counters of ``rollout_arm_stats`` per arm (one upsert)."""
        names = sorted({name for v in by_arm.values() for name in v})
        if not names:
            return
        rows = [
            {"arm": arm, **{n: v.get(n, 0) for n in names}}
            for arm, v in sorted(by_arm.items())  # sorted: one lock order for every writer
        ]
        conn.execute(upserts.adding(self.dialect, arm_stats, ("arm",), tuple(names)), rows)

    def _count_health(self, conn: Connection, health: HealthBatch) -> None:
        """Add predictions made and failed per arm, and their latency buckets."""
        counted = {a: h for a, h in health.items() if h.attempts > 0}
        if not counted:
            return
        self._add_to_arms(
            conn, {a: {"attempts": h.attempts, "errors": h.errors} for a, h in counted.items()}
        )
        rows = [
            {"arm": a, "bucket": b, "n": n}
            for a, h in sorted(counted.items())
            for b, n in sorted(h.buckets.items())
            if n > 0
        ]
        if rows:
            stmt = upserts.adding(self.dialect, latency_buckets, ("arm", "bucket"), ("n",))
            conn.execute(stmt, rows)

    def _count_assignments(self, conn: Connection, rows: Sequence[DecisionRow]) -> None:
        """Count the policy's draws for the sample-ratio test: one per request without a unit.

        A sticky unit's requests are not independent draws (the unit keeps its arm); the
        unit is counted once, when it is first assigned (``StoreReads.assign_unit``). A row
        re-routed after its arm failed counts as the draw it was (``drawn``): leaving it out
        would under-count the failing arm and raise a false alarm.
        """
        by_arm: dict[str, dict[str, float]] = {}
        for d in rows:
            arm, p = (d.drawn, d.drawn_propensity) if d.drawn else (d.arm, d.propensity)
            if d.unit_id is None and p is not None and p > 0:
                cell = by_arm.setdefault(arm, {"assigned": 0, "assigned_log_p": 0.0})
                cell["assigned"] += 1
                cell["assigned_log_p"] += math.log(p)
        self._add_to_arms(conn, by_arm)

    def _count_metrics(
        self, conn: Connection, rows: Sequence[tuple[str, tuple[tuple[str, float], ...]]]
    ) -> None:
        """Add the other outcomes of counted feedback, ``(arm, ((name, value), ...))``."""
        cells: dict[tuple[str, str], list[float]] = {}
        for arm, values in rows:
            for name, value in values:
                cell = cells.setdefault((arm, name), [0, 0.0, 0.0])
                cell[0] += 1
                cell[1] += value
                cell[2] += value * value
        if cells:
            stmt = upserts.adding(
                self.dialect, arm_metrics, ("arm", "metric"), ("n", "total", "total_sq")
            )
            rows_ = [
                {"arm": a, "metric": m, "n": v[0], "total": v[1], "total_sq": v[2]}
                for (a, m), v in sorted(cells.items())  # one lock order for every writer
            ]
            conn.execute(stmt, rows_)

    def read_metrics(self) -> dict[str, dict[str, tuple[int, float, float]]]:
        """Return ``{metric: {arm: (count, sum, sum of squares)}}`` since each arm joined."""
        with self._read() as conn:
            rows = conn.execute(select(arm_metrics)).mappings().all()
        out: dict[str, dict[str, tuple[int, float, float]]] = {}
        for r in rows:
            out.setdefault(str(r["metric"]), {})[str(r["arm"])] = (
                int(r["n"]),
                float(r["total"]),
                float(r["total_sq"]),
            )
        return out

    def read_latency(self) -> dict[str, dict[int, int]]:
        """Return ``{arm: {bucket: predictions}}`` since each arm joined."""
        with self._read() as conn:
            rows = conn.execute(
                select(latency_buckets.c.arm, latency_buckets.c.bucket, latency_buckets.c.n)
            ).all()
        out: dict[str, dict[int, int]] = {}
        for arm, b, n in rows:
            out.setdefault(str(arm), {})[int(b)] = int(n)
        return out
