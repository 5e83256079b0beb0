"""A challenger is judged against the champion's outcomes over the same period.

After a drift, the champion's totals since it joined are mostly pre-drift: a challenger
that joined later and beats the champion *now* would be retired against its lifetime
mean. The rule reads both arms' plain sums since the pair's baseline (rollout.baselines),
on the real service, store and registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_helpers import ADMIN, make_settings
from test_auto_decisions import decide, seed

from rollout import decide as rule_module
from rollout.app import create_app

RULE = {"min_outcomes": 200, "draws": 2000}


def _drifted(client: Any, champion_after: int, challenger_after: int) -> None:
    """v1 earns 24 % for 20,000 outcomes; v2 joins; then 3,000 outcomes each (a drift)."""
    for arm in ("v2", "v3"):
        assert client.delete(f"/admin/arms/{arm}", headers=ADMIN).status_code == 200
    seed(client, "v1", 20_000, 4_800, "before")
    added = client.post("/admin/arms", headers=ADMIN, json={"version": "2"})
    assert added.status_code == 200, added.text
    seed(client, "v1", 3_000, champion_after, "after")
    seed(client, "v2", 3_000, challenger_after, "after")


def _lifetime_rule(client: Any) -> str:
    """What the old rule decided: v2 against the champion's totals since it joined."""
    svc = client.app.state.service
    stats = svc.store.read_stats()
    (d,) = rule_module.decide(
        stats["v1"].plain_stats(),
        [stats["v2"].plain_stats()],
        svc.rule,
        np.random.default_rng(0),
        policy=svc.policy,
    )
    return str(d.action)


def test_a_challenger_better_than_the_champion_after_a_drift_is_promoted(
    rollout_home: Path,
) -> None:
    with TestClient(create_app(make_settings(rollout_home, decision_params=RULE))) as client:
        _drifted(client, champion_after=300, challenger_after=480)  # 10 % against 16 %
        assert _lifetime_rule(client) == "retire"  # 22 % lifetime: the bug
        (rec,) = decide(client)
        assert rec["action"] == "promote" and rec["applied"] is True, rec
        assert "3,000 vs 3,000 outcomes" in rec["reason"]  # the same period on both arms
        assert client.get("/readyz").json()["champion"] == "v2"


@pytest.mark.parametrize(("champion_after", "challenger_after"), [(480, 300), (300, 300)])
def test_a_challenger_not_better_than_the_champion_now_is_not_promoted(
    rollout_home: Path, champion_after: int, challenger_after: int
) -> None:
    with TestClient(create_app(make_settings(rollout_home, decision_params=RULE))) as client:
        _drifted(client, champion_after, challenger_after)
        (rec,) = decide(client)
        assert rec["action"] != "promote", rec
        if champion_after > challenger_after:
            assert rec["action"] == "retire" and rec["applied"] is True, rec
        assert client.get("/readyz").json()["champion"] == "v1"


def test_a_challenger_seen_again_after_retirement_starts_afresh(rollout_home: Path) -> None:
    with TestClient(create_app(make_settings(rollout_home, decision_params=RULE))) as client:
        store = client.app.state.service.store
        assert set(store.pair_baselines("v1", {"v2": {}, "v3": {}})) == {"v2", "v3"}
        assert client.delete("/admin/arms/v3", headers=ADMIN).status_code == 200
        seed(client, "v1", 1_000, 100, "x")
        assert client.post("/admin/arms", headers=ADMIN, json={"version": "3"}).status_code == 200
        base = store.pair_baselines("v1", {"v3": {}})["v3"]
        assert base["champion"]["plain"][0] == 1_000  # the champion's outcomes when it rejoined


def test_the_champion_watch_compares_the_same_period(rollout_home: Path) -> None:
    with TestClient(create_app(make_settings(rollout_home, decision_params=RULE))) as client:
        seed(client, "v1", 20_000, 4_800, "before")  # 24 % before the drift
        assert client.post("/admin/promote", headers=ADMIN, json={"arm": "2"}).status_code == 200
        watch = client.get("/arms").json()["decisions"]["champion_watch"]
        assert watch["replaced_baseline"] == [20_000, 4_800.0, 4_800.0]
        seed(client, "v2", 3_000, 300, "after")  # 10 % after it, on both arms
        seed(client, "v1", 3_000, 300, "after")
        assert "rollback" not in [r["action"] for r in decide(client)]
        assert client.get("/readyz").json()["champion"] == "v2"
