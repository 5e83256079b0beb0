"""Every event has a consumer: each one, emitted by its real producer, starts the right run.

One Prefect server for the module (``start_stack`` without the MLflow UI and the rollout
service), ``prefect deploy --all`` of this repository's prefect.yaml, the worker polling
every second. The work pool is paused, so the runs the triggers create are read, not
executed: what is tested is the wiring (event -> automation -> deployment run with the
templated parameters), the flows themselves have their own tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from banditflow.stack import Stack, start_stack
from tasks.settings import PipelineSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "bf-triggers"
MODEL = "trigger-model"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from prefect.client.schemas.actions import WorkPoolUpdate

    home = tmp_path_factory.mktemp("triggers") / "home"
    settings = PipelineSettings(home=home, work_pool=POOL).ensure_dirs()
    # The service's own alias poll is slowed to an hour: only the event can make it see
    # a new challenger within this test.
    service_env = {"BANDITFLOW_MODEL_NAME": MODEL, "BANDITFLOW_ALIAS_POLL_S": "3600"}
    # The pool is paused and no run executes: no warm fork server (its imports took tens
    # of seconds of the set-up's CPU); tests/integration/test_warm_runs.py tests it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BANDITFLOW_WARM_RUNS", "false")
        running = start_stack(settings, with_mlflow=False, worker_poll_seconds=1, env=service_env)
    with running:
        assert "warm" not in running.components, running.components
        with _client(running) as client:
            # Runs are created and read, never executed.
            client.update_work_pool(POOL, WorkPoolUpdate(is_paused=True))
        yield running


class _client:
    """A sync Prefect client on the stack's API (and the same API for ``emit_event``)."""

    def __init__(self, stack: Stack) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._settings = temporary_settings({PREFECT_API_URL: stack.prefect_api_url})

    def __enter__(self) -> Any:
        from prefect.client.orchestration import get_client

        self._settings.__enter__()
        self._client = get_client(sync_client=True)
        return self._client.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._client.__exit__(*exc)
        self._settings.__exit__(*exc)


