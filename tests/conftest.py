"""Shared fixtures: a private data folder per test, a Prefect test API, a PostgreSQL database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

# One BLAS/OpenMP thread: on 2 cores the default oversubscribes and runs ~10x slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

POSTGRES_ADMIN_URL = os.environ.get(
    "BANDITFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _mlflow_uris_do_not_leak() -> Iterator[None]:
    """MLflow keeps its tracking and registry URIs process-wide (and copies them into
    ``MLFLOW_*_URI`` for subprocesses): a test that sets them must not point the next test's
    clients, or the servers it starts, at a store that was deleted with its folder."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env_before = {name: os.environ.get(name) for name in names}
    uris_before = _mlflow_uris()
    yield
    if "mlflow" in sys.modules:  # never import it for a test that did not
        import mlflow

        tracking, registry = uris_before
        mlflow.set_tracking_uri(tracking)  # None unsets it (and resets the trace exporter)
        mlflow.set_registry_uri(registry)
    for name, value in env_before.items():  # after: setting the URIs writes these variables
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _mlflow_uris() -> tuple[str | None, str | None]:
    """MLflow's process-wide URIs as set (None where unset), without importing MLflow."""
    if "mlflow" not in sys.modules:
        return None, None
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    return tracking._tracking_uri, registry._registry_uri


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder: ``BANDITFLOW_HOME`` points at it for the test."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("BANDITFLOW_HOME", str(folder))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


@pytest.fixture
def settings(home: Path):
    """Pipeline settings rooted in the test's data folder."""
    from tasks.settings import PipelineSettings

    return PipelineSettings(home=home).ensure_dirs()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test API for the whole session (it takes ~18 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


def _postgres_admin():
    psycopg = pytest.importorskip("psycopg", reason="pip install 'banditflow[postgres]'")
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"bf_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _postgres_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _pip_installed(source: Path, work: Path) -> Iterator[Path]:
    """Install the package at ``source`` into ``work/site`` and put that folder on sys.path.

    A real ``pip install`` (wheel built by setuptools, entry_points.txt written by pip), but
    into ``--target`` rather than the venv, from a copy so the source tree stays clean:
    nothing outlives the caller, and it works the same from a fresh clone.
    """
    copy, target = work / "src", work / "site"
    shutil.copytree(source, copy)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--disable-pip-version-check"]
        + ["--target", str(target), str(copy)],
        check=True,
        timeout=120,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))


@pytest.fixture(scope="session")
def pip_installed() -> Callable[[Path, Path], AbstractContextManager[Path]]:
    """Return ``pip_installed(source, work)``: a test package installed for a ``with`` block."""
    return _pip_installed


# `make test` runs the suite on two xdist workers, one test file per work unit
# (``--dist loadfile``: a module's stack fixture starts once). A worker holds two files at a
# time in the order collected, so the longest files go first, the two longest to different
# workers; otherwise the 7-minute demo could start last and run alone. Measured on this
# machine (the serial suite's durations, 2026-12-04): demo 444 s, scaled profile 242, README
# walk 137, warm runs 84, deployments 84, make up 71, triggers 52; everything else < 75.
LONGEST_FIRST = (
    "tests/integration/test_demo.py",
    "tests/integration/test_scaled.py",
    "tests/integration/test_readme.py",
    "tests/integration/test_deployments.py",
    "tests/integration/test_warm_runs.py",
    "tests/integration/test_make_up.py",
    "tests/integration/test_triggers.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, collect the longest files first (every worker sorts alike)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

    def first(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0], len(rank))

    items.sort(key=first)  # stable: the rest keep their order
