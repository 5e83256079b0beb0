"""Parallel trials: wall time of q=2 against q=1 for each task runner, 32 CPU-bound trials.

Each trial cross-validates a random forest sized to take about a second. The same study
runs with q=1 and q=2 on each runner (threads; Prefect's ProcessPoolTaskRunner; ``dask``:
Prefect tasks on threads handing each trial to Dask as a plain task, a LocalCluster; and
``processes``: Prefect tasks on threads handing the work to a warm process pool). Target:
q=2 at most 0.6x the wall time of q=1 with the best runner. ``bare-pool`` (``--runners
bare-pool,...``) is the control: the same trials on the warm pool alone.
``dask-cluster`` is a real cluster: ``dask scheduler`` and two ``dask worker`` processes,
each started in its own folder with the trial imports preloaded (the scaled profile's
layout), the study's data and family sent to them by the Dask runner's worker plugin.
``--rounds N`` interleaves N q=1/q=2 pairs per runner (a shared machine's load moves) and
reports the median ratio.

Needs a real Prefect server (the ephemeral API starts one per worker process): the script
starts ``prefect server start`` on a free port unless PREFECT_API_URL is already set.

    .venv/bin/python benchmarks/optimize_parallel.py [--trials 32] [--runners threads,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``prefect server start`` in its own session; return it and its API URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("prefect server did not become healthy within 180 s")


@contextlib.contextmanager
def prefect_api(work: Path) -> Iterator[None]:
    """Use ``PREFECT_API_URL``, or a ``prefect server start`` of our own for the block.

    Without a server, every process-runner or Dask worker would start an ephemeral API.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    server, url = start_prefect_server(work)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        time.sleep(2.5)  # Prefect ships logs every 2 s: let the last batch reach the server
        stop(server)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its children
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def dask_cluster(work: Path, workers: int = 2) -> Iterator[str]:
    """Start a scheduler and ``workers`` single-threaded workers, each in its own folder."""
    from distributed import Client

    from tasks.dask_study import WORKER_ARGS, worker_env

    port, bin_dir = free_port(), Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{port}"
    cmds = [["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    cmds += [
        ["worker", address, *WORKER_ARGS, "--no-dashboard"]  # as the scaled profile's
        + ["--name", f"w{i}", "--local-directory", str(work / f"dask-worker-{i}")]
        for i in range(1, workers + 1)
    ]
    procs = []
    for cmd in cmds:
        folder = work / (cmd[cmd.index("--name") + 1] if "--name" in cmd else "scheduler")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [str(bin_dir / "dask"), *cmd],
                    cwd=folder,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=worker_env(os.environ),
                )
            )
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


def use_dask_address(address: str) -> None:
    """Point the settings' ``dask_address`` at ``address`` (empty: a LocalCluster per study)."""
    from tasks.settings import get_settings

    os.environ["BANDITFLOW_DASK_ADDRESS"] = address
    get_settings.cache_clear()


def run_one(runner: str, spec: Any, q: int, trials: int, work: Path) -> float:
    """Run the study on ``runner``; return its wall seconds (a cluster's start not counted)."""
    from flows.optimize import optimize

    with contextlib.ExitStack() as stack:
        if runner == "dask-cluster":
            use_dask_address(stack.enter_context(dask_cluster(work / f"cluster-q{q}")))
            stack.callback(use_dask_address, "")
        t0 = time.perf_counter()
        if runner == "bare-pool":
            bare_pool(spec, q)
        else:
            kind = "dask" if runner == "dask-cluster" else runner
            result = optimize(spec, runner=kind)
            assert result.n_completed == trials, result
        return time.perf_counter() - t0