def _new_run(client: Any, deployment: str, since: datetime, timeout: float = 60) -> Any:
    """Wait for a run of ``deployment`` created after ``since`` by a trigger; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = _runs_since(client, deployment, since)
        if fresh:
            return fresh[0]
        time.sleep(0.5)
    raise AssertionError(f"no run of {deployment} within {timeout:.0f} s")


def _runs_since(client: Any, deployment: str, since: datetime) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = client.read_deployment_by_name(deployment)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
    )
    # Scheduled (cron) runs carry no parameters; a trigger's always do.
    return [r for r in runs if r.created and r.created >= since and r.parameters]


def _flush() -> None:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)


def _emit_from_service(stack: Stack, event: str, version: str, model: str = MODEL) -> None:
    """Emit ``event`` the way the rollout service does (its own HTTP POST to /events)."""
    from rollout.events import emit
    from rollout.metrics import Metrics
    from rollout.settings import RolloutSettings

    settings = RolloutSettings(
        home=stack.home, model_name=model, prefect_api_url=stack.prefect_api_url
    )
    asyncio.run(emit(settings, Metrics(), event, version, "test", {"champion": version}))


def test_feature_update_starts_the_drift_check(stack: Stack) -> None:
    from tasks.ingest import emit_features_updated

    since = datetime.now(UTC)
    with _client(stack) as client:
        emit_features_updated("customer_activity", "2026-02-01", "2026-02-08", 120)
        _flush()
        run = _new_run(client, "retrain/retrain-on-feature-update", since)
    assert run.parameters["feature_view"] == "banditflow.feature_view.customer_activity"
    assert str(run.parameters["start"]).startswith("2026-02-01")
    assert str(run.parameters["end"]).startswith("2026-02-08")
    assert run.parameters["retrain_on_drift"] is False  # the drift event's consumer retrains


def test_drift_detected_starts_the_retrain_of_that_model_on_its_window(stack: Stack) -> None:
    from tasks.drift import DriftReport, FeatureDrift, emit_drift_detected

    window: dict[str, str | None] = {
        "start": "2026-02-10T00:00:00+00:00",
        "end": "2026-02-17T00:00:00+00:00",
    }
    moved = FeatureDrift("sessions_7d", "numeric", 0.4, "ks", 0.3, 1e-6, 0.3, True, "psi")
    report = DriftReport(features=[moved], n_reference=100, n_current=50, window=window)
    since = datetime.now(UTC)
    with _client(stack) as client:
        emit_drift_detected(report, model=MODEL, version="3")
        _flush()
        run = _new_run(client, "retrain/retrain-on-signal", since)
    assert run.parameters["model"] == MODEL
    assert str(run.parameters["start"]).startswith("2026-02-10")
    assert str(run.parameters["end"]).startswith("2026-02-17")
    assert run.parameters["reason"] == "banditflow.drift.detected"  # no second check
    assert run.parameters["drifted_features"] == ["sessions_7d"]


@pytest.mark.parametrize("event_name", ["EVENT_PERFORMANCE_DEGRADED", "EVENT_ROLLOUT_ROLLED_BACK"])
def test_service_events_start_the_retrain_of_the_served_model(
    stack: Stack, event_name: str
) -> None:
    import contract

    event = getattr(contract, event_name)
    since = datetime.now(UTC)
    with _client(stack) as client:
        _emit_from_service(stack, event, "2")
        run = _new_run(client, "retrain/retrain-on-signal", since)
    assert run.parameters == {"model": MODEL, "reason": event}


def test_promotion_starts_no_retrain(stack: Stack) -> None:
    """rollout.promoted is recorded in the registry by the service; it retrains nothing.

    An absence has nothing to wait on, so a marker follows it: a degradation of another
    model, emitted after the promotion. Once the marker's run exists, the promotion
    (processed first) would have made its run too.
    """
    from contract import EVENT_PERFORMANCE_DEGRADED, EVENT_ROLLOUT_PROMOTED

    since = datetime.now(UTC)
    with _client(stack) as client:
        _emit_from_service(stack, EVENT_ROLLOUT_PROMOTED, "4", model="promoted-model")
        _emit_from_service(stack, EVENT_PERFORMANCE_DEGRADED, "1", model="marker-model")
        marker = _new_run(client, "retrain/retrain-on-signal", since)
        runs = _runs_since(client, "retrain/retrain-on-signal", since)
    assert marker.parameters["model"] == "marker-model"
    assert [r.parameters["model"] for r in runs] == ["marker-model"]


def _log_versions(tracking_uri: str, artifacts: Path, n: int) -> None:
    """Log ``n`` small models as versions 1..n of MODEL (champion=1, challengers after)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from contract import CHAMPION, challenger_alias

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
    y = (frame["x1"] - frame["x2"] > 0).astype(int)
    experiment = mlflow.create_experiment("trigger-test", artifact_location=artifacts.as_uri())
    for c in (1.0, 0.1, 0.01)[:n]:
        model = LogisticRegression(C=c).fit(frame, y)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(frame.head(5), model.predict(frame.head(5))),
                serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
                registered_model_name=MODEL,
            )
    client = MlflowClient(tracking_uri, tracking_uri)
    client.set_registered_model_alias(MODEL, CHAMPION, "1")
    for version in range(2, n + 1):
        client.set_registered_model_alias(MODEL, challenger_alias(version - 1), str(version))


def test_registration_makes_the_service_serve_the_new_challengers(stack: Stack) -> None:
    import httpx

    from tasks.register import emit_registered

    assert stack.rollout_url is not None
    _log_versions(stack.mlflow_uri, stack.home / "mlartifacts", 2)
    before = httpx.get(f"{stack.rollout_url}/arms", timeout=10).json()
    assert before["arms"] == [], "the service saw the aliases without the event"

    summary = {
        "model": MODEL,
        "study": "trigger-study",
        "versions": [
            {"version": "1", "alias": "champion"},
            {"version": "2", "alias": "challenger-1"},
        ],
    }
    with _client(stack):
        emit_registered(summary)
        _flush()

    def arms() -> dict[str, Any]:
        body = httpx.get(f"{stack.rollout_url}/arms", timeout=10).json()
        return {a["arm"]: a for a in body["arms"]}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(arms()) < 2:
        time.sleep(0.25)
    seen = arms()
    assert {a["role"] for a in seen.values()} == {"champion", "challenger-1"}, seen
    assert all(a["in_rotation"] for a in seen.values()), seen
    # Served at once: requests now reach the new challenger.
    served = set()
    for i in range(40):
        body = {"features": {"x1": 0.3, "x2": -0.2}, "unit_id": f"u{i}"}
        answer = httpx.post(f"{stack.rollout_url}/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        served.add(str(answer.json()["model"]["version"]))
    assert served == {"1", "2"}, served
