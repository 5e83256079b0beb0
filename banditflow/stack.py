"""The local stack as a Python API: ``with start_stack(settings) as stack: ...``.

``start_stack`` starts, on 127.0.0.1, a Prefect server (SQLite under the data folder,
PostgreSQL when ``BANDITFLOW_PREFECT_DATABASE_URL`` is set), the work pool, the
deployments of ``prefect.yaml`` and a process worker, the MLflow UI on the store the flows
write, and the rollout service with automatic decisions and a generated admin token. The
record (``<home>/run/stack.json``, the token in ``<home>/run/admin_token``) lets
``banditflow status/down`` and every other command find the running stack
(``attach(home)``). ``banditflow up`` and the demo both start it through this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from banditflow.stack_scaled import prefect_database_url
from banditflow.supervisor import (
    HOST,
    STOP_ORDER,
    Component,
    StackError,
    free_port,
    healthy,
    is_alive,
    port_in_use,
    read_record,
    run_dir,
    spawn,
    stack_file,
    stop_component,
    stop_recorded,
    token_file,
    wait_healthy,
    write_stack,
    write_token,
)
from banditflow.warm import pool_args  # warm flow runs: a fork server behind the pool

__all__ = ["Stack", "StackError", "attach", "start_stack", "stack_env"]

PROFILES = ("local", "scaled")  # scaled: banditflow/stack_scaled.py
Echo = Callable[[str], Any]


@dataclass
class Stack:
    """A running local stack: where each part answers, and how to stop it."""

    home: Path
    work_pool: str
    prefect_api_url: str
    mlflow_uri: str  # the tracking/registry URI the flows and the service use
    admin_token: str
    rollout_url: str | None = None
    mlflow_ui_url: str | None = None
    profile: str = "local"
    components: dict[str, Component] = field(default_factory=dict)
    client_env: dict[str, str] = field(default_factory=dict)  # the profile's settings

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_api_url.removesuffix("/api")

    def env(self) -> dict[str, str]:
        """Return the variables a client process needs to use this stack (CLI, flows, demo)."""
        out = {
            "BANDITFLOW_HOME": str(self.home),
            "PREFECT_HOME": str(prefect_home(self.home)),
            "PREFECT_API_URL": self.prefect_api_url,
            "BANDITFLOW_WORK_POOL": self.work_pool,
            "BANDITFLOW_ROLLOUT_ADMIN_TOKEN": self.admin_token,
        }
        if self.rollout_url:
            out["BANDITFLOW_ROLLOUT_URL"] = self.rollout_url
        return out | self.client_env

    def running(self) -> dict[str, bool]:
        """Return whether each recorded process still runs."""
        return {name: is_alive(c) for name, c in self.components.items()}

    def stop(self) -> list[int]:
        """Stop exactly the processes this stack started; return their pids."""
        return stop_recorded(self.home, echo=lambda _line: None)

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- where things live -----------------------------------------------------------------
def prefect_home(home: Path) -> Path:
    """Return Prefect's home (its profiles, ephemeral database, logs) under the data folder."""
    return home / "prefect"


def _bin(name: str) -> str:
    """Return the venv's console script ``name`` (the one next to this Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def stack_env(home: Path, prefect_port: int) -> dict[str, str]:
    """Return the environment every process of the stack shares."""
    env = dict(os.environ)
    # The stack's processes log to run/<name>.log, not to the CLI's library log.
    if env.get("PREFECT_LOGGING_SETTINGS_PATH") == str(prefect_home(home) / "logging.yml"):
        del env["PREFECT_LOGGING_SETTINGS_PATH"]
    api = f"http://{HOST}:{prefect_port}/api"
    env.update(
        {
            "BANDITFLOW_HOME": str(home),
            "PREFECT_HOME": str(prefect_home(home)),
            "PREFECT_API_URL": api,
            "BANDITFLOW_PREFECT_API_URL": api,  # where the rollout service posts its events
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_CLI_PROMPT": "false",
            # Events are readable half a second after they arrive (default 5 s): the
            # day's lock-step wait reads them to know which trigger still owes a run.
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": env.get(
                "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5"
            ),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS", "1"),
            "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", "1"),
        }
    )
    return env


def _run_cli(cmd: list[str], *, env: dict[str, str], cwd: Path, what: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise StackError(
            f"{what} failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return done.stdout


def init_mlflow_store(tracking_uri: str) -> None:
    """Create the MLflow tracking/registry tables of a database store if they are missing."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri, tracking_uri).search_experiments(max_results=1)


