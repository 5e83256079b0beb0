"""Benchmark flow-run start: a stock Prefect process worker against the warm launcher.

One Prefect server, two process work pools side by side: ``bench-stock`` with Prefect's
default base job template (each run a fresh ``python -m prefect.engine``) and
``bench-warm`` with the stack's template (``banditflow/warm_launch.py`` hands the run to
the pre-imported fork server, ``banditflow/warm.py``); one worker each, both polling
every second. The same flows are deployed to both and run one at a time, alternating
pools, so both see the same load:

  noop        a flow that returns at once (Prefect's own floor)
  retrain     the project's ``flows/retrain.py:retrain`` on an empty registry (it imports
              the drift check's modules and MLflow, finds no champion, returns)
  libraries   a flow that imports what the demo's drift check loads (Feast, which imports
              torch; MLflow; scikit-learn) and returns

Seconds from the run's creation (what a trigger does) to RUNNING (worker pick-up,
process start, flow import) and to its final state, read from the server's records.

    .venv/bin/python benchmarks/flow_start.py --reps 3      # about 10 minutes under load
    .venv/bin/python benchmarks/loop_latency.py --part start
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from banditflow.stack import Stack, stack_env, start_stack
from banditflow.supervisor import read_record, spawn, write_stack
from banditflow.warm import socket_path
from tasks.settings import PROJECT_ROOT, PipelineSettings

RESULTS = Path(__file__).resolve().parent / "results"
POOLS = {"stock": "bench-stock", "warm": "bench-warm"}
PROBES = """
from prefect import flow


@flow
def noop() -> str:
    return "ok"


@flow
def libraries() -> list[str]:
    import feast
    import mlflow
    import sklearn.linear_model

    return [m.__name__ for m in (feast, mlflow, sklearn.linear_model)]
"""
FLOWS = {
    "noop": ("probes", "probes.py:noop", {}),
    "retrain": ("project", "flows/retrain.py:retrain", {"retrain_on_drift": False}),
    "libraries": ("probes", "probes.py:libraries", {}),
}


def add_stock_pool(stack: Stack) -> None:
    """Create the stock pool (Prefect's default template) and start its own worker."""
    import subprocess

    components, record = read_record(stack.home)
    prefect = components["prefect"]
    env = stack_env(stack.home, prefect.port or 0) | stack.env()
    env |= {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    binary = str(Path(sys.executable).parent / "prefect")
    create = [binary, "work-pool", "create", POOLS["stock"], "--type", "process", "--overwrite"]
    subprocess.run(create, env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    worker = [binary, "worker", "start", "--pool", POOLS["stock"], "--type", "process"]
    components["worker-stock"] = spawn(
        "worker-stock", worker, env=env, run_dir=stack.home / "run", cwd=PROJECT_ROOT
    )
    write_stack(stack.home, components, record)  # stack.stop() stops it too
    stack.components = components


def deploy(probes: Path) -> dict[tuple[str, str], str]:
    """Deploy every flow to both pools; return (pool kind, flow) -> deployment name."""
    from prefect import Flow

    names = {}
    for kind, pool in POOLS.items():
        for name, (where, entrypoint, parameters) in FLOWS.items():
            source = str(probes if where == "probes" else PROJECT_ROOT)
            flow: Any = Flow.from_source(source, entrypoint)
            flow.deploy(
                name=f"{name}-{kind}",
                work_pool_name=pool,
                parameters=parameters,
                build=False,
                push=False,
                print_next_steps=False,
            )
            names[(kind, name)] = f"{flow.name}/{name}-{kind}"
    return names


def one_run(client: Any, deployment: str, timeout: float = 600) -> dict[str, float]:
    """Start one run of ``deployment``; return seconds from creation to RUNNING and to end."""
    from prefect.deployments import run_deployment

    run: Any = run_deployment(deployment, timeout=0, client=client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run.id)
        if run.state and run.state.is_final():
            break
        time.sleep(0.2)
    if not (run.state and run.state.is_completed()):
        raise RuntimeError(f"{deployment}: the run did not complete: {run.state}")
    states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    running = next(s.timestamp for s in states if s.type.value == "RUNNING")
    return {
        "to_running": (running - run.created).total_seconds(),
        "to_done": (states[-1].timestamp - run.created).total_seconds(),
    }


def measure(reps: int) -> tuple[dict[str, Any], float]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = Path(tempfile.mkdtemp(prefix="flow-start-"))
    (base / "probes").mkdir()
    (base / "probes" / "probes.py").write_text(PROBES)
    settings = PipelineSettings(home=base / "home", work_pool=POOLS["warm"]).ensure_dirs()
    os.environ["BANDITFLOW_HOME"] = str(settings.home)
    began = time.monotonic()
    stack = start_stack(
        settings, with_rollout=False, with_mlflow=False, deploy=False, worker_poll_seconds=1
    )
    out: dict[str, Any] = {f"{k}/{f}": [] for f in FLOWS for k in POOLS}
    try:
        add_stock_pool(stack)
        api = {PREFECT_API_URL: stack.prefect_api_url}
        with temporary_settings(api), get_client(sync_client=True) as client:
            names = deploy(base / "probes")
            while not socket_path(stack.home).exists():  # the server's imports are done
                time.sleep(0.5)
            ready = time.monotonic() - began
            for rep in range(reps):
                for flow in FLOWS:
                    for kind in POOLS:
                        out[f"{kind}/{flow}"].append(one_run(client, names[(kind, flow)]))
                        print(rep, kind, flow, out[f"{kind}/{flow}"][-1], flush=True)
    finally:
        stack.stop()
    return out, ready


def table(results: dict[str, Any]) -> str:
    lines = [
        "| flow | stock: created -> running | warm: created -> running | ratio "
        "| stock: created -> done | warm: created -> done | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for flow in FLOWS:
        s, w = results[f"stock/{flow}"], results[f"warm/{flow}"]
        cells = []
        for key in ("to_running", "to_done"):
            a = statistics.median(r[key] for r in s)
            b = statistics.median(r[key] for r in w)
            cells += [f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}"]
        lines.append(f"| {flow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="Runs per flow and pool.")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results, ready = measure(args.reps)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    text = table(results)
    note = (
        f"\nMedian seconds of {args.reps} runs per cell, one run at a time, alternating "
        f"pools; both workers poll every 1 s (pick-up is uniform in [0, 1] s). On "
        f"{platform.node()} ({os.cpu_count()} cores), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {' '.join(load_before)} before, {' '.join(load_after)} after. "
        f"The warm server's imports were done {ready:.0f} s after the stack started "
        "(until then the launcher runs the stock command)."
    )
    print(text + "\n" + note)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_start.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "flow_start.md").write_text(
        "# Flow-run start: stock process worker vs warm launcher\n\n" + text + "\n" + note + "\n"
    )


if __name__ == "__main__":
    main()
