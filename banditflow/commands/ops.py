"""Run the whole stack locally: ``banditflow up`` / ``down`` / ``status`` (``make up`` ...).

``up`` starts, on 127.0.0.1, a Prefect server (SQLite under the data folder, PostgreSQL
when ``BANDITFLOW_PREFECT_DATABASE_URL`` is set), the work pool and its deployments, a
process worker, the MLflow UI on the store the flows write, and the rollout service.
Each process gets its own session (a plain ``cmd &`` worker ignores SIGTERM, STACK.md)
and is recorded with its pid, start time and port in ``<home>/run/stack.json``; ``down``
stops exactly those process trees and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from banditflow.cli import app

HOST = "127.0.0.1"
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "rollout": 8000}
# Stop order: consumers first, the Prefect server last (the worker reports to it).
STOP_ORDER = ("worker", "rollout", "mlflow", "prefect")


class StackError(RuntimeError):
    """A component of the local stack could not be started or stopped; says which and why."""


@dataclass
class Component:
    """A process ``up`` started: what it is, where it listens, how to recognise it later."""

    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid from ours
    cmd: list[str]
    log: str
    port: int | None = None
    url: str | None = None
    health: str | None = None


# --- processes -------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return [str(pid), "comm", *raw[raw.rindex(")") + 2 :].split()]


def start_ticks(pid: int) -> int | None:
    """Return a process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat(pid)
    return int(fields[21]) if fields else None


def is_alive(component: Component) -> bool:
    """Whether the recorded process still runs (and is the same process, not a new one)."""
    fields = _stat(component.pid)
    if fields is None or fields[2] == "Z":
        return False
    return int(fields[21]) == component.start_ticks


def descendants(pid: int) -> list[int]:
    """Return every live descendant of ``pid`` (children in their own sessions included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[3]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _running(pids: list[int]) -> list[int]:
    return [p for p in pids if (f := _stat(p)) is not None and f[2] != "Z"]


def stop_component(component: Component, timeout: float = 20.0) -> list[int]:
    """Stop a recorded process and all its descendants: SIGTERM, then SIGKILL after ``timeout``.

    Returns the pids that were still running when it was asked to stop.
    """
    if not is_alive(component):
        return []
    tree = [component.pid, *descendants(component.pid)]
    # The session/group first (what the process itself started shares it) ...
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(component.pid, signal.SIGTERM)
    _signal(tree, signal.SIGTERM)  # ... then children that made their own sessions
    deadline = time.monotonic() + timeout
    while _running(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = _running(tree) + _running(descendants(component.pid))
    _signal(leftover, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _running(leftover) and time.monotonic() < deadline:
        time.sleep(0.1)
    return tree


def spawn(name: str, cmd: list[str], *, env: dict[str, str], run_dir: Path, cwd: Path) -> Component:
    """Start ``cmd`` in its own session with output in ``<run_dir>/<name>.log``."""
    log_path = run_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{name} exited at once; see {log_path}")
    return Component(name, proc.pid, ticks, cmd, str(log_path))


# --- ports and health ------------------------------------------------------------------
def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def healthy(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def wait_healthy(component: Component, timeout: float) -> None:
    """Wait until the component answers its health URL; raise with its log's tail if not."""
    assert component.health is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(component):
            raise StackError(f"{component.name} exited while starting:\n{_tail(component.log)}")
        if healthy(component.health):
            return
        time.sleep(0.5)
    raise StackError(
        f"{component.name} did not answer {component.health} within {timeout:.0f} s:\n"
        f"{_tail(component.log)}"
    )


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- the record ------------------------------------------------------------------------
def run_dir(home: Path) -> Path:
    return home / "run"


def stack_file(home: Path) -> Path:
    return run_dir(home) / "stack.json"


def read_stack(home: Path) -> dict[str, Component]:
    path = stack_file(home)
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: Component(**fields) for name, fields in raw.get("components", {}).items()}


def write_stack(home: Path, components: dict[str, Component], extra: dict[str, Any]) -> None:
    path = stack_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"components": {n: asdict(c) for n, c in components.items()}, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)


# --- up / down / status ----------------------------------------------------------------
def _bin(name: str) -> str:
    """Return the venv's console script ``name`` (the one next to this Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def prefect_database_url(home: Path) -> str:
    """Return the Prefect server's database: PostgreSQL when its URL is set, else SQLite."""
    url = os.environ.get("BANDITFLOW_PREFECT_DATABASE_URL", "")
    if url:
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url
    return f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}"


