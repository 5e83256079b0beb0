"""The dashboard in a real browser: headless Chromium (Debian's) opens it and finds the arms."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import FEATURES, LiveServer, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def test_dashboard_shows_every_arm(rollout_home: Path) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip("headless Chromium is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from rollout.app import create_app

    app = create_app(make_settings(rollout_home))
    with LiveServer(app) as server:
        import httpx

        for _ in range(10):
            rid = httpx.post(server.url + "/predict", json={"features": FEATURES}).json()
            httpx.post(
                server.url + "/feedback", json={"request_id": rid["request_id"], "reward": 1}
            )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            try:
                page = browser.new_page()
                errors: list[Any] = []
                page.on("pageerror", lambda exc: errors.append(exc))
                page.goto(server.url + "/dashboard")
                page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
                arms = page.eval_on_selector_all(
                    "tr.arm-row", "rows => rows.map(r => r.dataset.arm)"
                )
                assert sorted(arms) == ["v1", "v2", "v3"]
                # Each arm has a posterior curve, a traffic line and a reward line drawn.
                for chart in ("posterior", "traffic", "reward"):
                    drawn = page.eval_on_selector_all(
                        f"#{chart} polyline", "lines => lines.map(l => l.dataset.arm)"
                    )
                    assert set(drawn) == {"v1", "v2", "v3"} or chart == "reward", (chart, drawn)
                assert "conversion-test" in page.inner_text("#model")
                assert not errors, errors
            finally:
                browser.close()
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
