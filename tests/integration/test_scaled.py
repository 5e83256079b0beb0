"""The scaled profile end to end: every part on a real server at once, as `make up PROFILE=scaled`.

One stack for the module (``start_stack(profile="scaled")``): Prefect and MLflow on
PostgreSQL, a Dask scheduler and two workers in their own folders, Feast's online store on
Redis, two rollout replicas on one PostgreSQL store behind HAProxy. Every command runs as a
user runs it: ``banditflow ...`` in a subprocess that finds the stack from the data folder.
Needs PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and haproxy; CI has all three
(``.ci/run``), elsewhere the module skips with what is missing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from banditflow.stack import Stack
from tasks.settings import PROJECT_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from test_make_up import processes_with  # noqa: E402 - the path above

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "bf-scaled"
# The world drifts from DRIFT_AT on (`generate --drift-at`); the champion learns before it.
# Ten days of ~150 sessions after it: the retrain waits for 1,000 labelled rows since the
# change (tasks/retrain_window.py), and six days were 920 (status waiting-for-labels).
START, DRIFT_AT, DAYS = "2026-01-01", "2026-01-10", 20
SIGNAL = "retrain/retrain-on-signal"
CLI = str(Path(sys.executable).parent / "banditflow")
PLUGIN_SOURCE = Path(__file__).parents[1] / "data" / "family_plugin"
SPEC = """\
name: {name}
task: binary
data: {data}
model: {{family: {family}}}
objectives: {{roc_auc: maximize}}
optimizer: random
budget: {{max_trials: 4}}
q: 4
seed: 0
evaluation: {{method: cv, folds: 2, latency_calls: 20}}
gates: {{performance: null}}
registration: {{max_candidates: 3}}
"""


def _servers_or_skip() -> None:
    """Skip (fail in CI) when PostgreSQL, Redis or haproxy is missing."""
    from banditflow.stack_scaled import DEFAULT_REDIS, haproxy_bin, postgres_admin_url
    from banditflow.supervisor import StackError

    try:
        import psycopg
        import redis

        psycopg.connect(postgres_admin_url(), connect_timeout=3).close()
        host, _, port = (os.environ.get("BANDITFLOW_REDIS_URL") or DEFAULT_REDIS).partition(":")
        redis.Redis(host=host, port=int(port), socket_timeout=3).ping()
        haproxy_bin()
    except (ImportError, StackError, OSError, Exception) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the scaled profile needs PostgreSQL, Redis and haproxy: {exc}")


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`make up PROFILE=scaled` for the module; `make down` leaves no process behind."""
    from banditflow.stack import attach
    from banditflow.stack_scaled import drop_databases, redis_address

    _servers_or_skip()
    home = tmp_path_factory.mktemp("scaled") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BANDITFLOW_"))}
    env |= {f"BANDITFLOW_{part}_PORT": "0" for part in ("PREFECT", "MLFLOW", "ROLLOUT")}
    # The replicas poll the aliases every second, the Prefect worker its pool every second.
    env |= {"BANDITFLOW_HOME": str(home), "BANDITFLOW_WORK_POOL": POOL}
    env |= {"BANDITFLOW_ALIAS_POLL_S": "1", "PATH": f"{Path(CLI).parent}:{env['PATH']}"}
    # The retrain keeps the champion's family (no screen of every family: minutes of CPU).
    env |= {"BANDITFLOW_RETRAIN_FAMILIES": "logistic_regression"}
    try:
        up = make("up", env, "PROFILE=scaled", "UP_ARGS=--worker-poll-seconds 1")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "profile scaled" in up.stdout and "HAProxy in front" in up.stdout, up.stdout
        running = attach(home)
        assert running is not None and running.profile == "scaled"
        yield running
    finally:
        down = make("down", env)
        import redis

        drop_databases(home)
        address, db = redis_address(home)
        host, _, port = address.partition(":")
        redis.Redis(host=host, port=int(port), db=db).flushdb()
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_with(str(home)) == []


