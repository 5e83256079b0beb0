"""The rollout store's reads: statistics, traffic, history, shadow rows, sticky units."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Integer, Table, func, select

from rollout.store_schema import (
    StoredStats,
    arm_stats,
    decisions,
    feedback,
    shadow_log,
    units,
)


class StoreReads:
    """Reads (and the sticky-unit upsert) over the store's tables; ``Store`` provides I/O."""

    def _read(self) -> Connection:
        raise NotImplementedError

    def _insert(self, table: Table) -> Any:
        raise NotImplementedError

    def _write(self, work: Any, *, durable: bool = True) -> Any:
        raise NotImplementedError

    def _add_to_arms(self, conn: Connection, by_arm: Any) -> None:
        raise NotImplementedError

    # --- reads ---------------------------------------------------------------------------
    def read_stats(self) -> dict[str, StoredStats]:
        with self._read() as conn:
            rows = conn.execute(select(arm_stats)).mappings().all()
        return {row["arm"]: StoredStats(**row) for row in rows}

    def decision_arm(self, request_id: str) -> str | None:
        with self._read() as conn:
            return conn.execute(
                select(decisions.c.arm).where(decisions.c.request_id == request_id)
            ).scalar_one_or_none()

    def feedback_rows(self) -> list[tuple[str, str, float | None, str]]:
        """Return every stored feedback row ``(request_id, arm, reward, kind)``."""
        with self._read() as conn:
            rows = conn.execute(
                select(feedback.c.request_id, feedback.c.arm, feedback.c.reward, feedback.c.kind)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def traffic(self, since: float) -> dict[str, int]:
        """Return decisions per arm made at or after ``since``."""
        with self._read() as conn:
            rows = conn.execute(
                select(decisions.c.arm, func.count())
                .where(decisions.c.created_at >= since)
                .group_by(decisions.c.arm)
            )
            return {arm: int(n) for arm, n in rows}

    def history(self, since: float, bucket_s: float) -> dict[str, Any]:
        """Return decisions and summed rewards per arm per time bucket since ``since``."""
        bucket_d = func.cast(decisions.c.created_at / bucket_s, Integer)
        bucket_f = func.cast(feedback.c.created_at / bucket_s, Integer)
        with self._read() as conn:
            served = conn.execute(
                select(bucket_d, decisions.c.arm, func.count())
                .where(decisions.c.created_at >= since)
                .group_by(bucket_d, decisions.c.arm)
            ).all()
            rewards = conn.execute(
                select(
                    bucket_f,
                    feedback.c.arm,
                    func.coalesce(func.sum(feedback.c.reward), 0.0),
                    func.count(),
                )
                .where(feedback.c.created_at >= since, feedback.c.kind != "dropped")
                .group_by(bucket_f, feedback.c.arm)
            ).all()
            before = conn.execute(
                select(feedback.c.arm, func.coalesce(func.sum(feedback.c.reward), 0.0))
                .where(feedback.c.created_at < since, feedback.c.kind != "dropped")
                .group_by(feedback.c.arm)
            ).all()
        return {
            "served": [(int(b) * bucket_s, arm, int(n)) for b, arm, n in served],
            "rewards": [(int(b) * bucket_s, arm, float(s), int(n)) for b, arm, s, n in rewards],
            "reward_before": {arm: float(s) for arm, s in before},
        }

    def shadow_summary(self) -> dict[str, dict[str, Any]]:
        """Per shadow arm: rows logged, prediction agreement rate, mean |score difference|."""
        agree = func.sum(
            func.cast(shadow_log.c.served_prediction == shadow_log.c.shadow_prediction, Integer)
        )
        diff = func.avg(func.abs(shadow_log.c.served_score - shadow_log.c.shadow_score))
        with self._read() as conn:
            rows = conn.execute(
                select(shadow_log.c.shadow_arm, func.count(), agree, diff).group_by(
                    shadow_log.c.shadow_arm
                )
            ).all()
        return {
            arm: {
                "compared": int(n),
                "agreement": (float(a) / n) if n else None,
                "mean_abs_score_diff": None if d is None else float(d),
            }
            for arm, n, a, d in rows
        }

    def logged_assignments(self, after: float, until: float) -> tuple[dict[str, int], float, float]:
        """Return decisions logged in (after, until] with a propensity and no sticky unit.

        ``({arm: count}, sum of log propensities, until)``, for a look at a time window; the
        sample-ratio test reads the ``assigned`` counters instead (sticky units counted once
        each, exact whatever the writer's timing).
        """
        window = (
            decisions.c.created_at > after,
            decisions.c.created_at <= until,
            decisions.c.propensity > 0,
            decisions.c.unit_id.is_(None),
        )
        with self._read() as conn:
            rows = conn.execute(
                select(decisions.c.arm, func.count(), func.sum(func.ln(decisions.c.propensity)))
                .where(*window)
                .group_by(decisions.c.arm)
            ).all()
        counts = {str(arm): int(n) for arm, n, _ in rows}
        return counts, float(sum(float(s or 0.0) for _, _, s in rows)), until

    def logged_decisions(self) -> list[dict[str, Any]]:
        """Return every decision with its propensity, policy, segment and reward (or None)."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    decisions.c.request_id,
                    decisions.c.arm,
                    decisions.c.created_at,
                    decisions.c.propensity,
                    decisions.c.policy,
                    decisions.c.segment,
                    feedback.c.reward,
                )
                .select_from(
                    decisions.outerjoin(feedback, feedback.c.request_id == decisions.c.request_id)
                )
                .order_by(decisions.c.created_at)
            ).mappings()
            return [dict(r) for r in rows]

    # --- sticky units ----------------------------------------------------------------------
    def unit_arm(self, unit_id: str, fingerprint: str) -> str | None:
        return self.unit_arms([(unit_id, fingerprint)])[0]

    def unit_arms(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        """Return each (unit, arm set)'s stored arm, or None, read on one connection."""
        with self._read() as conn:
            return [
                conn.execute(
                    select(units.c.arm).where(units.c.unit_id == u, units.c.fingerprint == f)
                ).scalar_one_or_none()
                for u, f in keys
            ]

    def assign_unit(
        self, unit_id: str, fingerprint: str, arm: str, propensity: float | None = None
    ) -> str:
        """Store a unit's first arm for this arm set; return the arm that won (first writer)."""
        return self.assign_units([(unit_id, fingerprint, arm, propensity)])[0]

    def assign_units(self, rows: Sequence[tuple[str, str, str, float | None]]) -> list[str]:
        """Store each (unit, arm set, arm, propensity)'s first arm; return the arms that won.

        One write transaction for all of them (a request's new units: one commit, not one
        per unit). The writer that stores a unit also counts it for the sample-ratio test,
        with ``propensity`` (the arm's share of the split it was drawn from), in the same
        transaction: one unit, one draw, however many requests it makes and replicas race.
        """
        now = time.time()

        def work(conn: Connection) -> list[str]:
            counts: dict[str, dict[str, float]] = {}
            won = []
            for unit_id, fingerprint, arm, propensity in rows:
                stmt = self._insert(units).values(
                    unit_id=unit_id, fingerprint=fingerprint, arm=arm, created_at=now
                )
                inserted = conn.execute(stmt.on_conflict_do_nothing()).rowcount == 1
                if inserted and propensity is not None and propensity > 0:
                    count = counts.setdefault(arm, {"assigned": 0, "assigned_log_p": 0.0})
                    count["assigned"] += 1
                    count["assigned_log_p"] += math.log(propensity)
                where = (units.c.unit_id == unit_id, units.c.fingerprint == fingerprint)
                won.append(str(conn.execute(select(units.c.arm).where(*where)).scalar_one()))
            if counts:
                self._add_to_arms(conn, counts)
            return won

        return list(self._write(work))
