"""The register flow through Prefect, chained after a real optimize flow, as the demo runs it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract import (
    CHAMPION,
    EVENT_CANDIDATES_REGISTERED,
    TAG_GATE_PREFIX,
    TAG_GATES,
    TAG_SERVING_FLAVOUR,
    aliases_of,
    model_resource_id,
    read_history,
)
from tasks.spec import StudySpec


def write_rows(path: Path, n: int = 900, seed: int = 11) -> Path:
    """A labelled CSV whose ``group`` column is no feature, only the fairness gate's attribute."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "channel": rng.choice(["web", "app", "store"], n),
            "group": rng.choice(["A", "B"], n),
        }
    )
    logit = 1.6 * frame.x1 + 0.9 * frame.x2 + 0.6 * (frame.channel == "app") - 0.3
    frame["converted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return path


def study_spec(csv: Path) -> StudySpec:
    return StudySpec.parse(
        {
            "name": "flow-study",
            "data": {
                "source": "file",
                "path": str(csv),
                "target": "converted",
                "timestamp_column": None,
                "drop_columns": ["group"],
            },
            "model": {
                "family": "logistic_regression",
                "space": {"C": {"type": "float", "low": 0.05, "high": 5.0, "log": True}},
            },
            "optimizer": "random",
            "budget": {"max_trials": 3},
            "q": 1,
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {
                "performance": {"metric": "roc_auc", "floor": 0.7},
                "fairness": {
                    "sensitive_attribute": "group",
                    "max_demographic_parity_difference": 0.2,
                    "max_equalized_odds_difference": 0.3,
                },
                "latency_p95_ms": 500.0,
                "max_model_bytes": 1_000_000,
            },
            "registration": {"max_candidates": 2},
        }
    )


def _events(resource: str, timeout: float = 30.0) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    wanted = EventFilter(
        event=EventNameFilter(name=[EVENT_CANDIDATES_REGISTERED]),
        resource=EventResourceFilter(id=[resource]),
    )
    deadline, events = time.monotonic() + timeout, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            events = list(client.read_events(filter=wanted, limit=10).events)
            if events:
                break
            time.sleep(0.5)
    return events


@pytest.mark.integration
@pytest.mark.slow
def test_optimize_then_register_crowns_a_champion_and_gates_a_challenger(
    prefect_harness, settings, tmp_path
):
    from flows.optimize import optimize
    from flows.register import register
    from tasks.tracking import configure_mlflow

    spec = study_spec(write_rows(tmp_path / "rows.csv"))
    result = optimize(spec)
    assert result.n_completed == 3

    summary = register(spec.name)  # the spec comes back from the study's spec.yaml
    versions = summary["versions"]
    assert [v["version"] for v in versions] == ["1", "2"]
    assert all(v["created"] and v["passed"] for v in versions), versions
    assert set(summary["registered"].values()) == {CHAMPION, "challenger-1"}
    # The champion is the better of the two on the hold-out.
    champion = next(v for v in versions if v["alias"] == CHAMPION)
    assert champion["score"] == max(v["score"] for v in versions)
    for v in versions:
        assert set(v["gates"]) == {
            "performance",
            "fairness.demographic_parity",
            "fairness.equalized_odds",
            "latency",
            "size",
        }
        assert v["serving_flavour"] in {"onnx", "sklearn"}
        assert v["serving_flavour"] == "onnx" or v["onnx_fallback_reason"]

    client = configure_mlflow(settings)
    mv = client.get_model_version(spec.name, champion["version"])
    assert mv.tags[TAG_GATES] == "passed" and TAG_SERVING_FLAVOUR in mv.tags
    assert mv.tags[TAG_GATE_PREFIX + "performance"].startswith("pass: value=")
    assert mv.run_id is not None
    reports = {a.path for a in client.list_artifacts(mv.run_id, "gates")}
    assert "gates/gate_report.html" in reports
    # The candidate run hangs under the study's parent run, next to the trials.
    assert client.get_run(mv.run_id).data.tags["mlflow.parentRunId"] == result.parent_run_id

    events = _events(model_resource_id(spec.name))
    assert events, f"no {EVENT_CANDIDATES_REGISTERED} event reached the Prefect API"
    assert events[0].payload["registered"] == summary["registered"]

    # Registering again is idempotent: same versions, same aliases, no new history.
    history = read_history(client, spec.name)
    again = register(spec.name)
    assert again["registered"] == summary["registered"]
    assert not any(v["created"] for v in again["versions"])
    assert len(client.search_model_versions(f"name='{spec.name}'")) == 2
    assert aliases_of(client, spec.name)[CHAMPION] == champion["version"]
    assert read_history(client, spec.name) == history


@pytest.mark.integration
@pytest.mark.slow
def test_register_command_fails_and_says_what_to_change_when_no_candidate_passes(
    prefect_harness, settings, tmp_path
):
    from typer.testing import CliRunner

    from banditflow.cli import app
    from flows.optimize import optimize

    spec = study_spec(write_rows(tmp_path / "rows.csv"))
    # No model answers a single row in a nanosecond: every candidate fails on latency.
    gates = spec.gates.model_copy(update={"latency_p95_ms": 1e-6})
    spec = spec.model_copy(update={"name": "too-strict", "gates": gates})
    optimize(spec)

    result = CliRunner().invoke(app, ["register", "too-strict"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "no candidate of study too-strict passed the gates" in result.output
    assert "latency fail: value=" in result.output and "off by" in result.output
    assert "raise gates.latency_p95_ms" in result.output
    assert "--force" in result.output
