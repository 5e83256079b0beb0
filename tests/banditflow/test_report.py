"""The demo report renders: its figures load in a real browser, its numbers add up."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from banditflow.report import ReportData, gate_table, recovery, summary_table, write_report


def _data(n: int = 6_000, drift: int = 3_000) -> ReportData:
    rng = np.random.default_rng(0)
    oracle = rng.normal(0.05, 0.3, n)
    live = oracle - np.where(np.arange(n) < drift + 1_000, 0.02, 0.0) * (np.arange(n) >= drift)
    served = pd.DataFrame(
        {
            "seq": np.arange(n),
            "reward": live,
            "version": np.where(
                np.arange(n) < 2_000, "1", np.where(np.arange(n) < 4_500, "2", "4")
            ),
        }
    )
    trials = pd.DataFrame({"trial": range(8), "value": rng.uniform(0.6, 0.8, 8)})
    gates = gate_table(
        [
            {
                "version": "2",
                "aliases": ["champion"],
                "tags": {
                    "banditflow.gates": "passed",
                    "banditflow.gate.latency": "pass: value=0.4 threshold=50",
                },
            }
        ]
    )
    return ReportData(
        served=served,
        baselines={"oracle": oracle, "no retrain": oracle - 0.03 * (np.arange(n) >= drift)},
        drift_seq=drift,
        events=[(2_000, "promoted version 2"), (4_500, "promoted version 4")],
        studies={"conversion-hyperopt": trials},
        study_objectives={"conversion-hyperopt": ("roc_auc", "maximize")},
        gates=gates,
        steps=[("generate", 1.0)],
        window=500,
        reference="oracle",
        timeline=pd.DataFrame(
            [{"day": 3, "wall_s": 12.5, "kind": "event", "what": "banditflow.drift.detected"}]
        ),
    )


def test_summary_and_recovery() -> None:
    data = _data()
    table = summary_table(data).set_index("system")
    assert table.loc["oracle", "vs reference"] == pytest.approx(1.0)
    assert table.loc["live system", "total reward"] < table.loc["oracle", "total reward"]
    assert table.loc["live system", "vs reference"] < 1.0
    after = data.served["reward"].to_numpy()[3_000:].sum() / data.baselines["oracle"][3_000:].sum()
    assert table.loc["live system", "vs reference after drift"] == pytest.approx(after)
    live, oracle = data.served["reward"].to_numpy(), data.baselines["oracle"]
    visits, live_rate, oracle_rate = recovery(live, oracle, 3_000, 500)
    # The live system loses 0.02 per visit for 1,000 visits after the drift, then matches.
    assert visits is not None and 1_000 <= visits <= 1_600
    assert live_rate >= 0.98 * oracle_rate
    assert recovery(live - 1.0, oracle, 3_000, 500)[0] is None


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    return path


@pytest.mark.integration
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    index = write_report(_data(), tmp_path / "report")
    for name in ("cumulative_reward.png", "traffic_share.png", "study_conversion-hyperopt.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5_000
    strict = (tmp_path / "report" / "summary.json").read_text()
    facts = json.loads(strict, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert facts["drift_at_visit"] == 3_000
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page()
        page.goto(index.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        text = page.inner_text("body")
        browser.close()
    assert len(widths) == 3 and all(w > 300 for w in widths), widths
    assert "promoted version 4" in text and "live system" in text and "passed" in text
    assert "banditflow.drift.detected" in text
