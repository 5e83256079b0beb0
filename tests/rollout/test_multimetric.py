"""The multi-metric rule: better on success AND non-inferior on every guardrail metric."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_helpers import ADMIN, BROKEN, FEATURES, make_settings

from rollout.app import create_app
from rollout.decide import DecisionRule, InvalidDecisionRuleError, decide
from rollout.multimetric import GuardrailMetric, guardrail_blocker
from rollout.policies import ArmStats, get_policy

METRICS = [
    GuardrailMetric("latency_ms", margin=2.0, better="lower"),
    GuardrailMetric("error_rate", margin=0.005, better="lower", kind="bernoulli"),
    GuardrailMetric("basket", margin=0.05, better="higher"),
]
RULE = DecisionRule(min_outcomes=500, draws=200)


def sums(x: np.ndarray, arm: str) -> ArmStats:
    return ArmStats(arm, float(len(x)), float(x.sum()), float((x**2).sum()))


def run(seed: int, latency_gap: float, checks: int = 30, step: int = 1000) -> bool:
    """Return whether a 6 % challenger against a 5 % champion is ever promoted."""
    gen = np.random.default_rng(seed)
    n = checks * step
    data = {
        "a": {
            "reward": gen.random(n) < 0.05,
            "latency_ms": gen.normal(20.0, 10.0, n),
            "error_rate": gen.random(n) < 0.01,
            "basket": gen.normal(1.0, 1.0, n),
        },
        "b": {
            "reward": gen.random(n) < 0.06,
            "latency_ms": gen.normal(20.0 + latency_gap, 10.0, n),
            "error_rate": gen.random(n) < 0.01,
            "basket": gen.normal(1.0, 1.0, n),
        },
    }
    policy = get_policy("thompson")
    for i in range(1, checks + 1):
        upto = i * step
        arms = {a: sums(d["reward"][:upto].astype(float), a) for a, d in data.items()}
        stats = {
            m.name: {a: sums(d[m.name][:upto].astype(float), a) for a, d in data.items()}
            for m in METRICS
        }
        block = guardrail_blocker(METRICS, stats, "a", RULE, challengers=1)
        (d,) = decide(arms["a"], [arms["b"]], RULE, gen, policy=policy, blocker=block)
        if d.action == "promote":
            return True
    return False


def test_family_wise_false_promotions_stay_under_the_stated_rate() -> None:
    # Better on reward but exactly `margin` slower: a null of the family holds.
    promoted = sum(run(seed, latency_gap=2.0) for seed in range(60))
    # Stated rate 5 %; 60 paths: at most 7 (binomial tail above that < 5 %).
    assert promoted <= 7, promoted


def test_a_challenger_better_and_no_worse_anywhere_is_promoted() -> None:
    assert sum(run(seed, latency_gap=0.0) for seed in range(10)) >= 8


def test_the_veto_names_the_metric() -> None:
    stats = {
        "latency_ms": {
            "a": ArmStats("a", 5000, 100_000, 2.5e6),
            "b": ArmStats("b", 5000, 150_000, 5e6),
        },
    }
    block = guardrail_blocker(METRICS[:1], stats, "a", RULE, challengers=1)
    reason = block("b")
    assert reason is not None and reason.startswith("latency_ms not shown within 2 of")
    assert guardrail_blocker(METRICS[1:2], {}, "a", RULE, 1)("b") == (
        "no error_rate measured on b and the champion a"
    )
    with pytest.raises(InvalidDecisionRuleError, match="margin"):
        GuardrailMetric("x", margin=0.0)


# --- the live rule, through the service and its real store ----------------------------------


def _seed(
    client: Any,
    arm: str,
    n: int,
    wins: int,
    *,
    failed: int = 0,
    slow: int = 0,
    basket: float | None = None,
) -> None:
    """Record ``n`` outcomes on ``arm`` and the ``n`` predictions behind them (``failed`` of
    them failed, ``slow`` of them took 600 ms, the rest 2 ms) in the service's store; with
    ``basket``, each outcome reports a basket value around it (sd 1)."""
    from rollout.store import FeedbackRow
    from rollout.store_health import HealthCounts, latency_bucket

    tag = f"{arm}-{uuid.uuid4().hex[:6]}"
    gen = np.random.default_rng(n + wins)
    others: list[tuple[tuple[str, float], ...]] = [()] * n
    if basket is not None:
        others = [(("basket", float(basket + gen.normal())),) for _ in range(n)]
    rows = [
        FeedbackRow(f"{tag}-{i}", float(i < wins), arm, time.time(), others[i]) for i in range(n)
    ]
    buckets = {latency_bucket(2.0): n - slow, latency_bucket(600.0): slow}
    health = {arm: HealthCounts(n, failed, {b: c for b, c in buckets.items() if c})}
    client.app.state.service.store.apply_batch([], rows, health=health)


def _decide(client: Any) -> dict[str, dict[str, Any]]:
    response = client.post("/admin/decide", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {r["arm"]: r for r in response.json()["result"]["recommendations"]}


def test_the_service_promotes_only_when_every_guardrail_metric_passes(rollout_home: Path) -> None:
    # Two equal challengers: a loose expected-loss bound lets both pass the success rule.
    rule = {"min_outcomes": 200, "draws": 2000, "max_expected_loss": 0.01}
    with TestClient(create_app(make_settings(rollout_home, decision_params=rule))) as client:
        _seed(client, "v1", 3000, 150, slow=15)  # the champion: 5 %, 0.5 % slower than 250 ms
        _seed(client, "v2", 3000, 450, slow=300)  # 15 %, but 10 % of its predictions slow
        _seed(client, "v3", 3000, 450, failed=300)  # 15 %, but 10 % of its predictions fail
        recs = _decide(client)
        assert recs["v2"]["action"] == "keep" and recs["v3"]["action"] == "keep", recs
        assert recs["v2"]["reason"].startswith("keep v2: latency_p99 not shown within 0.01")
        assert recs["v3"]["reason"].startswith("keep v3: error_rate not shown within 0.01")
        shown = client.get("/arms").json()["decisions"]
        assert shown["guardrail_metrics"]["latency_p99"]["threshold_ms"] == 250.0
        v2, v3 = shown["guardrails"]["v2"], shown["guardrails"]["v3"]
        assert (v2["latency_p99"]["verdict"], v2["error_rate"]["verdict"]) == ("fail", "pass")
        assert (v3["latency_p99"]["verdict"], v3["error_rate"]["verdict"]) == ("pass", "fail")
        assert v2["latency_p99"]["challenger"] == pytest.approx(0.1)
        # 10 % of v2's predictions took 600 ms: its p99 is in that bucket; v1's in the 2 ms one.
        assert 600 < shown["p99_ms"]["v2"] < 660 and 2 < shown["p99_ms"]["v1"] < 2.2
        assert client.get("/readyz").json()["champion"] == "v1"
        # v2's later predictions are fast: 300 slow of 33,000 (0.9 %) is within the margin.
        _seed(client, "v2", 30_000, 4_500)
        recs = _decide(client)
        assert recs["v2"]["action"] == "promote" and recs["v2"]["applied"] is True, recs
        assert client.get("/readyz").json()["champion"] == "v2"


def test_an_invalid_guardrail_metric_fails_at_start(rollout_home: Path) -> None:
    bad = make_settings(rollout_home, guardrail_metrics={"basket": {"better": "higher"}})
    with (
        pytest.raises(ValueError, match="guardrail metric 'basket' takes a margin"),
        TestClient(create_app(bad)),
    ):
        pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_replicas_count_every_prediction_and_failure_in_the_shared_store(
    rollout_home: Path, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    from rollout.store import Store

    url = (
        f"sqlite:///{tmp_path / 'shared.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    settings = make_settings(rollout_home, state_url=url, guardrail_min_failures=1000)
    rows = 0
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        added = a.post("/admin/arms", headers=ADMIN, json={"version": BROKEN})
        assert added.status_code == 200, added.text
        assert b.post("/admin/reload", headers=ADMIN).status_code == 200
        for i in range(60):
            client = a if i % 2 else b
            response = client.post("/predict", json=[{"features": FEATURES}] * 3)
            assert response.status_code == 200, response.text
            rows += 3
    store = Store(url)  # both writers drained at stop
    stats = store.read_stats()
    latency = store.read_latency()
    store.dispose()
    attempts = {arm: s.attempts for arm, s in stats.items()}
    errors = {arm: s.errors for arm, s in stats.items()}
    broken = f"v{BROKEN}"
    assert attempts[broken] > 0 and errors[broken] == attempts[broken]
    assert all(errors[arm] == 0 for arm in attempts if arm != broken)
    # Every row was predicted once by the arm drawn, and once more by the champion if it failed.
    assert sum(attempts.values()) == rows + errors[broken]
    assert all(sum(latency[arm].values()) == n for arm, n in attempts.items() if n)
    # The failed rows were the policy's draws of the broken arm: the SRM counts them there.
    assert stats[broken].assigned == attempts[broken]


def test_a_business_metric_reported_with_feedback_guards_the_promotion(
    rollout_home: Path,
) -> None:
    rule = {"min_outcomes": 200, "draws": 2000}
    metrics = {
        "error_rate": {"margin": 0.01},
        "basket": {"margin": 0.1, "better": "higher"},
    }
    settings = make_settings(rollout_home, decision_params=rule, guardrail_metrics=metrics)
    with TestClient(create_app(settings)) as client:
        # Through the route: the value is counted under the arm that served the request.
        answer = client.post("/predict", json={"features": FEATURES}).json()
        body = {"request_id": answer["request_id"], "reward": 1.0, "metrics": {"basket": 42.5}}
        assert client.post("/feedback", json=body).status_code == 200
        stored = client.app.state.service.store.read_metrics()["basket"][answer["arm"]]
        assert stored == (1, 42.5, 42.5**2)
        bad = {"request_id": answer["request_id"], "reward": 1.0, "metrics": {"basket": "big"}}
        assert client.post("/feedback", json=bad).status_code == 422
        _seed(client, "v1", 4000, 200, basket=10.0)  # the champion: 5 %, baskets of 10
        _seed(client, "v2", 4000, 600, basket=9.5)  # 15 %, but baskets half a unit smaller
        _seed(client, "v3", 4000, 200, basket=10.0)
        recs = _decide(client)
        assert recs["v2"]["action"] == "keep", recs
        assert recs["v2"]["reason"].startswith("keep v2: basket not shown within 0.1")
        verdict = client.get("/arms").json()["decisions"]["guardrails"]["v2"]["basket"]
        assert verdict["verdict"] == "fail" and verdict["better"] == "higher"
        assert verdict["challenger"] == pytest.approx(9.5, abs=0.05)
