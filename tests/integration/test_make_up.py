"""`make up` / `make status` / `make down`: the whole local stack starts, reports, and is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from banditflow.supervisor import read_stack, stack_file
from tasks.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Return (pid, command line) of every process whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z":
            found.append((int(entry.name), cmd.strip()))
    return found


def make(target: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    # `-o install`: the venv is there; never let a test reinstall the project.
    return subprocess.run(
        ["make", "-o", "install", target, "UP_ARGS=--no-deploy"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_make_up_status_down_leaves_no_process_behind(tmp_path: Path) -> None:
    home = tmp_path / "stack-home"
    env = dict(os.environ)
    env.update(
        {
            "BANDITFLOW_HOME": str(home),
            "BANDITFLOW_PREFECT_PORT": "0",  # 0: any free port
            "BANDITFLOW_MLFLOW_PORT": "0",
            "BANDITFLOW_ROLLOUT_PORT": "0",
            "BANDITFLOW_WORK_POOL": "bf-make-up",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
    )
    env.pop("PREFECT_API_URL", None)
    try:
        up = make("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Prefect UI" in up.stdout and "rollout dashboard" in up.stdout, up.stdout
        # Decisions on by default, the served model named, an admin token kept for the CLI.
        assert "model 'conversion'" in up.stdout, up.stdout
        assert "automatic decisions on" in up.stdout, up.stdout
        token = home / "run" / "admin_token"
        assert token.stat().st_mode & 0o077 == 0 and len(token.read_text()) >= 32
        recorded = read_stack(home)
        # "warm": the fork server that starts the worker's flow runs pre-imported (on by default).
        assert set(recorded) == {"prefect", "mlflow", "rollout", "worker", "warm"}
        assert processes_with(str(home)), "nothing runs with the stack's data folder"

        status = make("status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        for name, component in recorded.items():
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith(name))
            assert "healthy" in line and str(component.pid) in line, status.stdout
            if component.url:
                assert component.url in line

        # Ingestion finds the running stack's Prefect server by itself (no PREFECT_API_URL).
        cli = [str(Path(sys.executable).parent / "banditflow")]
        small = ["generate", "--rows", "2000", "--customers", "150", "--days", "15"]
        for args in (small, ["features", "apply"], ["features", "materialize"]):
            done = subprocess.run(cli + args, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
        api = f"{recorded['prefect'].url}/api"
        assert "emitted banditflow.features.updated" in done.stdout, done.stdout
        assert api in done.stdout, done.stdout
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
    finally:
        down = make("down", env, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not stack_file(home).exists()
    assert processes_with(str(home)) == []
    after = make("status", env)
    assert after.returncode == 0 and "not running" in after.stdout


def test_make_up_refuses_an_unknown_profile_before_starting_anything(tmp_path: Path) -> None:
    home = tmp_path / "stack-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"BANDITFLOW_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    done = subprocess.run(
        ["make", "-o", "install", "up", "PROFILE=huge"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "unknown profile 'huge'; known: local, scaled" in done.stderr, done.stderr
    assert not stack_file(home).exists() and processes_with(str(home)) == []
