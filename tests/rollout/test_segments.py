"""Segments through the app: contextual routing, per-segment /arms, logged propensities."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from rollout_helpers import FEATURES, make_settings

from rollout import segments
from rollout.app import create_app
from rollout.store import DecisionRow, FeedbackRow

BEST = {"north": "v2", "south": "v3", "east": "v1"}


def seed_segments(client: Any) -> None:
    """2,000 outcomes per (region, arm): 12 % on the region's best arm, 4 % elsewhere."""
    store = client.app.state.service.store
    now = time.time()
    decisions, feedback = [], []
    for region, best in BEST.items():
        for arm in ("v1", "v2", "v3"):
            wins = 240 if arm == best else 80
            for i in range(2000):
                rid = f"{region}-{arm}-{i}"
                decisions.append(DecisionRow(rid, arm, now, None, 1 / 3, None, f"region={region}"))
                feedback.append(FeedbackRow(rid, float(i < wins), arm, now))
    store.apply_batch(decisions, feedback)


def test_contextual_policy_routes_each_segment_to_its_best_arm(rollout_home: Path) -> None:
    settings = make_settings(
        rollout_home, policy="contextual-thompson", segment_by=["region"], stats_refresh_ms=1e9
    )
    with TestClient(create_app(settings)) as client:
        seed_segments(client)
        service = client.app.state.service
        client.portal.call(segments.refresh_segments, service)
        for region, best in BEST.items():
            rows = [{"features": {**FEATURES, "region": region}} for _ in range(100)]
            served = [r["arm"] for r in client.post("/predict", json=rows).json()]
            assert served.count(best) >= 90, (region, served)
        report = client.get("/arms").json()
        seg = {s["segment"]: s["arms"] for s in report["segments"]}
        assert seg["region=north"]["v2"]["p_best"] > 0.99
        assert seg["region=north"]["v2"]["mean"] == 0.12
        assert seg["region=south"]["v3"]["outcomes"] == 2000
        client.portal.call(service.writer.flush)
        logged = [r for r in service.store.logged_decisions() if r["policy"] is not None]
        assert logged and all(
            r["policy"].startswith('{"name": "contextual-thompson"') for r in logged
        )
        north = [r for r in logged if r["segment"] == "region=north" and r["arm"] == "v2"]
        assert north and all(r["propensity"] > 0.9 for r in north)