def deploy_all(project: Path, work_pool: str, *, env: dict[str, str], rdir: Path) -> None:
    """Run ``prefect deploy --all`` for the project's prefect.yaml, on ``work_pool``.

    Prefect checks the pool before any build step runs, and ignores ``--pool`` when it
    deploys several deployments, so another pool than the file's is set in a copy.
    """
    import yaml

    source = project / "prefect.yaml"
    config = yaml.safe_load(source.read_text())
    cmd = [_bin("prefect"), "--no-prompt", "deploy", "--all"]
    if any(d.get("work_pool", {}).get("name") != work_pool for d in config["deployments"]):
        for deployment in config["deployments"]:
            deployment["work_pool"] = {**deployment.get("work_pool", {}), "name": work_pool}
        copy = rdir / "prefect.yaml"
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd += ["--prefect-file", str(copy)]
    # The build step records the folder deploy runs in: the checkout, where flows/ is.
    _run_cli(cmd, env=env, cwd=project, what="prefect deploy --all")


# --- starting --------------------------------------------------------------------------
@dataclass
class _Launch:
    """What one ``start_stack`` call is starting, and what it has started so far."""

    home: Path
    project: Path
    env: dict[str, str]
    echo: Echo
    record: dict[str, Any]
    components: dict[str, Component] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], port: int | None, health: str | None) -> Component:
        env = self.env | (
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} if name == "mlflow" else {}
        )
        component = spawn(name, cmd, env=env, run_dir=run_dir(self.home), cwd=self.project)
        component.port = port
        component.url = f"http://{HOST}:{port}" if port else None
        component.health = health
        self.components[name] = component
        write_stack(self.home, self.components, self.record)  # `down` finds partial stacks
        return component

    def stop_all(self) -> None:
        for name in (*STOP_ORDER, *(n for n in self.components if n not in STOP_ORDER)):
            if name in self.components:
                stop_component(self.components[name])
        stack_file(self.home).unlink(missing_ok=True)


def _check_free(home: Path, ports: Mapping[str, int]) -> None:
    components, _ = read_record(home)
    if any(is_alive(c) for c in components.values()):
        raise StackError(f"the stack already runs (see {stack_file(home)}): run `make down` first")
    for name, port in ports.items():
        if port_in_use(port):
            raise StackError(f"port {port} for {name} is taken on {HOST}: free it or pick another")


def _resolve_ports(ports: Mapping[str, int] | None, wanted: list[str]) -> dict[str, int]:
    given = dict(ports or {})
    return {name: given.get(name) or free_port() for name in wanted}


def _serve_cmds(
    launch: _Launch, ports: dict[str, int], tracking_uri: str, artifact_root: str
) -> None:
    """Start the servers that need not wait for Prefect: MLflow's UI and the rollout service."""
    if "mlflow" in ports:
        m = ports["mlflow"]
        cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(m)]
        cmd += ["--backend-store-uri", tracking_uri, "--default-artifact-root", artifact_root]
        launch.start("mlflow", cmd, m, f"http://{HOST}:{m}/health")
    if "rollout" in ports:
        r = ports["rollout"]
        cmd = [_bin("banditflow"), "serve", "--host", HOST, "--port", str(r)]
        launch.start("rollout", cmd, r, f"http://{HOST}:{r}/healthz")


def _prepare_prefect(launch: _Launch, work_pool: str, deploy: bool) -> None:
    """Create the work pool, deploy prefect.yaml and the automations, start the worker."""
    env, cwd = launch.env, launch.project
    create = [_bin("prefect"), "work-pool", "create", work_pool, "--type", "process", "--overwrite"]
    create += pool_args(launch.home, launch.start)
    _run_cli(create, env=env, cwd=cwd, what="creating the work pool")
    if deploy:
        launch.echo("deploying prefect.yaml ...")
        deploy_all(cwd, work_pool, env=env, rdir=run_dir(launch.home))
        rollout = launch.components.get("rollout")
        if rollout is not None and rollout.url:
            from banditflow.triggers import create_reload_automation

            token = env["BANDITFLOW_ROLLOUT_ADMIN_TOKEN"]
            create_reload_automation(env["PREFECT_API_URL"], rollout.url, token)
    worker = [_bin("prefect"), "worker", "start", "--pool", work_pool, "--type", "process"]
    launch.start("worker", [*worker, "--name", f"banditflow-{work_pool}"], None, None)


