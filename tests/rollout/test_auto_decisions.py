"""Automatic decisions through the app: rollback of a failing or worse champion, the SRM
freeze, and the performance-degraded event, against a real registry and a real event sink."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from rollout_helpers import ADMIN, BROKEN, FEATURES, MODEL, LiveServer, make_settings, mlflow_client

import contract
from rollout.app import create_app
from rollout.store import DecisionRow, FeedbackRow
from rollout.store_health import HealthCounts, latency_bucket

RULE = {"min_outcomes": 200, "draws": 2000}


def seed(client: Any, arm: str, n: int, wins: int, tag: str) -> None:
    """Record ``n`` outcomes (``wins`` of them 1) on ``arm`` in the service's real store."""
    now = time.time()
    rows = [FeedbackRow(f"{tag}-{arm}-{i}", float(i < wins), arm, now) for i in range(n)]
    # The predictions behind them (none failed, all fast): what the guardrail metrics read.
    health = {arm: HealthCounts(n, 0, {latency_bucket(2.0): n})}
    client.app.state.service.store.apply_batch([], rows, health=health)


def decide(client: Any) -> list[dict[str, Any]]:
    response = client.post("/admin/decide", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["result"]["recommendations"]


def test_automatic_decisions_are_on_by_default(rollout_home: Path) -> None:
    from rollout.settings import RolloutSettings

    assert RolloutSettings(home=rollout_home).auto_decisions is True


def test_a_champion_that_starts_failing_is_rolled_back_with_no_failed_request(
    rollout_home: Path,
) -> None:
    settings = make_settings(rollout_home, decision_params=RULE, guardrail_min_requests=20)
    with TestClient(create_app(settings)) as client:
        promoted = client.post("/admin/promote", headers=ADMIN, json={"arm": BROKEN})
        assert promoted.status_code == 200, promoted.text
        assert client.get("/readyz").json()["champion"] == f"v{BROKEN}"
        statuses = [client.post("/predict", json={"features": FEATURES}) for _ in range(60)]
        assert [r.status_code for r in statuses] == [200] * 60  # v1, on probation, answered
        assert f"v{BROKEN}" not in {r.json()["arm"] for r in statuses}
        (rec,) = decide(client)
        assert rec["action"] == "rollback" and rec["applied"] is True, rec
        assert "guardrail on the champion v4" in rec["reason"]
        assert client.get("/readyz").json()["champion"] == "v1"
        # Rows re-routed from the failing arm log no propensity: no false sample-ratio alarm.
        assert client.get("/arms").json()["decisions"]["srm"]["mismatch"] is False
        history = contract.read_history(mlflow_client(rollout_home), MODEL)
        assert (BROKEN, "rolled_back") in [(e.version, e.action) for e in history]
        assert all(
            client.post("/predict", json={"features": FEATURES}).status_code == 200
            for _ in range(5)
        )


def test_a_worse_champion_promoted_by_chance_is_rolled_back(rollout_home: Path) -> None:
    settings = make_settings(rollout_home, decision_params=RULE)
    with TestClient(create_app(settings)) as client:
        seed(client, "v1", 20_000, 1_000, "before")  # the champion: 5 %
        seed(client, "v2", 2_000, 110, "before")  # a lucky stretch: 5.5 %
        assert client.post("/admin/promote", headers=ADMIN, json={"arm": "2"}).status_code == 200
        arms = client.get("/arms").json()
        watch = arms["decisions"]["champion_watch"]
        assert watch["champion"] == "v2" and watch["replaced"] == "v1"
        assert watch["baseline"] == [2_000, 110.0, 110.0]
        assert arms["decisions"]["false_rollback_rate"] == 0.05
        seed(client, "v2", 6_000, 180, "after")  # 3 % since the promotion
        seed(client, "v1", 6_000, 300, "after-v1")  # 5 % on probation, the same period
        recs = decide(client)
        assert [r["action"] for r in recs] == ["rollback"], recs
        assert "worse than v1, which it replaced" in recs[0]["reason"]
        assert client.get("/readyz").json()["champion"] == "v1"
        aliases = contract.aliases_of(mlflow_client(rollout_home), MODEL)
        assert aliases[contract.CHAMPION] == "1" and "1" not in {
            v for a, v in aliases.items() if contract.is_challenger_alias(a)
        }


def test_a_better_champion_ends_its_probation_and_the_replaced_one_leaves_rotation(
    rollout_home: Path,
) -> None:
    settings = make_settings(rollout_home, decision_params=RULE)
    with TestClient(create_app(settings)) as client:
        seed(client, "v1", 20_000, 1_000, "before")  # the champion: 5 %
        seed(client, "v2", 2_000, 140, "before")
        assert client.post("/admin/promote", headers=ADMIN, json={"arm": "2"}).status_code == 200
        seed(client, "v2", 6_000, 420, "after")  # 7 % since the promotion
        seed(client, "v1", 6_000, 300, "after-v1")  # 5 % on probation, the same period
        recs = decide(client)
        assert [(r["action"], r["arm"]) for r in recs] == [("end-watch", "v1")], recs
        assert "shown better than v1" in recs[0]["reason"] and recs[0]["applied"] is True
        arms = client.get("/arms").json()
        assert arms["decisions"]["champion_watch"] in ({}, None), arms["decisions"]
        aliases = contract.aliases_of(mlflow_client(rollout_home), MODEL)
        assert aliases[contract.CHAMPION] == "2"
        assert aliases[contract.PREVIOUS_CHAMPION] == "1"  # still there to roll back to
        assert "1" not in {v for a, v in aliases.items() if contract.is_challenger_alias(a)}
        served = {
            client.post("/predict", json={"features": FEATURES}).json()["arm"] for _ in range(40)
        }
        assert "v1" not in served, served


def test_a_sample_ratio_mismatch_freezes_automatic_decisions(rollout_home: Path) -> None:
    settings = make_settings(rollout_home, decision_params=RULE)
    with TestClient(create_app(settings)) as client:
        store = client.app.state.service.store
        past = time.time() - 100
        rows = [
            DecisionRow(f"d{i}", "v1" if i % 100 < 45 else "v2", past, None, 0.5)
            for i in range(20_000)
        ]
        store.apply_batch(rows)
        seed(client, "v1", 1_000, 30, "x")
        seed(client, "v2", 1_000, 120, "x")
        seed(client, "v3", 1_000, 30, "x")
        recs = {r["arm"]: r for r in decide(client)}
        assert recs["v2"]["action"] == "promote" and recs["v2"]["applied"] is False
        assert "automatic decisions frozen, sample ratio mismatch" in recs["v2"]["reason"]
        status = client.get("/arms").json()["decisions"]
        assert status["srm"]["mismatch"] is True and status["automatic"] is False
        metrics = client.get("/metrics").text
        assert "rollout_decisions_frozen 1.0" in metrics
        assert client.get("/readyz").json()["champion"] == "v1"


def test_a_fall_of_the_champions_reward_emits_performance_degraded(rollout_home: Path) -> None:
    received: list[Any] = []
    sink = FastAPI()

    @sink.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"ready": "yes"}

    @sink.post("/api/events")
    async def events(request: Request) -> dict[str, str]:
        received.extend(await request.json())
        return {"ok": "yes"}

    with LiveServer(sink) as server:
        settings = make_settings(
            rollout_home, decision_params=RULE, prefect_api_url=f"{server.url}/api"
        )
        with TestClient(create_app(settings)) as client:
            decide(client)  # the watch starts on the champion
            seed(client, "v1", 6_000, 300, "ref")  # its earlier rate: 5 %
            decide(client)
            assert received == []
            seed(client, "v1", 10_000, 200, "low")  # then 2 %
            decide(client)
    degraded = [e for e in received if e["event"] == contract.EVENT_PERFORMANCE_DEGRADED]
    assert len(degraded) == 1, received
    assert degraded[0]["resource"]["prefect.resource.id"] == contract.model_resource_id(MODEL, "1")
    assert "earlier rate 0.05" in degraded[0]["payload"]["reason"]


