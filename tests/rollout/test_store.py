"""The SQL store: atomic counters, idempotent feedback, discounting, expiry, sticky units."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Literal

import pytest

from rollout.store import DecisionRow, FeedbackRow, Store, sum_feedback


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'state.db'}", sqlite_synchronous="NORMAL")
    s.create_schema()
    return s


def test_feedback_counts_once_and_resolves_arms(store: Store) -> None:
    now = time.time()
    store.apply_batch([DecisionRow("client-1", "v2", now)])
    statuses = store.apply_batch(
        [],
        [
            FeedbackRow("tok-1", 1.0, "v1", now),
            FeedbackRow("tok-1", 0.0, "v1", now),  # same batch: a duplicate
            FeedbackRow("client-1", 0.5, None, now),  # arm from the decision
            FeedbackRow("ghost", 1.0, None, now),
        ],
    )
    assert statuses == [
        ("accepted", "v1"),
        ("duplicate", "v1"),
        ("accepted", "v2"),
        ("unknown", None),
    ]
    assert store.apply_batch([], [FeedbackRow("tok-1", 1.0, "v1", now)]) == [("duplicate", "v1")]
    stats = store.read_stats()
    assert (stats["v1"].pulls, stats["v1"].reward_sum) == (1.0, 1.0)
    assert (stats["v2"].pulls, stats["v2"].reward_sum, stats["v2"].served) == (1.0, 0.5, 1)
    assert stats["v2"].reward_sq_sum == pytest.approx(0.25)


def test_concurrent_writers_lose_no_update(store: Store, tmp_path: Path) -> None:
    """Eight threads, each with its own engine (like separate processes), one SQLite file."""
    per_thread, threads = 150, 8

    def work(t: int) -> None:
        own = Store(store.url)
        for i in range(0, per_thread, 10):
            rows = [
                FeedbackRow(f"t{t}-{j}", float(j % 2), f"v{j % 3}", time.time())
                for j in range(i, i + 10)
            ]
            own.apply_batch([], rows)
        own.dispose()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats = store.read_stats()
    expected = sum_feedback(store.feedback_rows())
    assert sum(s.outcomes for s in stats.values()) == per_thread * threads
    for arm, (count, total) in expected.items():
        assert stats[arm].pulls == count and stats[arm].reward_sum == pytest.approx(total)


def test_discount_matches_sequential_definition(store: Store) -> None:
    gamma = 0.9
    rewards = [("v1", 1.0), ("v2", 0.0), ("v1", 0.0), ("v2", 1.0), ("v1", 1.0)]
    now = time.time()
    # Two batches, to check the per-batch closed form composes.
    store.apply_batch(
        [],
        [FeedbackRow(f"r{i}", r, a, now) for i, (a, r) in enumerate(rewards[:2])],
        discount=gamma,
    )
    store.apply_batch(
        [],
        [FeedbackRow(f"r{i}", r, a, now) for i, (a, r) in enumerate(rewards) if i >= 2],
        discount=gamma,
    )
    reference = {"v1": [0.0, 0.0], "v2": [0.0, 0.0]}
    for arm, reward in rewards:
        for v in reference.values():
            v[0] *= gamma
            v[1] *= gamma
        reference[arm][0] += 1
        reference[arm][1] += reward
    stats = store.read_stats()
    for arm, (pulls, total) in reference.items():
        assert stats[arm].pulls == pytest.approx(pulls)
        assert stats[arm].reward_sum == pytest.approx(total)
        assert stats[arm].outcomes == sum(1 for a, _ in rewards if a == arm)


@pytest.mark.parametrize("mode", ["default", "drop"])
def test_expiry_counts_only_closed_windows(store: Store, mode: Literal["default", "drop"]) -> None:
    now = time.time()
    store.apply_batch(
        [
            DecisionRow("old-a", "v1", now - 100),
            DecisionRow("old-b", "v1", now - 100),
            DecisionRow("fresh", "v1", now),
        ],
        [FeedbackRow("old-b", 1.0, "v1", now - 50)],
    )
    assert store.expire(now - 10, mode=mode, default_reward=0.0) == 1  # only old-a
    stats = store.read_stats()["v1"]
    if mode == "default":
        assert (stats.pulls, stats.reward_sum) == (2.0, 1.0)
    else:
        assert (stats.pulls, stats.reward_sum) == (1.0, 1.0)
    # The expired one cannot be counted again by late feedback, nor twice by another sweep.
    assert store.apply_batch([], [FeedbackRow("old-a", 1.0, "v1", now)]) == [("duplicate", "v1")]
    assert store.expire(now - 10, mode=mode, default_reward=0.0) == 0
    assert store.read_stats()["v1"].pulls == stats.pulls  # "fresh" is still pending


def test_unit_assignment_first_writer_wins(store: Store) -> None:
    assert store.unit_arm("u1", "fp") is None
    assert store.assign_unit("u1", "fp", "v2") == "v2"
    assert store.assign_unit("u1", "fp", "v3") == "v2"
    assert store.assign_unit("u1", "other-arm-set", "v3") == "v3"


def test_a_requests_units_are_stored_in_one_transaction_first_writer_wins(store: Store) -> None:
    import math

    assert store.assign_unit("old", "fp", "v1", 0.5) == "v1"
    commits: list[int] = []
    real = store._write
    store._write = lambda work, **kw: (commits.append(1), real(work, **kw))[1]  # type: ignore[method-assign]
    rows = [("old", "fp", "v2", 0.5), ("a", "fp", "v2", 0.25), ("b", "fp", "v3", 0.5)]
    assert store.assign_units(rows) == ["v1", "v2", "v3"]  # "old" keeps its first arm
    assert commits == [1]
    assert store.unit_arms([("a", "fp"), ("b", "fp"), ("c", "fp")]) == ["v2", "v3", None]
    stats = store.read_stats()  # only the units this call stored are counted, once each
    assert (stats["v1"].assigned, stats["v2"].assigned, stats["v3"].assigned) == (1, 1, 1)
    assert stats["v2"].assigned_log_p == pytest.approx(math.log(0.25))


def test_config_and_secret_are_shared(store: Store) -> None:
    other = Store(store.url)
    assert store.get_or_create_secret() == other.get_or_create_secret()
    store.set_config("frozen", True)
    store.set_config("policy", {"name": "ucb1", "params": {}})
    assert other.read_config() == {"frozen": True, "policy": {"name": "ucb1", "params": {}}}


def test_bad_state_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="sqlite:/// or postgresql://"):
        Store("mysql://nope")


def test_plain_sums_since_the_arm_joined_ignore_the_discount(store: Store) -> None:
    rewards = [("v1", 1.0), ("v2", 0.0), ("v1", 0.0), ("v2", 1.0), ("v1", 1.0), ("v1", 0.5)]
    now = time.time()
    store.apply_batch(
        [], [FeedbackRow(f"r{i}", r, a, now) for i, (a, r) in enumerate(rewards)], discount=0.5
    )
    store.expire(now + 1, mode="default", default_reward=0.0, discount=0.5)
    stats = store.read_stats()
    v1 = stats["v1"].plain_stats()
    assert (v1.pulls, v1.reward_sum, v1.reward_sq_sum) == (4.0, 2.5, 2.25)
    # The discounted sums the policy reads are much smaller, and differ.
    assert stats["v1"].policy_stats().pulls < 2.0
    assert stats["v2"].plain_stats().reward_sum == 1.0


def test_an_older_database_gains_the_plain_sum_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE rollout_arm_stats (arm VARCHAR(200) PRIMARY KEY, pulls FLOAT NOT NULL,"
            " reward_sum FLOAT NOT NULL, reward_sq_sum FLOAT NOT NULL, served INTEGER NOT NULL,"
            " outcomes INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO rollout_arm_stats VALUES ('v1', 3, 2, 2, 5, 3)")
    old = Store(f"sqlite:///{path}")
    old.create_schema()
    old.apply_batch([], [FeedbackRow("a", 1.0, "v1", time.time())])
    v1 = old.read_stats()["v1"]
    assert (v1.outcomes, v1.pulls, v1.total_reward_sum) == (4, 4.0, 1.0)


def test_decisions_keep_propensity_policy_and_segment(store: Store) -> None:
    now = time.time()
    store.apply_batch(
        [
            DecisionRow("r1", "v1", now, None, 0.25, '{"name": "thompson"}', "region=north"),
            DecisionRow("r2", "v2", now, None, 0.75, '{"name": "thompson"}', "region=south"),
            DecisionRow("r3", "v2", now, "unit-1", 0.75, None, None),
        ],
        [FeedbackRow("r2", 1.0, "v2", now)],
    )
    logged = {r["request_id"]: r for r in store.logged_decisions()}
    assert logged["r1"]["propensity"] == 0.25 and logged["r1"]["reward"] is None
    assert (logged["r2"]["segment"], logged["r2"]["reward"]) == ("region=south", 1.0)
    counts, log_p, _ = store.logged_assignments(now - 1, now)
    assert counts == {"v1": 1, "v2": 1}  # the sticky unit's decision is not counted
    assert log_p == pytest.approx(math.log(0.25) + math.log(0.75))


def test_segment_counters_follow_each_decisions_segment(store: Store) -> None:
    now = time.time()
    store.apply_batch(
        [
            DecisionRow("n1", "v1", now, None, 0.5, None, "region=north"),
            DecisionRow("n2", "v2", now, None, 0.5, None, "region=north"),
            DecisionRow("s1", "v1", now - 100, None, 0.5, None, "region=south"),
            DecisionRow("x1", "v1", now, None, 0.5, None, None),
        ],
        [FeedbackRow("n1", 1.0, "v1", now), FeedbackRow("x1", 1.0, "v1", now)],
    )
    store.apply_batch([], [FeedbackRow("n2", 0.5, "v2", now), FeedbackRow("n1", 1.0, "v1", now)])
    store.expire(now - 10, mode="default", default_reward=0.0)  # s1 counts as a 0
    seg = store.read_segment_stats()
    assert seg["region=north"] == {"v1": (1, 1, 1.0, 1.0), "v2": (1, 1, 0.5, 0.25)}
    assert seg["region=south"] == {"v1": (1, 1, 0.0, 0.0)}
    assert set(seg) == {"region=north", "region=south"}


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database several Store objects (each like a replica) share: SQLite or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_prediction_health_counts_add_exactly_across_replicas(shared_url: str) -> None:
    from rollout.store_health import HealthCounts, latency_bucket, quantile_ms, slower_than

    Store(shared_url).create_schema()
    per_thread, threads = 40, 4

    def work(t: int) -> None:
        own = Store(shared_url)  # its own engine and pool, like another process
        for i in range(per_thread):
            fast, slow = latency_bucket(2.0), latency_bucket(400.0)
            health = {
                "v1": HealthCounts(10, i % 2, {fast: 9, slow: 1}),
                "v2": HealthCounts(5, 0, {fast: 5}),
            }
            decisions_ = [DecisionRow(f"t{t}-{i}", "v1", time.time(), None, 0.5)]
            own.apply_batch(decisions_, health=health)
        own.dispose()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store = Store(shared_url)
    stats, latency = store.read_stats(), store.read_latency()
    n = per_thread * threads
    assert (stats["v1"].attempts, stats["v1"].errors) == (10 * n, n // 2)
    assert (stats["v2"].attempts, stats["v2"].errors) == (5 * n, 0)
    assert sum(latency["v1"].values()) == 10 * n
    slow, edge = slower_than(latency["v1"], 250.0)
    assert slow == n and edge <= 250.0 < edge * 2 ** (1 / 8)
    assert slower_than(latency["v2"], 250.0)[0] == 0
    # 10 % of v1's predictions took 400 ms: its p99 lies in the 400 ms bucket (edges 9 % apart).
    p99 = quantile_ms(latency["v1"], 0.99)
    assert p99 is not None and 400.0 < p99 <= 400.0 * 2 ** (1 / 8)
    assert stats["v1"].assigned == n and stats["v1"].assigned_log_p == pytest.approx(
        n * math.log(0.5)
    )
    store.dispose()


def test_an_older_database_gains_the_health_columns_and_table(tmp_path: Path) -> None:
    import sqlite3

    from rollout.store_health import HealthCounts

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE rollout_arm_stats (arm VARCHAR(200) PRIMARY KEY, pulls FLOAT NOT NULL,"
            " reward_sum FLOAT NOT NULL, reward_sq_sum FLOAT NOT NULL, served INTEGER NOT NULL,"
            " outcomes INTEGER NOT NULL, total_reward_sum FLOAT NOT NULL DEFAULT 0,"
            " total_reward_sq_sum FLOAT NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO rollout_arm_stats VALUES ('v1', 3, 2, 2, 5, 3, 2, 2)")
    old = Store(f"sqlite:///{path}")
    old.create_schema()
    before = old.read_stats()["v1"]
    assert (before.outcomes, before.attempts, before.errors, before.assigned) == (3, 0, 0, 0)
    old.apply_batch(health={"v1": HealthCounts(4, 1, {100: 4})})
    after = old.read_stats()["v1"]
    assert (after.outcomes, after.attempts, after.errors) == (3, 4, 1)
    assert old.read_latency() == {"v1": {100: 4}}


def test_the_sample_ratio_counters_count_draws_not_requests(store: Store) -> None:
    now = time.time()
    store.apply_batch(
        [
            DecisionRow("a", "v1", now, None, 0.25),
            DecisionRow("b", "v2", now, None, 0.75),
            DecisionRow("c", "v2", now, "unit-1", 0.75),  # a sticky unit's request: not a draw
            # Drawn v3 (p 0.5), which failed; served by v1: counted as v3's draw.
            DecisionRow("d", "v1", now, None, None, drawn="v3", drawn_propensity=0.5),
        ]
    )
    # A sticky unit is one draw, counted when it is first stored, however often it returns.
    assert store.assign_unit("unit-1", "fp", "v2", 0.75) == "v2"
    assert store.assign_unit("unit-1", "fp", "v1", 0.25) == "v2"
    stats = store.read_stats()
    counts = {a: (s.assigned, s.assigned_log_p) for a, s in stats.items()}
    assert counts["v1"] == (1, pytest.approx(math.log(0.25)))
    assert counts["v2"] == (2, pytest.approx(2 * math.log(0.75)))
    assert counts["v3"] == (1, pytest.approx(math.log(0.5)))
    assert stats["v1"].served == 2  # decisions still count per request
