"""Benchmark the loop: a feature update to a new challenger, and registration to serving.

Part "retrain": a Prefect server, the work pool and a process worker run locally
(``banditflow.stack``, without the MLflow UI and the rollout service); prefect.yaml is
deployed; a champion is trained on the days before the generator's drift. Then
``push_activity`` (the ingestion task) pushes the drifted days, and the seconds of each
step are read back from the server's state timestamps and the registry:

  event delivery              event queued (push returned) -> the check's flow run exists
  check: pick-up + start      check run created -> RUNNING (worker poll, a fresh Python)
  drift check                 RUNNING -> check-drift task done (it emits drift.detected)
  drift.detected -> run       the drift event's retrain run (retrain-on-signal) exists
  retrain: pick-up + start    retrain run created -> RUNNING
  retrain study               the optimize subflow (warm-started, on the recent window)
  registration                optimize done -> the new version exists (refit, log, register)
  gates + aliases             version created -> retrain run completed

Side by side: the worker at Prefect's default poll (10 s, the baseline) and at 1 s.

Part "serving": the seconds from a challenger's alias move to the first ``/predict`` it
answers, with the service's alias poll alone (the baseline) and with the
``candidates.registered`` automation that calls the service's reload.

Part "start" (``benchmarks/flow_start.py``): flow-run start on a stock process worker
against the warm launcher, side by side.

    .venv/bin/python benchmarks/loop_latency.py --part start     # about 10 minutes
    .venv/bin/python benchmarks/loop_latency.py --part serving   # about 2 minutes
    .venv/bin/python benchmarks/loop_latency.py                  # both, about 8 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from banditflow.stack import Stack, stack_env, start_stack
from banditflow.supervisor import read_record, spawn, stop_component, write_stack
from tasks.settings import PROJECT_ROOT, PipelineSettings

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=45)
MODEL = "loop-bench"
RETRAIN = "retrain/retrain-on-feature-update"
SIGNAL = "retrain/retrain-on-signal"
STEPS = (
    "event delivery",
    "check: worker pick-up + process start",
    "drift check",
    "drift.detected -> retrain run exists",
    "retrain: worker pick-up + process start",
    "retrain study",
    "registration",
    "gates + aliases",
)


def champion_spec(trials: int) -> dict[str, Any]:
    return {
        "name": MODEL,
        "data": {"source": "feast", "start": START.isoformat(), "end": DRIFT_AT.isoformat()},
        "model": {
            "family": "logistic_regression",
            "space": {"C": {"type": "float", "low": 0.001, "high": 100.0, "log": True}},
        },
        "budget": {"max_trials": trials},
        "q": 2,
        "evaluation": {"folds": 2, "latency_calls": 10},
        "gates": {"performance": {"floor": 0.5}, "latency_p95_ms": 500},
        "registration": {"max_candidates": 1, "convert_onnx": False},
    }


def restart_worker(stack: Stack, poll: float | None) -> None:
    """Replace the stack's worker by one polling every ``poll`` seconds (None: the default)."""
    components, record = read_record(stack.home)
    stop_component(components["worker"])
    env = stack_env(stack.home, components["prefect"].port or 0) | stack.env()
    env.pop("PREFECT_WORKER_QUERY_SECONDS", None)
    env.pop("PREFECT_WORKER_PREFETCH_SECONDS", None)
    if poll is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(poll)
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = str(max(poll, 1.0))
    old = components["worker"]
    components["worker"] = spawn(
        old.name, old.cmd, env=env, run_dir=stack.home / "run", cwd=PROJECT_ROOT
    )
    write_stack(stack.home, components, record)
    time.sleep(3)  # let it register with the pool before the event arrives


def _signal_runs(client: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment = client.read_deployment_by_name(SIGNAL)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    )
    return [r for r in runs if r.parameters.get("model") == MODEL]


