"""The scaled profile: every part of the stack on a real server, on 127.0.0.1.

``start_stack(settings, profile="scaled")`` starts, besides the local profile's Prefect
worker and deployments:

- the Prefect server on PostgreSQL and the MLflow tracking server on PostgreSQL with its
  artifacts served over HTTP (``--serve-artifacts``: clients never touch its folder);
- a Dask scheduler and two Dask workers, each its own process in its own working folder
  and data folder (nothing of the stack's data folder is shared with them: a study's
  data and any installed model family travel to them, see ``tasks/dask_study.py``);
- the Feast online store on Redis (``run/feast_repo/feature_store.yaml``, written here;
  the repo's ``feature_repo/feature_store.yaml`` stays the SQLite default);
- two rollout replicas on one PostgreSQL state store behind HAProxy (Debian's ``haproxy``).

The databases are named after the data folder (``bf_<hash>_prefect`` ...), so ``up`` after
``down`` finds the same state and two data folders never share one. Servers: PostgreSQL at
``BANDITFLOW_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth), Redis at ``BANDITFLOW_REDIS_URL`` (default ``127.0.0.1:6379``; the database
number is taken from the same hash unless ``BANDITFLOW_REDIS_DB`` is set).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from banditflow.supervisor import HOST, StackError, run_dir, spawn, wait_healthy, write_stack

if TYPE_CHECKING:
    from banditflow.stack import _Launch

SCALED_PARTS = ("prefect", "mlflow", "dask-scheduler", "rollout")
REPLICAS = 2
DASK_WORKERS = 2
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "127.0.0.1:6379"
DATABASES = ("prefect", "mlflow", "rollout")


def prefect_database_url(home: Path) -> str:
    """Return the Prefect server's database: PostgreSQL when its URL is set, else SQLite."""
    url = os.environ.get("BANDITFLOW_PREFECT_DATABASE_URL", "")
    if url:
        return asyncpg_url(url)
    return f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}"


def asyncpg_url(url: str) -> str:
    """Return a PostgreSQL URL with the asyncpg driver (the one Prefect's server uses)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


# --- the servers it needs --------------------------------------------------------------
def stack_key(home: Path) -> str:
    """Return the data folder's short hash: its databases and Redis number derive from it."""
    return hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:10]


def postgres_admin_url() -> str:
    return os.environ.get("BANDITFLOW_POSTGRES_URL") or DEFAULT_POSTGRES


def database_urls(home: Path) -> dict[str, str]:
    """Return the psycopg URL of each of the stack's databases (prefect, mlflow, rollout)."""
    base = postgres_admin_url().rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return {part: f"{base}/bf_{stack_key(home)}_{part}" for part in DATABASES}


def create_databases(home: Path) -> dict[str, str]:
    """Create the stack's databases that do not exist yet; return their URLs."""
    import psycopg

    urls = database_urls(home)
    try:
        with psycopg.connect(postgres_admin_url(), autocommit=True, connect_timeout=5) as conn:
            for url in urls.values():
                name = url.rsplit("/", 1)[1]
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if exists.fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise StackError(
            f"the scaled profile needs PostgreSQL at {postgres_admin_url()} ({exc}): start it "
            "(Debian: pg_ctlcluster 15 main start) or set BANDITFLOW_POSTGRES_URL"
        ) from exc
    return urls


