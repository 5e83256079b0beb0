"""The rollout store's tables and rows: what is kept, one definition for every reader."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)

from rollout.policies.base import ArmStats

metadata = MetaData()

meta = Table(
    "rollout_meta",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

decisions = Table(
    "rollout_decisions",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("arm", String(200), nullable=False),
    Column("unit_id", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    # Set once the expiry sweep has looked at it (feedback came, or the window closed).
    Column("settled", Boolean, nullable=False, default=False),
    # What an off-policy evaluation needs: the probability the policy gave the chosen arm
    # then, the policy (name and parameters, JSON) and the unit's segment.
    Column("propensity", Float, nullable=True),
    Column("policy", String(500), nullable=True),
    Column("segment", String(200), nullable=True),
)
Index("ix_rollout_decisions_created", decisions.c.created_at)
Index("ix_rollout_decisions_unsettled", decisions.c.settled, decisions.c.created_at)

feedback = Table(
    "rollout_feedback",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("arm", String(200), nullable=False),
    Column("reward", Float, nullable=True),  # NULL: an expired decision that was dropped
    Column("kind", String(16), nullable=False),  # feedback | expired | dropped
    Column("created_at", Float, nullable=False),
)
Index("ix_rollout_feedback_created", feedback.c.created_at)

arm_stats = Table(
    "rollout_arm_stats",
    metadata,
    Column("arm", String(200), primary_key=True),
    Column("pulls", Float, nullable=False, default=0.0),  # outcomes counted (discounted)
    Column("reward_sum", Float, nullable=False, default=0.0),
    Column("reward_sq_sum", Float, nullable=False, default=0.0),
    Column("served", Integer, nullable=False, default=0),  # decisions made (never discounted)
    Column("outcomes", Integer, nullable=False, default=0),  # outcomes counted (never discounted)
    # Plain sums since the arm joined, beside the discounted ones the policy reads: the
    # decision rule reads these, so its stated error rates hold whatever the policy.
    Column("total_reward_sum", Float, nullable=False, default=0.0, server_default="0"),
    Column("total_reward_sq_sum", Float, nullable=False, default=0.0, server_default="0"),
    # What a promotion's guardrail metrics read (rollout.multimetric), since the arm joined:
    # predictions it made and how many failed (its latencies: rollout_latency_buckets).
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("errors", Integer, nullable=False, default=0, server_default="0"),
    # What the sample-ratio test reads: units the policy's draw assigned (a request without a
    # unit, or a sticky unit's first assignment) and the sum of their log P(arm).
    Column("assigned", Integer, nullable=False, default=0, server_default="0"),
    Column("assigned_log_p", Float, nullable=False, default=0.0, server_default="0"),
)
_COUNTERS = (
    "pulls",
    "reward_sum",
    "reward_sq_sum",
    "served",
    "outcomes",
    "total_reward_sum",
    "total_reward_sq_sum",
)
Increment = tuple[float, float, float, int, int, float, float]

# Each arm's per-prediction latencies since it joined, as a log-spaced histogram
# (rollout.store_health): exact counts above any bucket edge, added across replicas.
latency_buckets = Table(
    "rollout_latency_buckets",
    metadata,
    Column("arm", String(200), primary_key=True),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, default=0),
)

# Other outcomes reported with feedback (e.g. a basket value), per arm and name, since the
# arm joined: what a promotion's business guardrail metrics read.
arm_metrics = Table(
    "rollout_arm_metrics",
    metadata,
    Column("arm", String(200), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("n", Integer, nullable=False, default=0),
    Column("total", Float, nullable=False, default=0.0),
    Column("total_sq", Float, nullable=False, default=0.0),
)

# Each (challenger, champion) pair's start: both arms' sums (JSON, rollout.baselines) when
# the pair was first judged, so the rule compares the same period's traffic. Inserted if
# absent: the first replica to write it is the one every replica reads.
baselines = Table(
    "rollout_baselines",
    metadata,
    Column("challenger", String(200), primary_key=True),
    Column("champion", String(200), primary_key=True),
    Column("sums", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

segment_stats = Table(
    "rollout_segment_stats",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("arm", String(200), primary_key=True),
    Column("served", Integer, nullable=False, default=0),
    Column("outcomes", Integer, nullable=False, default=0),
    Column("reward_sum", Float, nullable=False, default=0.0),
    Column("reward_sq_sum", Float, nullable=False, default=0.0),
)

units = Table(
    "rollout_units",
    metadata,
    Column("unit_id", String(200), primary_key=True),
    Column("fingerprint", String(64), primary_key=True),
    Column("arm", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

shadow_log = Table(
    "rollout_shadow",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(200), nullable=False),
    Column("served_arm", String(200), nullable=False),
    Column("shadow_arm", String(200), nullable=False),
    Column("served_prediction", Text, nullable=True),
    Column("shadow_prediction", Text, nullable=True),
    Column("served_score", Float, nullable=True),
    Column("shadow_score", Float, nullable=True),
    Column("created_at", Float, nullable=False),
)
Index("ix_rollout_shadow_arm", shadow_log.c.shadow_arm)

FeedbackStatus = Literal["accepted", "duplicate", "unknown"]


@dataclass(frozen=True)
class DecisionRow:
    """One routing decision, written by the background writer."""

    request_id: str
    arm: str
    created_at: float
    unit_id: str | None = None
    propensity: float | None = None
    policy: str | None = None
    segment: str | None = None
    # A row re-routed after its arm failed: the arm the policy drew and that draw's
    # propensity (the sample-ratio test counts the draw; off-policy evaluation skips the row).
    drawn: str | None = None
    drawn_propensity: float | None = None


@dataclass(frozen=True)
class FeedbackRow:
    """One reward to record; ``arm`` is None when it must be looked up from the decisions."""

    request_id: str
    reward: float
    arm: str | None
    created_at: float
    metrics: tuple[tuple[str, float], ...] = ()  # other outcomes by name (guardrail metrics)


@dataclass(frozen=True)
class ShadowRow:
    """A shadow arm's prediction next to the one that was served."""

    request_id: str
    served_arm: str
    shadow_arm: str
    served_prediction: Any
    shadow_prediction: Any
    served_score: float | None
    shadow_score: float | None
    created_at: float