def _signal_run(client: Any, seen: set[Any], timeout: float = 600) -> Any:
    """Wait for the drift event's retrain run (one not in ``seen``) to finish; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in _signal_runs(client) if r.id not in seen]
        if new and new[0].state and new[0].state.is_final():
            if not new[0].state.is_completed():
                raise RuntimeError(f"the retrain run did not complete: {new[0].state}")
            return new[0]
        time.sleep(0.5)
    raise RuntimeError(f"no retrain run on {SIGNAL} finished within {timeout:.0f} s")


def _first_running(client: Any, run_id: Any) -> datetime:
    states = sorted(client.read_flow_run_states(run_id), key=lambda st: st.timestamp)
    return next(st.timestamp for st in states if st.type.value == "RUNNING")


def one_loop(client: Any, settings: PipelineSettings, days: int, deployment_id: Any) -> dict:
    """Push ``days`` drifted days of activity and time each step of the retrain it starts."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from contract import TAG_STUDY
    from tasks.ingest import flush_events, push_activity
    from tasks.tracking import configure_mlflow

    def retrain_runs() -> list[Any]:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        return [r for r in runs if r.parameters.get("feature_view")]

    seen = {r.id for r in retrain_runs()}
    seen_signals = {r.id for r in _signal_runs(client)}
    activity = pd.read_parquet(settings.data_dir / "activity.parquet")
    stamps = activity["event_timestamp"]
    rows = activity[
        (stamps >= pd.Timestamp(DRIFT_AT))
        & (stamps < pd.Timestamp(DRIFT_AT) + pd.Timedelta(days=days))
    ]
    push_activity(rows.drop(columns="created_timestamp"), settings=settings)
    pushed = datetime.now(UTC)  # the event is queued as push_activity returns
    flush_events()

    deadline = time.monotonic() + 600
    run = None
    while time.monotonic() < deadline:
        new = [r for r in retrain_runs() if r.id not in seen]
        if new and new[0].state and new[0].state.is_final():
            run = new[0]
            break
        time.sleep(0.5)
    if run is None or not run.state.is_completed():
        raise RuntimeError(f"the drift check flow run did not complete: {run and run.state}")

    signal = _signal_run(client, seen_signals)
    check_running, signal_running = (
        _first_running(client, run.id),
        _first_running(client, signal.id),
    )
    tasks = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))
    )
    drift_done = next(
        (t.end_time for t in tasks if t.name.startswith("check-drift") and t.end_time),
        run.end_time,
    )
    [sub] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[signal.id])
        )
    )
    client_ml = configure_mlflow(settings)
    versions = client_ml.search_model_versions(f"name='{MODEL}'")
    mine = [
        v for v in versions if (v.tags or {}).get(TAG_STUDY, "").startswith(f"{MODEL}--retrain-")
    ]
    newest = max(mine, key=lambda v: int(v.version))
    registered = datetime.fromtimestamp(newest.creation_timestamp / 1000, UTC)
    marks = [
        pushed,
        run.created,
        check_running,
        drift_done,
        signal.created,
        signal_running,
        sub.end_time,
        registered,
        signal.end_time,
    ]
    # The optimize subflow starts as the retrain run starts: its span is "retrain study".
    steps = {
        name: (b - a).total_seconds()
        for name, a, b in zip(STEPS, marks[:-1], marks[1:], strict=True)
    }
    return {
        "steps": steps,
        "to_run_start": (signal_running - pushed).total_seconds(),
        "to_challenger_registered": (registered - pushed).total_seconds(),
        "to_completed": (signal.end_time - pushed).total_seconds(),
        "version": newest.version,
        # search_model_versions leaves aliases out: read the version itself.
        "aliases": list(client_ml.get_model_version(MODEL, newest.version).aliases or []),
    }


# --- registration -> first request served by the new challenger --------------------------
SERVE_MODEL = "serve-bench"
SERVING_MODES = ("alias poll only (5 s, the service's default)", "candidates.registered -> reload")