def drop_databases(home: Path) -> list[str]:
    """Drop the stack's databases (its Prefect, MLflow and rollout state); return their names."""
    import psycopg

    names = [url.rsplit("/", 1)[1] for url in database_urls(home).values()]
    with psycopg.connect(postgres_admin_url(), autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return names


def redis_address(home: Path) -> tuple[str, int]:
    """Return Redis's host:port and the database number this data folder uses."""
    given = os.environ.get("BANDITFLOW_REDIS_DB")
    db = int(given) if given else 1 + int(stack_key(home), 16) % 15
    return os.environ.get("BANDITFLOW_REDIS_URL") or DEFAULT_REDIS, db


def check_redis(address: str, db: int) -> None:
    import redis

    host, _, port = address.partition(":")
    try:
        redis.Redis(host=host, port=int(port or 6379), db=db, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise StackError(
            f"the scaled profile needs Redis at {address} ({exc}): start it "
            "(Debian: apt-get install redis-server) or set BANDITFLOW_REDIS_URL"
        ) from exc


def write_feature_store_yaml(home: Path, address: str, db: int) -> Path:
    """Write the run's feature_store.yaml (Redis online store, registry under ``home``)."""
    import yaml

    folder = run_dir(home) / "feast_repo"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "project": "banditflow",
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(home / "feast" / "registry.db")},
        "online_store": {"type": "redis", "connection_string": f"{address},db={db}"},
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    path = folder / "feature_store.yaml"
    path.write_text("# Written by `banditflow up --profile scaled`.\n" + yaml.safe_dump(config))
    return path


def scaled_env(home: Path, ports: dict[str, int], dbs: dict[str, str]) -> dict[str, str]:
    """Return the settings every process of the scaled stack (and every client) reads."""
    address, db = redis_address(home)
    feast_yaml = write_feature_store_yaml(home, address, db)
    mlflow = f"http://{HOST}:{ports['mlflow']}"
    return {
        "BANDITFLOW_MLFLOW_TRACKING_URI": mlflow,
        "BANDITFLOW_MLFLOW_REGISTRY_URI": mlflow,
        "BANDITFLOW_MLFLOW_UI_URL": mlflow,
        "BANDITFLOW_TASK_RUNNER": "dask",
        "BANDITFLOW_DASK_ADDRESS": f"tcp://{HOST}:{ports['dask-scheduler']}",
        "BANDITFLOW_FEATURE_STORE_YAML": str(feast_yaml),
        "BANDITFLOW_FEAST_REPO": str(feast_yaml.parent),
        "BANDITFLOW_STATE_URL": dbs["rollout"],
        "BANDITFLOW_ROLLOUT_URL": f"http://{HOST}:{ports['rollout']}",
    }


def haproxy_bin() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if Path(p).exists()), None
    )
    if found is None:
        raise StackError(
            "the scaled profile puts HAProxy in front of the rollout replicas: install it "
            "(Debian/Ubuntu: apt-get install haproxy)"
        )
    return found


def haproxy_config(port: int, replicas: list[int]) -> str:
    """Return HAProxy's configuration: round robin over the replicas, checked on /healthz."""
    servers = "\n".join(
        f"  server replica-{i} {HOST}:{p} check inter 1s fall 2 rise 1"
        for i, p in enumerate(replicas, 1)
    )
    return (
        "global\n  maxconn 2048\n"
        "defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n"
        "  timeout client 60s\n  timeout server 60s\n  retries 2\n  option redispatch\n"
        f"frontend rollout\n  bind {HOST}:{port}\n  default_backend replicas\n"
        "backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n"
        f"{servers}\n"
    )


# --- starting --------------------------------------------------------------------------
def scaled_ports(given: dict[str, int] | None) -> dict[str, int]:
    """Return a port for every listener of the scaled stack (given, or any free one)."""
    from banditflow.stack import _resolve_ports

    names = [*SCALED_PARTS, "dask-scheduler-http"]
    names += [f"rollout-{i}" for i in range(1, REPLICAS + 1)]
    names += [f"dask-worker-{i}" for i in range(1, DASK_WORKERS + 1)]
    return _resolve_ports(given, names)


def _start_dask(launch: _Launch, ports: dict[str, int]) -> None:
    """Start the scheduler and the workers, each in its own folder with its own data folder."""
    from tasks.dask_study import WORKER_ARGS, worker_env

    rdir = run_dir(launch.home)
    sched, http = ports["dask-scheduler"], ports["dask-scheduler-http"]
    folder = rdir / "dask-scheduler"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [_bin("dask"), "scheduler", "--host", HOST, "--port", str(sched)]
    cmd += ["--dashboard-address", f"{HOST}:{http}"]
    _spawn_in(launch, "dask-scheduler", cmd, folder, sched, f"http://{HOST}:{http}/health")
    for i in range(1, DASK_WORKERS + 1):
        name = f"dask-worker-{i}"
        folder = rdir / name
        (folder / "home").mkdir(parents=True, exist_ok=True)
        cmd = [_bin("dask"), "worker", f"tcp://{HOST}:{sched}", "--name", name]
        # One thread, the trials' imports preloaded, Dask's profiler off (tasks/dask_study.py).
        cmd += [*WORKER_ARGS, "--local-directory", str(folder)]
        cmd += ["--dashboard-address", f"{HOST}:{ports[name]}"]
        # Its own data folder: a trial that read the stack's files would fail here.
        own = worker_env(launch.env) | {
            "BANDITFLOW_HOME": str(folder / "home"),
            "PREFECT_HOME": str(folder / "prefect"),
        }
        _spawn_in(launch, name, cmd, folder, None, f"http://{HOST}:{ports[name]}/health", own)


