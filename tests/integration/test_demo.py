"""`make demo` end to end at CI's size: the loop closes, and the report says so."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_make_demo_quick_closes_the_loop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = os.environ | {"BANDITFLOW_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # the embedded defaults: no server of any kind
    make = shutil.which("make")
    assert make is not None, "apt-get install make"
    run = subprocess.run(
        [make, "-o", "install", "demo", "DEMO_ARGS=--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    log = home / "demo.log"
    assert run.returncode == 0, (
        run.stdout[-3000:] + run.stderr[-3000:] + (log.read_text()[-4000:] if log.exists() else "")
    )
    # Each step printed one line, in order.
    steps = [line for line in run.stdout.splitlines() if line.lstrip().startswith("[")]
    assert len([s for s in steps if "done" in s]) >= 12, run.stdout

    summary = json.loads((home / "report" / "summary.json").read_text())
    labels = [e["label"] for e in summary["events"]]
    # A promotion happened before the drift, the drift is marked, and traffic went on after it.
    drift_at = summary["drift_at_visit"]
    promotions = [e for e in summary["events"] if e["label"].startswith("champion ->")]
    assert any(e["seq"] < drift_at for e in promotions), labels
    assert "drift" in labels
    assert summary["visits"] > drift_at

    # The retrain registered a challenger from a retrain study, and the registry says so.
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    versions = client.search_model_versions("name='conversion'")
    retrained = [v for v in versions if "retrain" in (v.tags or {}).get("banditflow.study", "")]
    assert retrained, [(v.version, v.tags.get("banditflow.study")) for v in versions]
    aliases = client.get_registered_model("conversion").aliases
    assert any(str(v.version) in map(str, aliases.values()) for v in retrained), aliases

    # The report exists, self-contained, and names the systems, the decisions and the studies.
    page = (home / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    for name in ("oracle (ground truth)", "never retrains", "fixed 50/50 split", "drift"):
        assert name in page, name
    for promotion in promotions:
        assert html.escape(promotion["label"]) in page
    for png in ("cumulative_reward.png", "traffic_share.png"):
        assert (home / "report" / png).stat().st_size > 5_000
