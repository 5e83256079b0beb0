"""The register steps on a real SQLite MLflow store, as a running service would see them.

Every tag (serving flavour, gates) and the description are written before any alias moves;
the summary shows the alias a version holds; a version that failed its gates explains
itself, and promoting it needs --force, which its history keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract import (
    CHAMPION,
    EXPERIMENT_KIND_CLASSIC_ML,
    MLFLOW_EXPERIMENT_KIND_TAG,
    TAG_GATES,
    TAG_SERVING_FLAVOUR,
    aliases_of,
    read_history,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)


class WatchingClient(MlflowClient):
    """A real client on the test's store that reads the version each time an alias moves."""

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings.tracking_uri, settings.registry_uri)
        self.seen: list[tuple[str, str, str, dict[str, str], str | None]] = []

    def set_registered_model_alias(self, name: str, alias: str, version: Any) -> None:
        mv = self.get_model_version(name, str(version))
        self.seen.append((name, alias, str(version), dict(mv.tags or {}), mv.description))
        super().set_registered_model_alias(name, alias, version)


def write_rows(path: Path, n: int = 900, seed: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "channel": rng.choice(["web", "app", "store"], n),
        }
    )
    logit = 1.6 * frame.x1 + 0.9 * frame.x2 + 0.6 * (frame.channel == "app") - 0.3
    frame["converted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return path


def make_spec(name: str, csv: Path, latency_ms: float) -> StudySpec:
    return StudySpec.parse(
        {
            "name": name,
            "data": {
                "source": "file",
                "path": str(csv),
                "target": "converted",
                "timestamp_column": None,
            },
            "model": {"family": "logistic_regression"},
            "evaluation": {"folds": 2, "latency_calls": 20},
            "gates": {
                "performance": {"metric": "roc_auc", "floor": 0.6},
                "latency_p95_ms": latency_ms,
                "max_model_bytes": 1_000_000,
            },
            "registration": {"max_candidates": 2},
        }
    )


@pytest.fixture
def watching(settings: PipelineSettings, monkeypatch: pytest.MonkeyPatch) -> WatchingClient:
    """Every register step gets the watching client (MLflow's URIs are still set up)."""
    import tasks.register as steps

    client = WatchingClient(settings)
    real = steps.configure_mlflow

    def configure(s: PipelineSettings | None = None) -> MlflowClient:
        real(s)
        return client

    monkeypatch.setattr(steps, "configure_mlflow", configure)
    return client


def _register(spec: StudySpec, settings: PipelineSettings) -> dict[str, Any]:
    from flows.register import register_trials
    from tasks.data import load_study_data

    data = load_study_data(spec, settings)
    trials = [
        Trial("0", {"C": 1.0}, {"roc_auc": 0.80}),
        Trial("1", {"C": 0.05}, {"roc_auc": 0.79}),
    ]
    return register_trials(spec, spec.name, trials, data, settings)


def test_every_tag_and_the_description_come_before_the_alias(
    prefect_harness: None, settings: PipelineSettings, watching: WatchingClient, tmp_path: Path
) -> None:
    spec = make_spec("ordered", write_rows(tmp_path / "rows.csv"), latency_ms=500.0)
    summary = _register(spec, settings)

    moved = sorted(alias for _, alias, _, _, _ in watching.seen)
    assert moved == sorted([CHAMPION, "challenger-1"]), moved
    for _, alias, _, tags, description in watching.seen:
        # What a service reading the alias at that instant finds on the version.
        assert tags.get(TAG_GATES) == "passed", (alias, tags)
        assert tags.get(TAG_SERVING_FLAVOUR) in {"onnx", "sklearn"}, (alias, tags)
        assert description and "passed every gate" in description, description
        assert "serves as: " + tags[TAG_SERVING_FLAVOUR] in description

    held = aliases_of(watching, "ordered")
    by_version = {v["version"]: v for v in summary["versions"]}
    assert by_version[held[CHAMPION]]["alias"] == CHAMPION
    for v in summary["versions"]:
        assert v["run_id"] == watching.get_model_version("ordered", v["version"]).run_id
        assert "roc_auc" in (v["description"] or "")

    # The MLflow UI opens the study's experiment as a classic ML one (runs table, metrics).
    experiment = watching.get_experiment_by_name("ordered")
    assert experiment is not None
    assert experiment.tags[MLFLOW_EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_CLASSIC_ML

    # Registering again: the champion still shows as champion, no alias moves again.
    watching.seen.clear()
    again = _register(spec, settings)
    assert watching.seen == []
    assert again["registered"] == summary["registered"]


def test_a_failed_candidate_explains_itself_and_promoting_it_needs_force(
    prefect_harness: None,
    settings: PipelineSettings,
    watching: WatchingClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from banditflow.cli import app
    from banditflow.commands.registry import failure_advice
    from tasks.settings import get_settings

    # No model answers a single row in a nanosecond: the latency gate fails every candidate.
    spec = make_spec("strict", write_rows(tmp_path / "rows.csv"), latency_ms=1e-6)
    summary = _register(spec, settings)
    assert not any(v["passed"] for v in summary["versions"])
    assert watching.seen == [], "a failed candidate got an alias"
    advice = failure_advice(summary)
    assert len(advice) == len(summary["versions"])
    assert all("latency" in line and "raise gates.latency_p95_ms" in line for line in advice)
    assert all("off by" in line for line in advice), advice
    assert "FAILED latency" in (summary["versions"][0]["description"] or "")

    monkeypatch.setenv("BANDITFLOW_HOME", str(settings.home))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        refused = runner.invoke(app, ["promote", "strict", "1"])
        assert refused.exit_code == 1, refused.output
        assert "failed its gates" in refused.output and "--force" in refused.output
        assert CHAMPION not in aliases_of(watching, "strict")
        forced = runner.invoke(app, ["promote", "strict", "1", "--force", "--reason", "demo"])
        assert forced.exit_code == 0, forced.output
    finally:
        get_settings.cache_clear()
    assert aliases_of(watching, "strict")[CHAMPION] == "1"
    actions = [(e.version, e.action) for e in read_history(watching, "strict")]
    assert ("1", "forced") in actions and ("1", "promoted") in actions
    promoted = next(e for e in read_history(watching, "strict") if e.action == "promoted")
    assert "forced past failed gates" in promoted.reason
