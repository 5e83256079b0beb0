"""End to end: a feature update starts the drift check, whose drift event starts the retrain.

A Prefect server on a free port, a process work pool and a worker (polling every second),
``prefect deploy --all`` of this repository's prefect.yaml; a champion made by the
``optimize`` and ``register`` flows; then ``push_activity`` (the ingestion task) emits
``banditflow.features.updated`` and the trigger runs the check (``retrain`` with
``retrain_on_drift: false``). A second update while it runs is cancelled by the
deployment's concurrency limit. The check emits ``banditflow.drift.detected``, and that
trigger runs the warm-started retrain study (``retrain-on-signal``), which registers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from banditflow.stack import start_stack
from tasks.settings import PipelineSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=45)
DAYS = 60
MODEL = "e2e-conversion"
RETRAIN = "retrain/retrain-on-feature-update"
SIGNAL = "retrain/retrain-on-signal"


def champion_spec(path: Path) -> dict[str, Any]:
    return {
        "name": MODEL,
        "data": {
            "source": "file",
            "path": str(path),
            "start": START.isoformat(),
            "end": DRIFT_AT.isoformat(),
        },
        "model": {
            "family": "logistic_regression",
            "space": {"C": {"type": "float", "low": 0.001, "high": 100.0, "log": True}},
        },
        "budget": {"max_trials": 4},
        "q": 2,
        "evaluation": {"folds": 2, "latency_calls": 10},
        "gates": {"performance": {"floor": 0.5}, "latency_p95_ms": 500},
        "registration": {"max_candidates": 1, "convert_onnx": False},
    }


def _runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    # Runs made by the trigger carry the templated feature view; the cron's do not.
    return [r for r in runs if r.parameters.get("feature_view")]


def _wait(predicate: Any, timeout: float, what: str, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_feature_update_runs_one_retrain_with_a_drift_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.datagen import GeneratorConfig, generate, labelled_sessions

    home = tmp_path / "home"
    monkeypatch.setenv("BANDITFLOW_HOME", str(home))
    settings = PipelineSettings(home=home).ensure_dirs()
    config = GeneratorConfig(
        seed=0, n_customers=600, rows=9_000, start=START, days=DAYS, drift_at=DRIFT_AT
    )
    generate(config, settings.data_dir)
    table = settings.data_dir / "training.parquet"
    labelled_sessions(settings.data_dir).to_parquet(table, index=False)

    pool = "bf-e2e"
    started = time.monotonic()
    # Feast takes ~10 s to import and apply: do it while the server starts.
    applied = ThreadPoolExecutor(1).submit(_apply_feature_repository, settings)
    stack = start_stack(
        settings.model_copy(update={"work_pool": pool}),
        with_rollout=False,
        with_mlflow=False,
        worker_poll_seconds=1,
    )
    print(f"[e2e] stack up in {time.monotonic() - started:.1f} s")
    with stack:
        applied.result(timeout=300)
        _scenario(stack.prefect_api_url, settings, table)


def _apply_feature_repository(settings: PipelineSettings) -> None:
    from tasks.features import apply_repository

    apply_repository(settings)


def _scenario(api: str, settings: PipelineSettings, table: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from contract import CHAMPION, EVENT_DRIFT_DETECTED, TAG_STUDY, aliases_of
    from flows.optimize import optimize
    from flows.register import register
    from tasks.drift import artifact_key
    from tasks.ingest import flush_events, push_activity
    from tasks.spec import StudySpec
    from tasks.tracking import configure_mlflow

    t0 = time.monotonic()

    def mark(what: str) -> None:
        print(f"[e2e] {time.monotonic() - t0:6.1f} s  {what}")

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        checker = client.read_deployment_by_name("promote-check/promote-check")
        client.pause_deployment(checker.id)  # no rollout service in this test
        deployment = client.read_deployment_by_name(RETRAIN)
        assert deployment.global_concurrency_limit is not None
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options is not None
        assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"

        # A champion: the optimize and register flows, in this process (the deployments'
        # subprocesses would add ~20 s of imports each).
        spec = StudySpec.parse(champion_spec(table))
        optimize(spec)
        register(MODEL, spec)
        mark("champion registered")
        mlflow = configure_mlflow(settings)
        assert CHAMPION in aliases_of(mlflow, MODEL)

        # The feature task pushes the drifted days' activity and emits the event. An events
        # worker left by an earlier test would send to its own server: start a fresh one.
        EventsWorker.drain_all(timeout=10)
        activity = pd.read_parquet(settings.data_dir / "activity.parquet")
        recent = activity[activity["event_timestamp"] >= pd.Timestamp(DRIFT_AT)]
        push_activity(recent.drop(columns="created_timestamp"), settings=settings)
        flush_events()
        mark("first update pushed")

        def running() -> Any:
            runs = _runs(client, deployment.id)
            return next((r for r in runs if r.state and r.state.is_running()), None)

        first = _wait(running, 120, "the retrain flow run to start")
        mark("retrain running")
        assert first.parameters["feature_view"] == "banditflow.feature_view.customer_activity"

        # A second update while the first retrain runs: its run is cancelled unstarted.
        push_activity(recent.tail(500).drop(columns="created_timestamp"), settings=settings)
        flush_events()

        def second_cancelled() -> Any:
            runs = [r for r in _runs(client, deployment.id) if r.id != first.id]
            return next((r for r in runs if r.state and r.state.is_cancelled()), None)

        second = _wait(second_cancelled, 90, "the second retrain to be cancelled")
        mark("second retrain cancelled")
        # It never ran: no RUNNING state in its history (run_count counts those).
        states = client.read_flow_run_states(second.id)
        assert second.run_count == 0 and not any(st.is_running() for st in states), states

        def finished() -> Any:
            run = client.read_flow_run(first.id)
            return run if run.state and run.state.is_final() else None

        done = _wait(finished, 240, "the retrain flow run to finish", poll=1.0)
        mark("retrain finished")
        assert done.state.is_completed(), done.state
        runs = _runs(client, deployment.id)
        assert sum(1 for r in runs if r.run_count > 0) == 1, [(r.name, r.state) for r in runs]

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first.id]))
        )
        keys = {a.key for a in artifacts}
        assert artifact_key(MODEL) in keys, keys

        # The check only announced the drift; the drift event's consumer runs the retrain.
        signal = client.read_deployment_by_name(SIGNAL)

        def retrain_done() -> Any:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[signal.id]))
            )
            mine = [r for r in runs if r.parameters.get("model") == MODEL]
            return next((r for r in mine if r.state and r.state.is_final()), None)

        retrained = _wait(retrain_done, 300, "the drift event's retrain to finish", poll=1.0)
        mark("retrain on drift.detected finished")
        assert retrained.state.is_completed(), retrained.state
        assert retrained.parameters["reason"] == EVENT_DRIFT_DETECTED

    versions = mlflow.search_model_versions(f"name='{MODEL}'")
    studies = {(v.tags or {}).get(TAG_STUDY, "") for v in versions}
    assert any(s.startswith(f"{MODEL}--retrain-") for s in studies), studies