def make(target: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # `-o install`: the venv is there; never let a test reinstall the project.
    return subprocess.run(
        ["make", "-o", "install", target, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def cli(stack: Stack, *args: str, cwd: Path, extra: dict[str, str] | None = None) -> str:
    """Run ``banditflow ARGS`` as a user would: only the data folder is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BANDITFLOW_"))}
    env |= {"BANDITFLOW_HOME": str(stack.home)} | (extra or {})
    done = subprocess.run(
        [CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"banditflow {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def replica_urls(stack: Stack) -> list[str]:
    return [str(c.url) for n, c in stack.components.items() if n.startswith("rollout-")]


def test_the_parts_run_on_their_servers(scaled: Stack) -> None:
    import psycopg

    names = set(scaled.components)
    assert {"prefect", "mlflow", "dask-scheduler", "dask-worker-1", "dask-worker-2"} <= names
    assert {"rollout", "rollout-1", "rollout-2", "worker"} <= names
    env = scaled.env()
    assert env["BANDITFLOW_MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert "type: redis" in Path(env["BANDITFLOW_FEATURE_STORE_YAML"]).read_text()
    # Prefect's server keeps its state in its PostgreSQL database (the deployments are there).
    from banditflow.stack_scaled import database_urls

    url = database_urls(scaled.home)["prefect"].replace("+psycopg", "")
    with psycopg.connect(url) as conn:
        (deployments,) = conn.execute("SELECT count(*) FROM deployment").fetchone()
    assert deployments >= 1
    # Each Dask worker works in its own folder, with its own data folder.
    for i in (1, 2):
        worker = scaled.components[f"dask-worker-{i}"]
        assert f"--local-directory {scaled.home / 'run' / f'dask-worker-{i}'}" in " ".join(
            worker.cmd
        )


@pytest.mark.timeout(1200)  # 86 s at load 15; 599 s at load 40
def test_a_family_only_this_machine_has_travels_to_the_workers(
    scaled: Stack, tmp_path: Path, pip_installed: Any
) -> None:
    """The family's package is on the client's path only; the data is a file only it reads."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "flows"))
    from test_optimize import write_data

    data = write_data(tmp_path / "only-here.csv")
    spec = tmp_path / "travel.yaml"
    source = f"{{source: file, path: {data}, target: y, timestamp_column: null}}"
    spec.write_text(SPEC.format(name="travel", data=source, family="extra_trees"))
    with pip_installed(PLUGIN_SOURCE, tmp_path / "family") as site:
        out = cli(scaled, "optimize", str(spec), cwd=tmp_path, extra={"PYTHONPATH": str(site)})
    assert "4 completed, 0 pruned, 0 failed" in " ".join(out.split()), out
    run = scaled.home / "run"
    for i in (1, 2):
        log = (run / f"dask-worker-{i}.log").read_text()
        assert "banditflow trial " in log, f"dask-worker-{i} ran no trial:\n{log[-3000:]}"
        # The package arrived in the worker's own folder (it was not on the worker's path).
        shipped = list((run / f"dask-worker-{i}").rglob("banditflow_extra_trees.py"))
        assert shipped, f"the family's package never reached dask-worker-{i}"


@pytest.mark.timeout(1500)  # 355 s at load 15 on 2 cores, 958 s at load 40
def test_the_whole_profile_closes_the_loop(scaled: Stack, tmp_path: Path) -> None:
    """Data -> Redis -> a q=4 study on Dask -> MLflow's server -> both replicas -> feedback
    counted once -> a drifted feature update: its check runs through Prefect on PostgreSQL,
    finds the drift, and the retrain study it triggers runs on Dask and registers."""
    import redis

    from banditflow.stack_scaled import redis_address

    small = ["--rows", "3000", "--customers", "200", "--days", str(DAYS), "--start", START]
    cli(scaled, "generate", *small, "--drift-at", DRIFT_AT, cwd=tmp_path)
    cli(scaled, "features", "apply", cwd=tmp_path)
    cli(scaled, "features", "materialize", cwd=tmp_path)
    address, db = redis_address(scaled.home)
    host, _, port = address.partition(":")
    assert redis.Redis(host=host, port=int(port), db=db).dbsize() >= 200  # one key per customer

    spec = tmp_path / "conversion.yaml"
    source = (
        "{source: feast, feature_service: conversion_model_v1, target: converted, "
        f"end: '{DRIFT_AT}T00:00:00+00:00'}}"
    )
    spec.write_text(
        SPEC.format(name="scaled-conversion", data=source, family="logistic_regression")
    )
    out = " ".join(cli(scaled, "optimize", str(spec), cwd=tmp_path).split())
    assert "4 completed, 0 pruned, 0 failed" in out, out
    cli(scaled, "register", "scaled-conversion", "--model", "conversion", cwd=tmp_path)

    # Both replicas serve the champion and the challengers (read from the MLflow server).
    def serving(url: str) -> list[str] | None:
        arms = httpx.get(f"{url}/arms", timeout=10).json()["arms"]
        roles = sorted(a["role"] for a in arms)
        return roles if "champion" in roles and "challenger" in " ".join(roles) else None

    roles = [wait_for(f"{url} serving", lambda u=url: serving(u)) for url in replica_urls(scaled)]
    assert roles[0] == roles[1], roles
    _feedback_counts_once(scaled)
    _drifted_update_retrains_on_the_cluster(scaled, tmp_path)


def _feedback_counts_once(stack: Stack) -> None:
    """Predictions by entity (Redis) through HAProxy; each feedback once, a duplicate refused."""
    from rollout.store import Store, sum_feedback

    for url in replica_urls(stack):
        # A replica's store opened at its start, before `features apply`: it opens again on
        # the next lookup (the first answers 422 with Feast's reason).
        wait_for(f"{url} looking up entities", lambda u=url: _looks_up(u), timeout=60)
    ids = []
    with httpx.Client(base_url=str(stack.rollout_url), timeout=30) as lb:
        for i in range(60):
            answer = lb.post("/predict", json={"entity": {"customer_id": 100001 + i % 200}})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["request_id"])
    for url in replica_urls(stack):  # HAProxy spread them over both replicas
        assert _pulls(url) > 0, f"{url} served no prediction"
    rng, acked = random.Random(0), {}
    replicas = [httpx.Client(base_url=u, timeout=30) for u in replica_urls(stack)]
    try:
        with httpx.Client(base_url=str(stack.rollout_url), timeout=30) as lb:
            for i, rid in enumerate(ids):
                reward = float(rng.random() < 0.3)
                first = lb.post("/feedback", json={"request_id": rid, "reward": reward})
                assert first.status_code == 200 and first.json()["status"] == "accepted"
                acked[rid] = reward
                again = replicas[i % 2].post("/feedback", json={"request_id": rid, "reward": 1.0})
                assert again.status_code == 200 and again.json()["status"] == "duplicate"
    finally:
        for client in replicas:
            client.close()
    store = Store(stack.env()["BANDITFLOW_STATE_URL"])
    try:
        rows = {rid: reward for rid, _arm, reward, _kind in store.feedback_rows()}
        assert {rid: rows.get(rid) for rid in acked} == acked  # each exactly once, first wins
        stats = store.read_stats()
        for arm, (count, total) in sum_feedback(store.feedback_rows()).items():
            assert stats[arm].outcomes == count and stats[arm].reward_sum == pytest.approx(total)
        assert sum(count for count, _ in sum_feedback(store.feedback_rows()).values()) == 60
    finally:
        store.dispose()


def _drifted_update_retrains_on_the_cluster(stack: Stack, tmp_path: Path) -> None:
    """A push of the drifted days' activity emits features.updated; its deployed check (Prefect
    on PostgreSQL) finds the drift and emits drift.detected, whose deployment runs the retrain
    study on the Dask workers and registers its candidates in the MLflow server."""
    import pandas as pd
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from contract import EVENT_DRIFT_DETECTED, TAG_STUDY, aliases_of, is_challenger_alias

    activity = pd.read_parquet(stack.home / "data" / "activity.parquet")
    drifted = activity[activity["event_timestamp"] >= pd.Timestamp(DRIFT_AT, tz="UTC")]
    drifted.drop(columns="created_timestamp").to_parquet(tmp_path / "drifted.parquet")
    trials_before = _trials_on_workers(stack)
    since = pd.Timestamp.now(tz="UTC")
    out = cli(stack, "features", "push", str(tmp_path / "drifted.parquet"), cwd=tmp_path)
    assert "emitted banditflow.features.updated" in out, out

    with (
        temporary_settings({PREFECT_API_URL: stack.prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        check = _wait_run(client, "retrain/retrain-on-feature-update", since, {}, 420)
        assert check.parameters["feature_view"].endswith("customer_activity")
        assert check.parameters["retrain_on_drift"] is False  # the drift event's consumer
        retrain = _wait_run(client, SIGNAL, since, {"model": "conversion"}, 600)
        assert retrain.parameters["reason"] == EVENT_DRIFT_DETECTED
        assert retrain.parameters["drifted_features"], retrain.parameters
    # Its study ran on the cluster's workers and registered through the MLflow server.
    assert _trials_on_workers(stack) >= trials_before + 4
    # Both URIs named: a test before this one in the same process may have set MLflow's
    # process-wide registry URI, which a client given only a tracking URI would read.
    env = stack.env()
    mlflow = MlflowClient(
        env["BANDITFLOW_MLFLOW_TRACKING_URI"], env["BANDITFLOW_MLFLOW_REGISTRY_URI"]
    )
    versions = mlflow.search_model_versions("name='conversion'")
    new = {v.version for v in versions if v.tags.get(TAG_STUDY, "").startswith("conversion--")}
    assert new, [(v.version, v.tags.get(TAG_STUDY)) for v in versions]
    challengers = {v for a, v in aliases_of(mlflow, "conversion").items() if is_challenger_alias(a)}
    assert new & challengers, (new, aliases_of(mlflow, "conversion"))


def _wait_run(
    client: Any, deployment: str, since: Any, params: dict[str, Any], timeout: float
) -> Any:
    """Wait for a run of ``deployment`` created after ``since`` to end; it must complete."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = client.read_deployment_by_name(deployment)
    flt = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))

    def finished() -> Any:
        runs = [
            r
            for r in client.read_flow_runs(deployment_filter=flt)
            if r.created and r.created >= since and r.state and r.state.is_final()
            if all(r.parameters.get(k) == v for k, v in params.items())
        ]
        return runs[0] if runs else None

    try:
        run = wait_for(f"a run of {deployment}", finished, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_runs_since(client, since)}") from None
    assert run.state.is_completed(), f"{run.name}: {run.state}\n{_runs_since(client, since)}"
    return run


def _runs_since(client: Any, since: Any) -> str:
    """Every flow run created since ``since``: its state, parameters and last log lines."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    lines = []
    for run in client.read_flow_runs():
        if not (run.created and run.created >= since):
            continue
        lines.append(f"== {run.name} {run.state} {run.parameters}")
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        lines += [f"   {log.message[:300]}" for log in logs[-25:]]
    return "\n".join(lines)


def _trials_on_workers(stack: Stack) -> int:
    """Count the trials the Dask workers ran (each logs one line per trial)."""
    run = stack.home / "run"
    return sum(
        (run / f"dask-worker-{i}.log").read_text().count("banditflow trial ") for i in (1, 2)
    )


def _pulls(url: str) -> float:
    """Return the decisions a replica served (its own Prometheus counter)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "rollout_arm_pulls"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _looks_up(url: str) -> bool:
    answer = httpx.post(f"{url}/predict", json={"entity": {"customer_id": 100001}}, timeout=30)
    return answer.status_code == 200