def write_data(path: Path, n: int = 3000, features: int = 20, seed: int = 0) -> Path:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    logit = X[:, :5] @ rng.normal(size=5) + 0.5 * X[:, 5] * X[:, 6]
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(features)])
    frame["y"] = (logit + rng.logistic(size=n) > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def make_spec(data: Path, name: str, *, trials: int, q: int, n_estimators: int):
    from tasks.spec import StudySpec

    return StudySpec.parse(
        {
            "name": name,
            "data": {"source": "file", "path": str(data), "target": "y", "timestamp_column": None},
            "model": {
                "family": "random_forest",
                "space": {"max_depth": {"type": "int", "low": 10, "high": 12}},
                "fixed": {"n_estimators": n_estimators, "max_features": "sqrt"},
            },
            "optimizer": "random",
            "objectives": {"roc_auc": "maximize"},
            "budget": {"max_trials": trials, "trial_timeout_seconds": 600},
            "q": q,
            "evaluation": {"folds": 3, "latency_calls": 20},
            "gates": {"performance": None},
        }
    )


def calibrate(data_path: Path, target_seconds: float) -> tuple[int, float]:
    """Return the forest size that makes one trial take about ``target_seconds``."""
    import statistics

    from tasks.data import load_study_data
    from tasks.evaluate import evaluate_trial

    def median_seconds(n_estimators: int) -> float:
        spec = make_spec(data_path, "calibrate", trials=1, q=1, n_estimators=n_estimators)
        times = []
        for _ in range(3):  # a median: the machine is shared, one run can be an outlier
            t0 = time.perf_counter()
            evaluate_trial(spec, {"max_depth": 11}, data)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    data = load_study_data(make_spec(data_path, "calibrate", trials=1, q=1, n_estimators=5))
    base = median_seconds(5)  # fixed costs: latency calls, scoring, pickling
    per_tree = (median_seconds(25) - base) / 20
    n = max(5, round(5 + (target_seconds - base) / max(per_tree, 1e-4)))
    return n, median_seconds(n)


def bare_pool(spec, q: int) -> None:
    """The control: the same trials on a warm pool with no Prefect, MLflow or optimizer.

    If q=2 does not beat q=1 here, the machine has no second core to give (shared load),
    whatever the pipeline does.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tasks.data import load_study_data
    from tasks.evaluate import EvalConfig
    from tasks.executors import TrialPool

    data = load_study_data(spec)
    config = EvalConfig.from_spec(spec)
    with TrialPool(data, q) as pool, ThreadPoolExecutor(q) as threads:
        outcomes = list(
            threads.map(
                lambda i: pool.run(config, {"max_depth": 10 + i % 3}),
                range(spec.budget.max_trials),
            )
        )
    assert all(o.status == "completed" for o in outcomes)


def measure(runner: str, args: Any, data_path: Path, n_estimators: int, work: Path) -> dict:
    """q=1 then q=2 on ``runner``, ``args.rounds`` times interleaved; the median round ratio.

    Interleaving keeps a change of the shared machine's load from landing on one q only.
    """
    import statistics

    walls: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for q in (1, 2):
            name = f"par-{runner}-q{q}" + (f"-r{round_}" if round_ else "")
            spec = make_spec(data_path, name, trials=args.trials, q=q, n_estimators=n_estimators)
            walls[q].append(run_one(runner, spec, q, args.trials, work / f"r{round_}"))
            print(f"{runner:18s} q={q}: {walls[q][-1]:6.1f} s  (load {os.getloadavg()[0]:.1f})")
    ratios = [two / one for one, two in zip(walls[1], walls[2], strict=True)]
    return {
        "runner": runner,
        "q1_seconds": round(statistics.median(walls[1]), 2),
        "q2_seconds": round(statistics.median(walls[2]), 2),
        "ratio": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--runners", default="threads,prefect-processes,dask,processes")
    parser.add_argument("--target-seconds", type=float, default=1.0)
    parser.add_argument("--tag", default="", help="suffix of the result files (a partial run)")
    parser.add_argument("--rounds", type=int, default=1, help="q=1/q=2 pairs, interleaved")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bf-parallel-"))
    os.environ["BANDITFLOW_HOME"] = str(work / "home")
    with prefect_api(work):
        from flows.optimize import optimize

        data_path = write_data(work / "data.csv")
        n_estimators, trial_seconds = calibrate(data_path, args.target_seconds)
        print(f"one trial: {trial_seconds:.2f} s with {n_estimators} trees (3-fold CV)")
        # One-time costs (MLflow store creation, Prefect client) out of every measurement.
        optimize(make_spec(data_path, "warm-up", trials=1, q=1, n_estimators=5), runner="threads")
        rows = []
        for runner in args.runners.split(","):
            rows.append(measure(runner, args, data_path, n_estimators, work))
    # bare-pool is the control (no Prefect, no optimizer): the best is among the runners.
    best = min(
        (r for r in rows if r["runner"] != "bare-pool"), key=lambda r: r["ratio"], default=rows[0]
    )
    report = {
        "trials": args.trials,
        "trial_seconds": round(trial_seconds, 3),
        "n_estimators": n_estimators,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "best_runner": best["runner"],
        "target_ratio": 0.6,
        "target_met": best["ratio"] <= 0.6,
    }
    lines = [
        f"{args.trials} trials of ~{trial_seconds:.2f} s (random forest, {n_estimators} trees, "
        f"3-fold CV); load average at the end {report['load_average'][0]:.1f} on "
        f"{report['cpus']} cores; medians of {args.rounds} interleaved round(s)",
        "",
        "| runner | q=1 wall (s) | q=2 wall (s) | q=2 / q=1 | each round |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['runner']} | {r['q1_seconds']:.1f} | {r['q2_seconds']:.1f} | {r['ratio']:.2f} "
        f"| {', '.join(f'{x:.2f}' for x in r['round_ratios'])} |"
        for r in rows
    ]
    lines += ["", f"Best: {best['runner']} at {best['ratio']:.2f}x (target <= 0.60x)."]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "optimize_parallel" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