def _fall_of_the_champions_reward(client: Any) -> None:
    decide(client)  # the watch starts on the champion
    seed(client, "v1", 6_000, 300, "ref")  # its earlier rate: 5 %
    seed(client, "v2", 2_000, 100, "ref")
    decide(client)
    seed(client, "v1", 10_000, 200, "low")  # then 2 %
    decide(client)


def test_an_alarm_restarts_the_policys_sums_and_keeps_the_rules(rollout_home: Path) -> None:
    settings = make_settings(rollout_home, decision_params=RULE, restart_on_alarm=True)
    with TestClient(create_app(settings)) as client:
        _fall_of_the_champions_reward(client)
        stats = client.app.state.service.store.read_stats()
        performance = client.get("/arms").json()["decisions"]["performance"]
    # Every arm's policy sums start afresh at the alarm; the plain sums since each arm
    # joined (what the decision rule and the champion watch read) are all still there.
    assert {a: (s.pulls, s.reward_sum, s.reward_sq_sum) for a, s in stats.items()} == {
        "v1": (0.0, 0.0, 0.0),
        "v2": (0.0, 0.0, 0.0),
    }
    assert (stats["v1"].outcomes, stats["v1"].total_reward_sum) == (16_000, 500.0)
    assert (stats["v2"].outcomes, stats["v2"].total_reward_sum) == (2_000, 100.0)
    assert performance["restart_on_alarm"] is True
    [restart] = performance["policy_restarts"]
    assert restart["arms"] == 2 and "earlier rate 0.05" in restart["why"], restart


def test_by_default_an_alarm_leaves_the_policys_sums(rollout_home: Path) -> None:
    settings = make_settings(rollout_home, decision_params=RULE)
    with TestClient(create_app(settings)) as client:
        _fall_of_the_champions_reward(client)
        stats = client.app.state.service.store.read_stats()
        performance = client.get("/arms").json()["decisions"]["performance"]
    assert performance["last_alarm"] and performance["restart_on_alarm"] is False
    assert performance["policy_restarts"] == []
    assert (stats["v1"].pulls, stats["v1"].reward_sum) == (16_000, 500.0)