def _spawn_in(
    launch: _Launch,
    name: str,
    cmd: list[str],
    cwd: Path,
    port: int | None,
    health: str,
    env: dict[str, str] | None = None,
) -> None:
    component = spawn(
        name, cmd, env=launch.env | (env or {}), run_dir=run_dir(launch.home), cwd=cwd
    )
    component.port, component.health = port, health
    component.url = f"tcp://{HOST}:{port}" if port else None
    launch.components[name] = component
    write_stack(launch.home, launch.components, launch.record)


def _start_serving(launch: _Launch, ports: dict[str, int], dbs: dict[str, str]) -> None:
    """Start MLflow on PostgreSQL (artifacts over HTTP), the replicas and their balancer."""
    m = ports["mlflow"]
    cmd = [_bin("mlflow"), "server", "--host", HOST, "--port", str(m)]
    cmd += ["--backend-store-uri", dbs["mlflow"], "--serve-artifacts"]
    cmd += ["--artifacts-destination", str(launch.home / "mlartifacts")]
    launch.start("mlflow", cmd, m, f"http://{HOST}:{m}/health")
    replicas = [ports[f"rollout-{i}"] for i in range(1, REPLICAS + 1)]
    for i, port in enumerate(replicas, 1):
        cmd = [_bin("banditflow"), "serve", "--host", HOST, "--port", str(port)]
        launch.start(f"rollout-{i}", cmd, port, f"http://{HOST}:{port}/healthz")
    config = run_dir(launch.home) / "haproxy.cfg"
    config.write_text(haproxy_config(ports["rollout"], replicas))
    r = ports["rollout"]
    launch.start(
        "rollout", [haproxy_bin(), "-db", "-f", str(config)], r, f"http://{HOST}:{r}/healthz"
    )


def _wait_scaled(launch: _Launch, dask_address: str) -> None:
    """Wait for every server, then for both Dask workers to join the scheduler."""
    from banditflow.stack import _wait_servers

    for i in range(1, REPLICAS + 1):
        wait_healthy(launch.components[f"rollout-{i}"], timeout=180)
    for name in ("dask-scheduler", *(f"dask-worker-{i}" for i in range(1, DASK_WORKERS + 1))):
        wait_healthy(launch.components[name], timeout=120)
    _wait_servers(launch)  # MLflow (and Feast's plugin in it), the balancer
    from distributed import Client

    with Client(dask_address, timeout=60) as client:
        client.wait_for_workers(DASK_WORKERS, timeout=120)


def _bin(name: str) -> str:
    from banditflow.stack import _bin as venv_bin

    return venv_bin(name)


def start_scaled(settings: Any, launch: _Launch, ports: dict[str, int], deploy: bool) -> None:
    """Start the scaled profile's processes into ``launch`` (``start_stack`` calls this)."""
    from banditflow.stack import _prepare_prefect

    home = launch.home
    dbs = create_databases(home)
    check_redis(*redis_address(home))
    haproxy_bin()  # before anything starts: say what to install
    client_env = scaled_env(home, ports, dbs)
    launch.env |= client_env
    launch.env["PREFECT_API_DATABASE_CONNECTION_URL"] = asyncpg_url(dbs["prefect"])
    launch.record |= {
        "client_env": client_env,
        "mlflow_uri": client_env["BANDITFLOW_MLFLOW_TRACKING_URI"],
    }
    launch.record["databases"] = {part: url.rsplit("/", 1)[1] for part, url in dbs.items()}
    p = ports["prefect"]
    cmd = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(p)]
    server = launch.start("prefect", cmd, p, f"http://{HOST}:{p}/api/health")
    _start_serving(launch, ports, dbs)
    _start_dask(launch, ports)
    launch.echo(f"waiting for the Prefect server on PostgreSQL at {server.url} ...")
    wait_healthy(server, timeout=180)
    _prepare_prefect(launch, settings.work_pool, deploy)
    launch.echo("waiting for MLflow, the replicas, the balancer and the Dask workers ...")
    _wait_scaled(launch, client_env["BANDITFLOW_DASK_ADDRESS"])
