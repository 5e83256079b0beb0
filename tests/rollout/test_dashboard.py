"""The dashboard in a real browser: headless Chromium (Debian's) against a live uvicorn
server with real traffic, feedback and registry moves; the page shows every arm, each
challenger's uplift interval and chance to beat the champion, progress to the decision
bar, the promotion and rollback markers with their clock times, and the segment table."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rollout_helpers import ADMIN, FEATURES, REGIONS, LiveServer, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRUE_RATE = {"v1": 0.3, "v2": 0.6, "v3": 0.2}  # each arm's conversion rate in this test
SCREENSHOT = Path(os.environ.get("BANDITFLOW_DASHBOARD_PNG", "/tmp/banditflow-dashboard.png"))


def _chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip("headless Chromium is missing: apt-get install chromium")
    return CHROMIUM


def _traffic(url: str, n: int, seed: int) -> dict[str, int]:
    """Send ``n`` predictions across the regions and their outcomes (fixed seed)."""
    import httpx

    rng = np.random.default_rng(seed)
    served: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n):
            features = {**FEATURES, "region": REGIONS[i % len(REGIONS)]}
            r = http.post("/predict", json={"features": features})
            assert r.status_code == 200, r.text
            body = r.json()
            arm = body["arm"] if isinstance(body["arm"], str) else f"v{body['arm']['version']}"
            served[arm] = served.get(arm, 0) + 1
            reward = int(rng.random() < TRUE_RATE.get(arm, 0.3))
            f = http.post("/feedback", json={"request_id": body["request_id"], "reward": reward})
            assert f.status_code == 200, f.text
    return served


def test_dashboard_shows_arms_uplift_markers_and_segments(rollout_home: Path) -> None:
    chromium = _chromium()
    import httpx
    from playwright.sync_api import sync_playwright

    from rollout.app import create_app

    settings = make_settings(
        rollout_home,
        segment_by=["region"],
        auto_decisions=False,
        mlflow_ui_url="http://mlflow.example:5000",
    )
    with LiveServer(create_app(settings)) as server:
        _traffic(server.url, 240, seed=1)
        # A promotion of the worst arm and its rollback: the history the charts mark
        # (the rolled-back version leaves rotation).
        for path, body in (("/admin/promote", {"arm": "v3"}), ("/admin/rollback", {})):
            r = httpx.post(server.url + path, json=body, headers=ADMIN, timeout=60)
            assert r.status_code == 200, r.text
        _traffic(server.url, 60, seed=2)

        data = httpx.get(server.url + "/dashboard/data", timeout=60).json()
        assert data["champion"] == "v1"
        by_arm = {c["arm"]: c for c in data["comparisons"]}
        assert set(by_arm) == {"v2"}
        for c in by_arm.values():
            assert 0.0 <= c["chance_to_beat"] <= 1.0
            assert c["uplift"]["low"] <= c["uplift"]["mean"] <= c["uplift"]["high"]
            assert 0.0 <= c["progress"]["outcomes"] <= 1.0
        # v2 converts at 0.6 against the champion's 0.3: with ~100 outcomes each the
        # posterior is clear about it (tolerance: the interval excludes 0 at this seed).
        assert by_arm["v2"]["chance_to_beat"] > 0.9
        assert by_arm["v2"]["uplift"]["low"] > 0
        actions = {(m["version"], m["action"]) for m in data["markers"]}
        assert {v for v, _ in actions} >= {"1", "3"} and len(actions) >= 3, actions
        data["shown_arms"] = [a["arm"] for a in httpx.get(server.url + "/arms").json()["arms"]]
        assert {"v1", "v2"} <= set(data["shown_arms"])
        link = data["links"]["v2"]
        assert link["version"] == "http://mlflow.example:5000/#/models/conversion-test/versions/2"
        assert link["gate_report"] and "/runs/" in link["gate_report"]

        with sync_playwright() as p:
            # A fresh profile (--user-data-dir): Playwright takes it as the context's folder.
            browser = p.chromium.launch_persistent_context(
                str(rollout_home / "chromium-profile"),
                executable_path=chromium,
                args=FLAGS,
                viewport={"width": 1500, "height": 1400},
            )
            try:
                page = browser.new_page()
                errors: list[Any] = []
                page.on("pageerror", lambda exc: errors.append(exc))
                page.goto(server.url + "/dashboard")
                page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
                _check_page(page, data)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


def _check_page(page: Any, data: dict[str, Any]) -> None:
    rows = page.eval_on_selector_all("tr.arm-row", "rows => rows.map(r => r.dataset.arm)")
    assert sorted(rows) == sorted(data["shown_arms"])
    assert "conversion-test" in page.inner_text("#model")
    for chart in ("posterior", "traffic", "reward"):
        drawn = page.eval_on_selector_all(
            f"#{chart} polyline", "lines => lines.map(l => l.dataset.arm)"
        )
        assert set(drawn) >= {"v1", "v2"}, (chart, drawn)
    vs = page.eval_on_selector_all("tr.vs-row", "rows => rows.map(r => r.dataset.arm)")
    assert sorted(vs) == ["v2"]
    chance = page.inner_text("tr.vs-row[data-arm='v2'] .chance")
    assert chance.endswith("%") and float(chance.rstrip(" %")) > 90.0
    assert page.locator("tr.vs-row[data-arm='v2'] line.interval").count() == 1
    assert "[" in page.inner_text("tr.vs-row[data-arm='v2'] .uplift-text")
    href = page.get_attribute("tr.vs-row[data-arm='v2'] a", "href")
    assert href == data["links"]["v2"]["version"]
    # The promotion and the rollback are marked on both time charts, with clock times.
    for chart in ("traffic", "reward"):
        versions = page.eval_on_selector_all(
            f"#{chart} g.marker", "gs => gs.map(g => g.dataset.version)"
        )
        assert "3" in versions and len(versions) >= 3, (chart, versions)
        labels = page.eval_on_selector_all(
            f"#{chart} g.marker text", "ts => ts.map(t => t.textContent)"
        )
        assert all(re.search(r"\d\d:\d\d:\d\d", label) for label in labels), labels
    assert page.locator("#log li.event").count() >= 3
    segments = page.eval_on_selector_all(
        "tr.segment-row", "rows => rows.map(r => r.dataset.segment)"
    )
    assert sorted(segments) == sorted(f"region={r}" for r in REGIONS)


def test_dashboard_data_before_any_outcome(client: Any) -> None:
    """With no outcome yet, each challenger is a coin flip against the champion (flat prior,
    20,000 draws: tolerance 0.05), its interval straddles 0 and no progress is made."""
    r = client.get("/dashboard/data")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["champion"] == "v1" and data["posterior_error"] is None
    by_arm = {c["arm"]: c for c in data["comparisons"]}
    assert set(by_arm) == {"v2", "v3"}
    for c in by_arm.values():
        assert abs(c["chance_to_beat"] - 0.5) < 0.05, c
        assert c["uplift"]["low"] < 0 < c["uplift"]["high"]
        assert c["progress"]["outcomes"] == 0.0
        assert c["outcomes"]["needed"] == data["rule"]["min_outcomes"]
        # Two challengers share the false-promotion rate: the bar is 2 / 0.05.
        assert c["progress"]["bar"] == pytest.approx(2 / data["rule"]["false_promotion_rate"])
    assert set(data["curves"]["density"]) == {"v1", "v2", "v3"}
    assert len(data["curves"]["x"]) == len(data["curves"]["density"]["v1"])