def _log_version(tracking_uri: str, artifacts: Path, c: float) -> str:
    """Log one small sklearn model as a new version of SERVE_MODEL; return its version."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("serve-bench")
    eid = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("serve-bench", artifact_location=artifacts.as_uri())
    )
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
    y = (frame["x1"] - frame["x2"] > 0).astype(int)
    model = LogisticRegression(C=c).fit(frame, y)
    with mlflow.start_run(experiment_id=eid):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame.head(5), model.predict(frame.head(5))),
            serialization_format="cloudpickle",
            pip_requirements=["scikit-learn"],
            registered_model_name=SERVE_MODEL,
        )
    return str(info.registered_model_version)


def _first_served(url: str, version: str, timeout: float = 120) -> float:
    """Send requests until one is served by ``version``; return the monotonic time it was."""
    import httpx

    deadline = time.monotonic() + timeout
    n = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            n += 1
            body = {"features": {"x1": 0.3, "x2": -0.2}, "unit_id": f"bench-{version}-{n}"}
            answer = client.post("/predict", json=body)
            if answer.status_code == 200 and answer.json()["model"]["version"] == version:
                return time.monotonic()
            time.sleep(0.01)
    raise RuntimeError(f"v{version} served no request within {timeout:.0f} s")


def serving_latency(reps: int) -> dict[str, list[float]]:
    """Seconds from a challenger's alias move to its first served request, per mode."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from banditflow.triggers import RELOAD_AUTOMATION
    from contract import CHAMPION, challenger_alias
    from tasks.ingest import flush_events
    from tasks.register import emit_registered

    home = Path(tempfile.mkdtemp(prefix="serve-latency-")) / "home"
    settings = PipelineSettings(home=home, work_pool="bench-serve").ensure_dirs()
    artifacts = home / "mlartifacts"
    uri = settings.tracking_uri
    out: dict[str, list[float]] = {mode: [] for mode in SERVING_MODES}
    env = {"BANDITFLOW_MODEL_NAME": SERVE_MODEL}
    with start_stack(settings, with_mlflow=False, env=env) as stack:
        assert stack.rollout_url is not None
        registry = MlflowClient(uri, uri)
        first = _log_version(uri, artifacts, 1.0)
        registry.set_registered_model_alias(SERVE_MODEL, CHAMPION, first)
        _first_served(stack.rollout_url, first)
        api = {PREFECT_API_URL: stack.prefect_api_url}
        with temporary_settings(api), get_client(sync_client=True) as prefect:
            [reload] = prefect.read_automations_by_name(RELOAD_AUTOMATION)
            for mode, rep in [(m, r) for r in range(reps) for m in SERVING_MODES]:
                event = mode == SERVING_MODES[1]
                (prefect.resume_automation if event else prefect.pause_automation)(reload.id)
                version = _log_version(uri, artifacts, 0.1 + rep)
                registry.set_registered_model_alias(SERVE_MODEL, challenger_alias(1), version)
                moved = time.monotonic()  # registration's last step: the alias
                if event:
                    versions = [{"version": version, "alias": challenger_alias(1)}]
                    emit_registered({"model": SERVE_MODEL, "versions": versions})
                    flush_events()
                out[mode].append(_first_served(stack.rollout_url, version) - moved)
                print(f"{mode}: v{version} served after {out[mode][-1]:.2f} s")
    return out