@dataclass(frozen=True)
class StoredStats:
    """An arm's statistics as stored."""

    arm: str
    pulls: float
    reward_sum: float
    reward_sq_sum: float
    served: int
    outcomes: int
    total_reward_sum: float = 0.0
    total_reward_sq_sum: float = 0.0
    attempts: int = 0
    errors: int = 0
    assigned: int = 0
    assigned_log_p: float = 0.0

    def policy_stats(self) -> ArmStats:
        """Return the (possibly discounted) statistics the policy routes on."""
        return ArmStats(
            self.arm, max(self.pulls, 0.0), self.reward_sum, max(self.reward_sq_sum, 0.0)
        )

    def plain_stats(self) -> ArmStats:
        """Return the undiscounted statistics since the arm joined, for the decision rule."""
        return ArmStats(
            self.arm,
            float(self.outcomes),
            self.total_reward_sum,
            max(self.total_reward_sq_sum, 0.0),
        )


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs (SQLAlchemy's default driver is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def add_missing_columns(engine: Engine) -> None:
    """Add columns a newer release declares to a table an older one created."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or (column.server_default is None and not column.nullable):
                continue
            kind = column.type.compile(dialect=engine.dialect)
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"
            if not column.nullable:
                default = column.server_default.arg  # type: ignore[union-attr]
                ddl += f" NOT NULL DEFAULT {default}"
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)


def configure_sqlite(engine: Engine, synchronous: str) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for writes (no lock-upgrade deadlocks)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin hook below issues BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        # The pragma applies to this connection's next commits; it is set on every begin
        # so that a pooled connection never keeps another caller's setting.
        level = options.get("sqlite_synchronous", synchronous)
        conn.exec_driver_sql(f"PRAGMA synchronous={level}")
        conn.exec_driver_sql(f"BEGIN {options.get('sqlite_begin', 'IMMEDIATE')}")


def sum_feedback(
    rows: Iterable[tuple[str, str, float | None, str]],
) -> dict[str, tuple[int, float]]:
    """Return ``{arm: (count, reward_sum)}`` over counted feedback rows (for checks)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for _rid, arm, reward, kind in rows:
        if kind == "dropped" or reward is None or math.isnan(reward):
            continue
        out[arm][0] += 1
        out[arm][1] += reward
    return {arm: (int(v[0]), float(v[1])) for arm, v in out.items()}