def stack_env(home: Path, prefect_port: int) -> dict[str, str]:
    """Return the environment every process of the stack shares."""
    env = dict(os.environ)
    env.update(
        {
            "BANDITFLOW_HOME": str(home),
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": f"http://{HOST}:{prefect_port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_CLI_PROMPT": "false",
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


def deploy_all(project: Path, work_pool: str, *, env: dict[str, str], run_dir: Path) -> None:
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
        copy = run_dir / "prefect.yaml"
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd += ["--prefect-file", str(copy)]
    # The build step records the folder deploy runs in: the checkout, where flows/ is.
    _run_cli(cmd, env=env, cwd=project, what="prefect deploy --all")


def bring_up(
    *,
    home: Path,
    project: Path,
    ports: dict[str, int],
    work_pool: str,
    tracking_uri: str,
    artifact_root: str,
    with_rollout: bool = True,
    with_mlflow: bool = True,
    deploy: bool = True,
    worker_poll_seconds: float | None = None,
    echo: Any = print,
) -> dict[str, Component]:
    """Start the stack; on any failure stop what was started and raise ``StackError``."""
    recorded = read_stack(home)
    if any(is_alive(c) for c in recorded.values()):
        raise StackError(f"the stack already runs (see {stack_file(home)}): run `make down` first")
    wanted = {"prefect": True, "mlflow": with_mlflow, "rollout": with_rollout}
    for name, port in ports.items():
        if wanted.get(name, True) and port_in_use(port):
            raise StackError(f"port {port} for {name} is taken on {HOST}: free it or pick another")
    rdir = run_dir(home)
    rdir.mkdir(parents=True, exist_ok=True)
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    env = stack_env(home, ports["prefect"])
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database_url(home)
    if worker_poll_seconds is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(worker_poll_seconds)
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = str(max(worker_poll_seconds, 1.0))
    env["BANDITFLOW_WORK_POOL"] = work_pool
    env["BANDITFLOW_ROLLOUT_URL"] = f"http://{HOST}:{ports['rollout']}"
    components: dict[str, Component] = {}
    extra = {"work_pool": work_pool, "home": str(home), "project": str(project)}

    def started(component: Component) -> Component:
        components[component.name] = component
        write_stack(home, components, extra)  # recorded at once: `down` finds partial stacks
        return component

    remote_mlflow = tracking_uri.startswith(("http://", "https://"))
    with_mlflow = with_mlflow and not remote_mlflow  # a tracking server is its own UI
    try:
        if not remote_mlflow:
            # Create (migrate) the store once, here: the MLflow server and the rollout
            # service starting together on a fresh SQLite file race on its migrations.
            echo("preparing the MLflow store ...")
            init_mlflow_store(tracking_uri)
        p = ports["prefect"]
        server = started(
            spawn(
                "prefect",
                [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(p)],
                env=env,
                run_dir=rdir,
                cwd=project,
            )
        )
        server.port, server.url, server.health = (
            p,
            f"http://{HOST}:{p}",
            f"http://{HOST}:{p}/api/health",
        )
        if with_mlflow:
            m = ports["mlflow"]
            # Job execution off: 2 processes and 0.5 GB instead of 10 and 2.5 GB (STACK.md).
            mlflow_env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(m)]
            cmd += ["--backend-store-uri", tracking_uri, "--default-artifact-root", artifact_root]
            mlflow = started(spawn("mlflow", cmd, env=mlflow_env, run_dir=rdir, cwd=project))
            mlflow.port, mlflow.url = m, f"http://{HOST}:{m}"
            mlflow.health = f"{mlflow.url}/health"
        if with_rollout:
            r = ports["rollout"]
            rollout = started(
                spawn(
                    "rollout",
                    [_bin("banditflow"), "serve", "--host", HOST, "--port", str(r)],
                    env=env,
                    run_dir=rdir,
                    cwd=project,
                )
            )
            rollout.port, rollout.url = r, f"http://{HOST}:{r}"
            rollout.health = f"http://{HOST}:{r}/healthz"
        write_stack(home, components, extra)
        echo(f"waiting for the Prefect server on {server.url} (about 20 s on first start) ...")
        wait_healthy(server, timeout=180)
        _run_cli(
            [_bin("prefect"), "work-pool", "create", work_pool, "--type", "process", "--overwrite"],
            env=env,
            cwd=project,
            what="creating the work pool",
        )
        if deploy:
            echo("deploying prefect.yaml ...")
            deploy_all(project, work_pool, env=env, run_dir=rdir)
        started(
            spawn(
                "worker",
                [
                    _bin("prefect"),
                    "worker",
                    "start",
                    "--pool",
                    work_pool,
                    "--type",
                    "process",
                    "--name",
                    f"banditflow-{work_pool}",
                ],
                env=env,
                run_dir=rdir,
                cwd=project,
            )
        )
        if with_mlflow:
            echo("waiting for MLflow ...")
            mlflow = components["mlflow"]
            wait_healthy(mlflow, timeout=120)
            # Feast's MLflow plugin imports all of Feast (~10 s) on the server's first
            # request; pay it now rather than on the user's first click.
            healthy(f"{mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=60)
        if with_rollout:
            wait_healthy(components["rollout"], timeout=120)
        for name, component in components.items():
            if not is_alive(component):
                raise StackError(f"{name} exited after starting:\n{_tail(component.log)}")
    except BaseException:
        for name in STOP_ORDER:
            if name in components:
                stop_component(components[name])
        stack_file(home).unlink(missing_ok=True)
        raise
    return components


def bring_down(home: Path, echo: Any = print) -> list[int]:
    """Stop exactly the processes ``up`` recorded (and their descendants); return their pids."""
    components = read_stack(home)
    stopped: list[int] = []
    for name in STOP_ORDER:
        component = components.get(name)
        if component is None:
            continue
        pids = stop_component(component)
        echo(f"{name}: {'stopped pid ' + str(component.pid) if pids else 'was not running'}")
        stopped += pids
    stack_file(home).unlink(missing_ok=True)
    return stopped


def describe(home: Path) -> list[dict[str, Any]]:
    """Return one row per recorded component: running, healthy, pid, URL, log."""
    rows = []
    for name, component in read_stack(home).items():
        alive = is_alive(component)
        rows.append(
            {
                "name": name,
                "running": alive,
                "healthy": bool(alive and (component.health is None or healthy(component.health))),
                "pid": component.pid,
                "url": component.url or "",
                "log": component.log,
            }
        )
    return rows


# --- commands --------------------------------------------------------------------------
def _settings_home() -> tuple[Any, Path]:
    from tasks.settings import get_settings

    settings = get_settings().ensure_dirs()
    return settings, settings.home


def _port(option: int | None, name: str) -> int:
    env = os.environ.get(f"BANDITFLOW_{name.upper()}_PORT")
    port = option if option is not None else int(env) if env else DEFAULT_PORTS[name]
    return free_port() if port == 0 else port


@app.command()
def up(
    prefect_port: Annotated[
        int | None, typer.Option(help="Prefect server port (0: any free).")
    ] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow UI port (0: any free).")] = None,
    rollout_port: Annotated[
        int | None, typer.Option(help="Rollout service port (0: any free).")
    ] = None,
    rollout: Annotated[bool, typer.Option(help="Start the rollout service too.")] = True,
    deploy: Annotated[bool, typer.Option(help="Deploy prefect.yaml's deployments.")] = True,
    worker_poll_seconds: Annotated[
        float | None, typer.Option(help="How often the worker polls (Prefect's default: 10 s).")
    ] = None,
) -> None:
    """Start the Prefect server, work pool + worker, MLflow UI and rollout service on 127.0.0.1."""
    from tasks.settings import PROJECT_ROOT

    settings, home = _settings_home()
    ports = {
        "prefect": _port(prefect_port, "prefect"),
        "mlflow": _port(mlflow_port, "mlflow"),
        "rollout": _port(rollout_port, "rollout"),
    }
    try:
        components = bring_up(
            home=home,
            project=PROJECT_ROOT,
            ports=ports,
            work_pool=settings.work_pool,
            tracking_uri=settings.tracking_uri,
            artifact_root=settings.artifact_root,
            with_rollout=rollout,
            deploy=deploy,
            worker_poll_seconds=worker_poll_seconds,
            echo=typer.echo,
        )
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"\nup (pids and ports in {stack_file(home)}):")
    _print_urls(components)
    typer.echo("stop it with `make down`; see it with `make status`.")


def _print_urls(components: dict[str, Component]) -> None:
    if "prefect" in components:
        typer.echo(f"  Prefect UI         {components['prefect'].url}")
    if "mlflow" in components:
        typer.echo(f"  MLflow UI          {components['mlflow'].url}")
    if "rollout" in components:
        typer.echo(f"  rollout dashboard  {components['rollout'].url}/dashboard")


@app.command()
def down() -> None:
    """Stop exactly the processes `banditflow up` started (recorded in the data folder)."""
    _, home = _settings_home()
    if not stack_file(home).exists():
        typer.echo(f"nothing recorded in {stack_file(home)}: nothing to stop")
        return
    bring_down(home, echo=typer.echo)


@app.command()
def status() -> None:
    """Say what `banditflow up` started, whether it runs, and where."""
    _, home = _settings_home()
    rows = describe(home)
    if not rows:
        typer.echo("not running (`make up` starts the stack)")
        return
    for row in rows:
        state = "healthy" if row["healthy"] else "running" if row["running"] else "STOPPED"
        typer.echo(f"{row['name']:<8} {state:<8} pid {row['pid']:<7} {row['url']:<28} {row['log']}")
    if not all(r["running"] for r in rows):
        raise typer.Exit(code=1)