def serving_table(results: dict[str, list[float]]) -> str:
    import statistics

    lines = [
        "| how the service learns of a new challenger | median s | max s | runs |",
        "|---|---:|---:|---:|",
    ]
    for mode, values in results.items():
        lines.append(
            f"| {mode} | {statistics.median(values):.2f} | {max(values):.2f} | {len(values)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="Trials per study.")
    parser.add_argument(
        "--part",
        choices=["serving", "retrain", "start", "all"],
        default="all",
        help="What to measure.",
    )
    parser.add_argument("--reps", type=int, default=5, help="Registrations per serving mode.")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.part == "start":
        import sys

        from flow_start import main as flow_start

        sys.argv = [sys.argv[0], "--reps", str(args.reps)]
        flow_start()
        return
    if args.part in ("serving", "all"):
        served = serving_latency(args.reps)
        table = serving_table(served)
        note = (
            f"\nSeconds from the challenger alias move (registration's last write) to the first "
            f"/predict it answers; {args.reps} registrations per row, one stack, on "
            f"{platform.node()} ({os.cpu_count()} cores), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
            " Includes loading the version (a small cloudpickle sklearn model)."
        )
        print(table + "\n" + note)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "loop_latency_serving.json").write_text(json.dumps(served, indent=2))
        (RESULTS / "loop_latency_serving.md").write_text(
            "# Registration -> first request served\n\n" + table + "\n" + note + "\n"
        )
    if args.part == "serving":
        return
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.optimize import optimize
    from flows.register import register
    from tasks.datagen import GeneratorConfig, generate
    from tasks.features import apply_repository
    from tasks.spec import StudySpec

    home = Path(tempfile.mkdtemp(prefix="loop-latency-")) / "home"
    os.environ["BANDITFLOW_HOME"] = str(home)
    settings = PipelineSettings(home=home).ensure_dirs()
    generate(
        GeneratorConfig(
            seed=0, n_customers=600, rows=9_000, start=START, days=60, drift_at=DRIFT_AT
        ),
        settings.data_dir,
    )
    t = time.perf_counter()
    applied = ThreadPoolExecutor(1).submit(apply_repository, settings)
    stack = start_stack(
        settings.model_copy(update={"work_pool": "bench"}), with_rollout=False, with_mlflow=False
    )
    applied.result()
    print(f"stack up and feature repository applied in {time.perf_counter() - t:.1f} s")
    results: dict[str, Any] = {}
    try:
        api = stack.prefect_api_url
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            checker = client.read_deployment_by_name("promote-check/promote-check")
            client.pause_deployment(checker.id)
            spec = StudySpec.parse(champion_spec(args.trials))
            optimize(spec)
            register(MODEL, spec)
            deployment = client.read_deployment_by_name(RETRAIN)
            # Each loop pushes a different number of days: a new window, so a new study.
            for label, poll, days in (("poll 10 s (default)", None, 7), ("poll 1 s", 1.0, 8)):
                restart_worker(stack, poll)
                results[label] = one_loop(client, settings, days, deployment.id)
                print(label, json.dumps(results[label]["steps"]))
    finally:
        stack.stop()

    base, fast = results["poll 10 s (default)"], results["poll 1 s"]
    lines = [
        "| step | worker poll 10 s (baseline) | worker poll 1 s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for step in STEPS:
        a, b = base["steps"][step], fast["steps"][step]
        lines.append(f"| {step} | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f} |")
    for key, name in (
        ("to_run_start", "**update -> retrain running**"),
        ("to_challenger_registered", "**update -> new version registered**"),
        ("to_completed", "**update -> retrain completed**"),
    ):
        lines.append(
            f"| {name} | {base[key]:.1f} | {fast[key]:.1f} | {fast[key] / base[key]:.2f} |"
        )
    table = "\n".join(lines)
    note = (
        f"\nSeconds, one run each, {args.trials} trials per study, 9,000 labelled sessions, "
        f"on {platform.node()} ({os.cpu_count()} cores), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Worker pick-up is uniform in [0, poll] (a mean of poll / 2); one sample each. "
        "The drift check includes the flow process importing Feast to load both windows. "
        "Aliases the gates gave the new versions: "
        f"{base['aliases'] or 'none (a gate failed)'} / {fast['aliases'] or 'none'}."
    )
    print(table + "\n" + note)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loop_latency.json").write_text(
        json.dumps({"trials": args.trials, "results": results}, indent=2, default=str)
    )
    (RESULTS / "loop_latency.md").write_text(
        "# Retrain loop latency\n\n" + table + "\n" + note + "\n"
    )


if __name__ == "__main__":
    main()
