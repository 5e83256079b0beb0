"""Benchmark the retrain loop: from a feature update to the retrain running and a new challenger.

A Prefect server, the work pool and a process worker run locally (``banditflow up``'s
machinery, without the MLflow UI and the rollout service); prefect.yaml is deployed; a
champion is trained on the days before the generator's drift. Then ``push_activity`` (the
feature task) pushes the drifted days, and the seconds of each step are read back from
the server's state timestamps and the registry:

  event delivery     event queued (push returned) -> the trigger's flow run exists
  worker pick-up     flow run created -> PENDING (the worker's poll)
  process start      PENDING -> RUNNING (a fresh Python importing the flow)
  drift check        RUNNING -> check-drift task done (loads both windows, tests, report)
  retrain study      the optimize subflow (warm-started, on the recent window)
  registration       optimize done -> the new version exists (refit, log, register)
  gates + aliases    version created -> flow run completed

Side by side: the worker at Prefect's default poll (10 s, the baseline) and at 1 s.

    .venv/bin/python benchmarks/loop_latency.py            # about 4 minutes on 2 cores
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
STEPS = (
    "event delivery",
    "worker pick-up",
    "process start",
    "drift check",
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
        raise RuntimeError(f"the retrain flow run did not complete: {run and run.state}")

    states = client.read_flow_run_states(run.id)
    first: dict[str, datetime] = {}
    for st in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(st.type.value, st.timestamp)
    tasks = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))
    )
    drift_done = next(t.end_time for t in tasks if t.name.startswith("check-drift"))
    [sub] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
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
        first["PENDING"],
        first["RUNNING"],
        drift_done,
        sub.end_time,
        registered,
        run.end_time,
    ]
    # The subflow starts right after the drift check: its span is "retrain study".
    steps = {
        name: (b - a).total_seconds()
        for name, a, b in zip(STEPS, marks[:-1], marks[1:], strict=True)
    }
    return {
        "steps": steps,
        "to_run_start": (first["RUNNING"] - pushed).total_seconds(),
        "to_challenger_registered": (registered - pushed).total_seconds(),
        "to_completed": (run.end_time - pushed).total_seconds(),
        "version": newest.version,
        # search_model_versions leaves aliases out: read the version itself.
        "aliases": list(client_ml.get_model_version(MODEL, newest.version).aliases or []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="Trials per study.")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
