"""A trial worker started as the scaled profile starts one: imports preloaded, profiler off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

distributed = pytest.importorskip("distributed", reason="pip install 'banditflow[dask]'")

from tasks.dask_study import WORKER_ARGS, WORKER_ENV, worker_env  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_facts() -> dict[str, object]:
    import dask

    return {
        "preloaded": all(
            m in sys.modules for m in ("sklearn.model_selection", "sklearn.metrics", "tasks.models")
        ),
        "profiler": dask.config.get("distributed.worker.profile.enabled"),
    }


# This test module is not importable on the worker: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_worker_env_keeps_what_the_user_set() -> None:
    assert worker_env({}) == WORKER_ENV
    mine = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "True", "X": "1"}
    assert worker_env(mine) == mine


@pytest.mark.integration
def test_a_worker_started_like_the_profiles_has_the_trial_imports_and_no_profiler(
    tmp_path: Path,
) -> None:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = worker_env(os.environ)
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    folder = tmp_path / "worker"
    folder.mkdir()
    procs.append(
        subprocess.Popen(
            [dask, "worker", address, *WORKER_ARGS, "--no-dashboard"]
            + ["--local-directory", str(folder)],
            cwd=folder,  # not the project: the preload must come from the installed package
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            facts = list(client.run(_worker_facts).values())
        assert facts == [{"preloaded": True, "profiler": False}]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
