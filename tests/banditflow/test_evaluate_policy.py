"""``banditflow evaluate-policy`` on a real rollout store of logged decisions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from banditflow.cli import app
from rollout.store import DecisionRow, FeedbackRow, Store


def logged_store(path: Path) -> str:
    """A store with 4,000 decisions split 70/30 (propensities logged) and their rewards."""
    url = f"sqlite:///{path}"
    store = Store(url, sqlite_synchronous="NORMAL")
    store.create_schema()
    gen = np.random.default_rng(0)
    now = time.time()
    decisions, feedback = [], []
    for i in range(4000):
        arm = "v2" if gen.random() < 0.3 else "v1"
        p = 0.3 if arm == "v2" else 0.7
        rate = 0.6 if arm == "v2" else 0.2
        decisions.append(DecisionRow(f"r{i}", arm, now, None, p, '{"name": "fixed"}', "all"))
        feedback.append(FeedbackRow(f"r{i}", float(gen.random() < rate), arm, now))
    store.apply_batch(decisions, feedback)
    store.dispose()
    return url


def test_evaluate_policy_prints_the_three_estimates(tmp_path: Path, home: Path) -> None:
    url = logged_store(tmp_path / "rollout.db")
    result = CliRunner().invoke(
        app,
        [
            "evaluate-policy",
            "--policy",
            "fixed",
            "--params",
            '{"weights": {"v2": 1}}',
            "--state-url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in result.output.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in {"logged", "ips", "snips", "dr"}
    }
    assert set(rows) == {"logged", "ips", "snips", "dr"}
    # Always v2 earns about 0.6; the log itself (70 % on v1 at 0.2) about 0.32.
    assert abs(rows["dr"] - 0.6) < 0.05 and abs(rows["snips"] - 0.6) < 0.05
    assert abs(rows["logged"] - 0.32) < 0.03
    assert "average split v1 0.000, v2 1.000" in result.output


def test_evaluate_policy_says_what_is_wrong(tmp_path: Path, home: Path) -> None:
    url = logged_store(tmp_path / "rollout.db")
    bad = CliRunner().invoke(app, ["evaluate-policy", "--policy", "nope", "--state-url", url])
    assert bad.exit_code == 1 and "unknown policy 'nope'" in bad.output
    arms = CliRunner().invoke(
        app, ["evaluate-policy", "--policy", "fixed", "--arms", "v9", "--state-url", url]
    )
    assert arms.exit_code == 1 and "not among the logged" in arms.output