def _wait_servers(launch: _Launch) -> None:
    if "mlflow" in launch.components:
        launch.echo("waiting for MLflow ...")
        mlflow = launch.components["mlflow"]
        wait_healthy(mlflow, timeout=120)
        # Feast's MLflow plugin imports all of Feast (~10 s) on the server's first
        # request; pay it now rather than on the user's first click.
        healthy(f"{mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=60)
    if "rollout" in launch.components:
        wait_healthy(launch.components["rollout"], timeout=120)
    for name, component in launch.components.items():
        if not is_alive(component):
            raise StackError(f"{name} exited after starting; see {component.log}")


def start_stack(
    settings: Any,
    *,
    profile: str = "local",
    admin_token: str | None = None,
    auto_decisions: bool = True,
    ports: Mapping[str, int] | None = None,
    with_rollout: bool = True,
    with_mlflow: bool = True,
    deploy: bool = True,
    worker_poll_seconds: float | None = None,
    env: Mapping[str, str] | None = None,
    project: Path | None = None,
    echo: Echo | None = None,
) -> Stack:
    """Start the stack for ``settings`` (a ``PipelineSettings``); stop all of it on failure.

    ``ports`` maps "prefect", "mlflow", "rollout" to ports (missing or 0: any free one);
    ``env`` adds variables for every process (``BANDITFLOW_MODEL_NAME``, a policy ...).
    """
    from tasks.settings import PROJECT_ROOT

    if profile not in PROFILES:
        raise StackError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    home, say = Path(settings.home), echo or (lambda _line: None)
    remote_mlflow = settings.tracking_uri.startswith(("http://", "https://"))
    wanted = ["prefect", *(["mlflow"] if with_mlflow and not remote_mlflow else [])]
    port_of = _resolve_ports(ports, [*wanted, *(["rollout"] if with_rollout else [])])
    if profile == "scaled":
        from banditflow.stack_scaled import scaled_ports, start_scaled

        port_of = scaled_ports(dict(ports or {}))
    _check_free(home, port_of)
    prefect_home(home).mkdir(parents=True, exist_ok=True)
    token = write_token(home, admin_token)
    shared = stack_env(home, port_of["prefect"]) | dict(env or {})
    shared |= _stack_settings(settings, port_of, token, auto_decisions, worker_poll_seconds)
    record = {"work_pool": settings.work_pool, "home": str(home), "profile": profile}
    record |= {"prefect_api_url": shared["PREFECT_API_URL"], "mlflow_uri": settings.tracking_uri}
    launch = _Launch(home, project or PROJECT_ROOT, shared, say, record)
    try:
        if profile == "scaled":
            start_scaled(settings, launch, port_of, deploy)
        else:
            _start_local(settings, launch, port_of, deploy, init_store=not remote_mlflow)
    except BaseException:
        launch.stop_all()
        raise
    return _stack_of(home, launch.components, record, token)


def _start_local(
    settings: Any, launch: _Launch, port_of: dict[str, int], deploy: bool, init_store: bool
) -> None:
    """Start the local profile: Prefect on SQLite (or its URL), MLflow's UI, one service."""
    if init_store:
        # Create (migrate) the store once, here: the MLflow server and the rollout
        # service starting together on a fresh SQLite file race on its migrations.
        launch.echo("preparing the MLflow store ...")
        init_mlflow_store(settings.tracking_uri)
    p = port_of["prefect"]
    launch.env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database_url(launch.home)
    cmd = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(p)]
    server = launch.start("prefect", cmd, p, f"http://{HOST}:{p}/api/health")
    _serve_cmds(launch, port_of, settings.tracking_uri, settings.artifact_root)
    launch.echo(f"waiting for the Prefect server on {server.url} (about 20 s on first start) ...")
    wait_healthy(server, timeout=180)
    _prepare_prefect(launch, settings.work_pool, deploy)
    _wait_servers(launch)


def _stack_settings(
    settings: Any,
    ports: dict[str, int],
    token: str,
    auto_decisions: bool,
    poll: float | None,
) -> dict[str, str]:
    out = {
        "BANDITFLOW_WORK_POOL": settings.work_pool,
        "BANDITFLOW_ROLLOUT_ADMIN_TOKEN": token,
        "BANDITFLOW_AUTO_DECISIONS": "true" if auto_decisions else "false",
        "BANDITFLOW_MLFLOW_TRACKING_URI": settings.tracking_uri,
    }
    if "rollout" in ports:
        out["BANDITFLOW_ROLLOUT_URL"] = f"http://{HOST}:{ports['rollout']}"
    if poll is not None:
        out["PREFECT_WORKER_QUERY_SECONDS"] = str(poll)
        out["PREFECT_WORKER_PREFETCH_SECONDS"] = str(max(poll, 1.0))
    return out


def _stack_of(
    home: Path, components: dict[str, Component], record: dict[str, Any], token: str
) -> Stack:
    rollout, mlflow = components.get("rollout"), components.get("mlflow")
    return Stack(
        home=home,
        work_pool=str(record.get("work_pool", "")),
        prefect_api_url=str(record.get("prefect_api_url", "")),
        mlflow_uri=str(record.get("mlflow_uri", "")),
        admin_token=token,
        rollout_url=rollout.url if rollout else None,
        mlflow_ui_url=mlflow.url if mlflow else None,
        profile=str(record.get("profile", "local")),
        components=components,
        client_env=dict(record.get("client_env") or {}),
    )


def attach(home: Path) -> Stack | None:
    """Return the stack recorded under ``home`` if its Prefect server still runs, else None."""
    try:
        components, record = read_record(home)
    except StackError:
        return None
    server = components.get("prefect")
    if server is None or not is_alive(server) or not record.get("prefect_api_url"):
        return None
    try:
        token = token_file(home).read_text().strip()
    except OSError:
        token = ""
    return _stack_of(home, components, record, token)
