"""The rollout state store: decisions, feedback and per-arm statistics in SQL.

SQLite (WAL) by default, PostgreSQL by URL. Every counter moves by an atomic SQL increment
(``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``), never a read-modify-write in
Python, so any number of processes share one database; feedback is unique per request id.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from rollout import upserts
from rollout.store_baselines import BaselineCounters
from rollout.store_health import HealthBatch, HealthCounters
from rollout.store_reads import StoreReads
from rollout.store_restart import PolicyRestart
from rollout.store_schema import (
    _COUNTERS,
    DecisionRow,
    FeedbackRow,
    FeedbackStatus,
    Increment,
    ShadowRow,
    StoredStats,
    add_missing_columns,
    arm_stats,
    configure_sqlite,
    decisions,
    feedback,
    meta,
    metadata,
    normalize_url,
    shadow_log,
    sum_feedback,
)
from rollout.store_segments import SegmentCounters

__all__ = ["DecisionRow", "FeedbackRow", "FeedbackStatus", "ShadowRow", "Store", "StoredStats",
           "normalize_url", "sum_feedback"]  # fmt: skip
# The order of _insert_decisions' tuples; the compiled SQL is checked against it
# (upserts.driver_insert_ignoring), so a table whose columns moved fails loudly.
_DECISION_COLUMNS = ("request_id", "arm", "unit_id", "created_at", "settled", "propensity",
                     "policy", "segment")  # fmt: skip


class Store(HealthCounters, StoreReads, SegmentCounters, BaselineCounters, PolicyRestart):
    """SQL state of the rollout; safe to share between threads, processes and replicas."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"  # rollout.upserts' key
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            configure_sqlite(self.engine, sqlite_synchronous)
        elif self.url.startswith("postgresql"):
            self.engine = create_engine(self.url, pool_size=5, max_overflow=5, pool_pre_ping=True)
        else:
            raise ValueError(f"state_url must be a sqlite:/// or postgresql:// URL, got {url!r}")

    # --- setup -------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables if missing (several processes may race here: retry)."""
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                add_missing_columns(self.engine)
                return
            except (OperationalError, IntegrityError, DBAPIError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(select(1)).scalar_one()

    def _read(self) -> Connection:
        # A deferred BEGIN on SQLite: readers never wait for the write lock.
        return self.engine.connect().execution_options(sqlite_begin="DEFERRED")

    def _insert(self, table: Table) -> Any:
        if self.is_sqlite:
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    def _write(self, work: Any, *, durable: bool = True) -> Any:
        """Run ``work(conn)`` in one write transaction, retrying deadlocks and busy errors.

        ``durable=False`` (SQLite): commit without the fsync (WAL + synchronous=NORMAL),
        which survives a process crash but not a power cut; for rows that may be lost.
        """
        options = {} if durable else {"sqlite_synchronous": "NORMAL"}
        for attempt in range(8):
            try:
                with self.engine.connect().execution_options(**options) as conn, conn.begin():
                    return work(conn)
            except OperationalError as exc:
                retryable = "locked" in str(exc) or "deadlock" in str(exc).lower()
                if not retryable or attempt == 7:
                    if self.is_sqlite:
                        # SQLite opens a file it cannot write read-only, and that connection
                        # stays so: pooled, it refused every write after the file recovered
                        # (while reads, and /readyz, were fine). Fresh connections next time.
                        self.engine.dispose()
                    raise
                time.sleep(0.01 * 2**attempt)
            except DBAPIError as exc:
                # PostgreSQL: deadlock_detected / serialization_failure.
                code = getattr(getattr(exc, "orig", None), "sqlstate", None)
                if code not in ("40P01", "40001") or attempt == 7:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    # --- key/value runtime configuration (shared by replicas) --------------------------
    def get_or_create_secret(self) -> str:
        """Return the request-id signing secret, created once per database."""
        stmt = self._insert(meta).values(key="token_secret", value=secrets.token_hex(32))
        self._write(lambda conn: conn.execute(stmt.on_conflict_do_nothing()))
        with self._read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == "token_secret"))
            return str(value.scalar_one())

    def read_config(self) -> dict[str, Any]:
        """Return the runtime configuration the admin routes set (policy, freeze, ...)."""
        with self._read() as conn:
            rows = conn.execute(
                select(meta.c.key, meta.c.value).where(meta.c.key != "token_secret")
            )
            return {key: json.loads(value) for key, value in rows}

    def set_config(self, key: str, value: Any) -> None:
        stmt = self._insert(meta).values(key=key, value=json.dumps(value))
        stmt = stmt.on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": stmt.excluded.value}
        )
        self._write(lambda conn: conn.execute(stmt))

    # --- the write path ------------------------------------------------------------------
    def apply_batch(
        self,
        new_decisions: Sequence[DecisionRow] = (),
        new_feedback: Sequence[FeedbackRow] = (),
        shadows: Sequence[ShadowRow] = (),
        *,
        discount: float | None = None,
        health: HealthBatch | None = None,
    ) -> list[tuple[FeedbackStatus, str | None]]:
        """Record decisions, feedback, shadow rows and predictions' health (made, failed,
        latency per arm) in ONE transaction (a group commit).

        Returns, for each feedback row in order, ``(status, arm)``: whether it was counted,
        was a duplicate of one already stored, or names a request id with no decision.
        """
        # Only feedback is acknowledged to a client; decisions alone need no fsync.
        return self._write(
            lambda conn: self._apply(conn, new_decisions, new_feedback, shadows, discount, health),
            durable=bool(new_feedback),
        )

    def _apply(
        self,
        conn: Connection,
        new_decisions: Sequence[DecisionRow],
        new_feedback: Sequence[FeedbackRow],
        shadows: Sequence[ShadowRow],
        discount: float | None,
        health: HealthBatch | None = None,
    ) -> list[tuple[FeedbackStatus, str | None]]:
        if health:
            self._count_health(conn, health)
        if new_decisions:
            self._insert_decisions(conn, new_decisions)
        if shadows:
            self._insert_shadows(conn, shadows)
        if not new_feedback:
            return []
        return self._apply_feedback(conn, new_feedback, discount)

    def _insert_decisions(self, conn: Connection, new_decisions: Sequence[DecisionRow]) -> None:
        conn.exec_driver_sql(
            upserts.driver_insert_ignoring(self.dialect, decisions, _DECISION_COLUMNS),
            [
                (
                    d.request_id,
                    d.arm,
                    d.unit_id,
                    d.created_at,
                    False,
                    d.propensity,
                    d.policy,
                    d.segment,
                )
                for d in new_decisions
            ],
        )
        served: dict[str, int] = defaultdict(int)
        for d in new_decisions:
            served[d.arm] += 1
        self._increment(conn, {arm: (0.0, 0.0, 0.0, n, 0, 0.0, 0.0) for arm, n in served.items()})
        self._count_segment_decisions(conn, new_decisions)
        self._count_assignments(conn, new_decisions)

    def _insert_shadows(self, conn: Connection, shadows: Sequence[ShadowRow]) -> None:
        conn.execute(
            shadow_log.insert(),
            [
                {
                    "request_id": s.request_id,
                    "served_arm": s.served_arm,
                    "shadow_arm": s.shadow_arm,
                    "served_prediction": json.dumps(s.served_prediction),
                    "shadow_prediction": json.dumps(s.shadow_prediction),
                    "served_score": s.served_score,
                    "shadow_score": s.shadow_score,
                    "created_at": s.created_at,
                }
                for s in shadows
            ],
        )

    def _apply_feedback(
        self, conn: Connection, new_feedback: Sequence[FeedbackRow], discount: float | None
    ) -> list[tuple[FeedbackStatus, str | None]]:
        # Attribute feedback whose request id is not a signed token from the decisions table.
        missing = {f.request_id for f in new_feedback if f.arm is None}
        looked_up: dict[str, str] = {}
        if missing:
            rows = conn.execute(
                select(decisions.c.request_id, decisions.c.arm).where(
                    decisions.c.request_id.in_(missing)
                )
            )
            looked_up = {str(rid): str(arm) for rid, arm in rows}

        statuses: list[FeedbackStatus] = []
        arms: list[str | None] = []
        candidates: dict[str, dict[str, Any]] = {}
        for f in new_feedback:
            arm = f.arm if f.arm is not None else looked_up.get(f.request_id)
            arms.append(arm)
            if arm is None:
                statuses.append("unknown")
            elif f.request_id in candidates:
                statuses.append("duplicate")  # twice in the same batch: the first one counts
            else:
                statuses.append("accepted")  # provisional: the insert below decides
                candidates[f.request_id] = {
                    "request_id": f.request_id,
                    "arm": arm,
                    "reward": f.reward,
                    "kind": "feedback",
                    "created_at": f.created_at,
                }
        inserted = self._insert_feedback(conn, list(candidates.values()))
        ordered = [candidates[rid] for rid in candidates if rid in inserted]
        metrics = {f.request_id: f.metrics for f in new_feedback if f.metrics}
        self._count_metrics(
            conn,
            [(r["arm"], metrics[r["request_id"]]) for r in ordered if r["request_id"] in metrics],
        )
        self._count_rewards(conn, [(row["arm"], row["reward"]) for row in ordered], discount)
        self._count_segment_rewards(
            conn, [(row["request_id"], row["arm"], row["reward"]) for row in ordered]
        )
        for i, f in enumerate(new_feedback):
            if statuses[i] == "accepted" and f.request_id not in inserted:
                statuses[i] = "duplicate"
        return list(zip(statuses, arms, strict=True))

    def _insert_feedback(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        if not rows:
            return set()
        stmt = upserts.insert_ignoring(self.dialect, feedback, ("request_id",), "request_id")
        return set(conn.execute(stmt, rows).scalars().all())

    def _count_rewards(
        self, conn: Connection, rewards: list[tuple[str, float]], discount: float | None
    ) -> None:
        """Add rewards in order; with a discount, every arm decays by gamma per reward."""
        if not rewards:
            return
        k = len(rewards)
        increments: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0, 0, 0.0, 0.0])
        for i, (arm, reward) in enumerate(rewards):
            # After rewards 1..k, reward i has been decayed (k - i) more times (i from 0 here).
            weight = 1.0 if discount is None else discount ** (k - 1 - i)
            inc = increments[arm]
            inc[0] += weight
            inc[1] += weight * reward
            inc[2] += weight * reward * reward
            inc[4] += 1
            inc[5] += reward
            inc[6] += reward * reward
        if discount is not None and discount != 1.0:
            if not self.is_sqlite:
                # Lock every row in one order so concurrent batches cannot deadlock.
                conn.execute(select(arm_stats.c.arm).order_by(arm_stats.c.arm).with_for_update())
            factor = discount**k
            conn.execute(
                update(arm_stats).values(
                    pulls=arm_stats.c.pulls * factor,
                    reward_sum=arm_stats.c.reward_sum * factor,
                    reward_sq_sum=arm_stats.c.reward_sq_sum * factor,
                )
            )
        self._increment(conn, {arm: tuple(v) for arm, v in increments.items()})  # type: ignore[misc]

    def _increment(self, conn: Connection, by_arm: dict[str, Increment]) -> None:
        """Atomically add each counter of ``_COUNTERS`` per arm (one SQL upsert)."""
        rows = [
            {"arm": arm, **dict(zip(_COUNTERS, v, strict=True))}
            for arm, v in sorted(by_arm.items())  # sorted: one lock order for every writer
        ]
        conn.execute(upserts.adding(self.dialect, arm_stats, ("arm",), tuple(_COUNTERS)), rows)

    # --- expiry --------------------------------------------------------------------------
    def expire(
        self,
        cutoff: float,
        *,
        mode: Literal["default", "drop"],
        default_reward: float,
        discount: float | None = None,
        limit: int = 5000,
    ) -> int:
        """Settle decisions made before ``cutoff`` that got no feedback; return how many.

        ``default`` counts them as ``default_reward``; ``drop`` records them uncounted. The
        unique request id makes this and late feedback mutually exclusive.
        """

        def work(conn: Connection) -> int:
            rows = conn.execute(
                select(decisions.c.request_id, decisions.c.arm)
                .where(decisions.c.settled.is_(False), decisions.c.created_at < cutoff)
                .order_by(decisions.c.created_at)
                .limit(limit)
            ).all()
            if not rows:
                return 0
            now = time.time()
            reward = default_reward if mode == "default" else None
            kind = "expired" if mode == "default" else "dropped"
            candidates = [
                {"request_id": rid, "arm": arm, "reward": reward, "kind": kind, "created_at": now}
                for rid, arm in rows
            ]
            inserted = self._insert_feedback(conn, candidates)
            if mode == "default":
                counted = [
                    (c["arm"], default_reward) for c in candidates if c["request_id"] in inserted
                ]
                self._count_rewards(conn, counted, discount)
                self._count_segment_rewards(
                    conn,
                    [
                        (c["request_id"], c["arm"], default_reward)
                        for c in candidates
                        if c["request_id"] in inserted
                    ],
                )
            conn.execute(
                update(decisions)
                .where(decisions.c.request_id.in_([rid for rid, _ in rows]))
                .values(settled=True)
            )
            return len(inserted)

        total = 0
        while True:
            n = self._write(work)
            total += n
            if n < limit:
                return total
