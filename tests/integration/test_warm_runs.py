"""Warm flow runs through a real Prefect server, a stock process work pool and worker.

The stack (``banditflow.stack.start_stack``, without MLflow's UI and the rollout service)
creates the work pool with the warm launcher as its command and starts the fork server
(``banditflow/warm.py``). Test flows deployed from a temporary folder record their own
pid and parent; the assertions read the outcome from Prefect's records: a run that
succeeds was forked by the warm server; a run that exits with code 3 is Crashed with that
code; a cancelled run ends Cancelled and its process is gone; a killed launcher takes its
child with it; with the server down, the launcher runs the stock command.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from banditflow.stack import Stack, start_stack
from banditflow.supervisor import is_alive, stop_component
from banditflow.warm import socket_path
from tasks.settings import PipelineSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "warm-test"
FLOWS = """
import json, os, sys, time
from pathlib import Path
from prefect import flow


def _record(out):
    Path(out).write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid(),
                                     "run": os.environ.get("PREFECT__FLOW_RUN_ID")}))


@flow
def probe(out: str, code: int = 0) -> str:
    _record(out)
    print("probe says hello")
    if code:
        sys.stdout.flush()
        os._exit(code)
    return "ok"


@flow
def fails(out: str) -> None:
    _record(out)
    raise ValueError("the flow failed on purpose")


@flow
def waits(out: str, release: str) -> None:
    _record(out)
    while not Path(release).exists():  # the test never creates it: it cancels or kills
        time.sleep(0.2)
"""


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def warm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Any, Path]]:
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = tmp_path_factory.mktemp("warm")
    (base / "src").mkdir()
    (base / "src" / "warm_flows.py").write_text(FLOWS)
    settings = PipelineSettings(home=base / "home", work_pool=POOL).ensure_dirs()
    stack = start_stack(
        settings, with_rollout=False, with_mlflow=False, deploy=False, worker_poll_seconds=1
    )
    try:
        assert "warm" in stack.components, stack.components
        # The socket appears once the server's imports are done (tens of seconds).
        _wait(lambda: socket_path(stack.home).exists(), 600, "the warm server's socket")
        with (
            temporary_settings({PREFECT_API_URL: stack.prefect_api_url}),
            get_client(sync_client=True) as client,
        ):
            for name in ("probe", "fails", "waits"):
                source = Flow.from_source(str(base / "src"), f"warm_flows.py:{name}")
                source.deploy(name=name, work_pool_name=POOL, build=False, push=False)
            yield stack, client, base
    finally:
        stack.stop()


def _run(client: Any, name: str, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(f"{name}/{name}", parameters=parameters, timeout=0, client=client)


def _warm_run(stack: Stack, client: Any, name: str, out: Path, **parameters: Any) -> Any:
    """Start a run the warm server forks; return (its flow run, the child's record).

    Others editing this checkout make the server's code stale: it then sends the run to the
    stock command and imports the checkout again. Such a run is stopped and started again
    once the server is back (a few times at most).
    """
    from prefect.states import Cancelling

    for _attempt in range(4):
        _wait(lambda: socket_path(stack.home).exists(), 600, "the warm server's socket")
        out.unlink(missing_ok=True)
        flow_run = _run(client, name, out=str(out), **parameters)
        record = _record(out)
        if record["ppid"] == stack.components["warm"].pid:
            return flow_run, record
        if not client.read_flow_run(flow_run.id).state.is_final():
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        _final(client, flow_run.id)
    raise AssertionError("the warm server forked none of 4 runs: is its code always stale?")


def _final(client: Any, run_id: Any, timeout: float = 300) -> Any:
    def done() -> Any:
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return _wait(done, timeout, f"flow run {run_id} to finish")


def _record(path: Path) -> dict[str, Any]:
    return json.loads(_wait(lambda: path.exists() and path.read_text(), 300, f"{path}"))


def test_a_run_is_forked_by_the_warm_server_and_completes(warm_stack: Any) -> None:
    stack, client, base = warm_stack
    flow_run, record = _warm_run(stack, client, "probe", base / "ok.json")
    run = _final(client, flow_run.id)
    assert run.state.is_completed(), run.state
    assert record["ppid"] == stack.components["warm"].pid  # forked, not a fresh python
    assert record["run"] == str(run.id)  # the run's own environment reached the child
    assert "probe says hello" in (stack.home / "run" / "worker.log").read_text()


def test_an_exit_code_reaches_the_worker_as_a_crash(warm_stack: Any) -> None:
    stack, client, base = warm_stack
    flow_run, _child = _warm_run(stack, client, "probe", base / "crash.json", code=3)
    run = _final(client, flow_run.id)
    assert run.state.is_crashed(), run.state
    assert "status code: 3" in (run.state.message or ""), run.state.message


def test_an_exception_fails_the_run(warm_stack: Any) -> None:
    stack, client, base = warm_stack
    flow_run, _child = _warm_run(stack, client, "fails", base / "fails.json")
    run = _final(client, flow_run.id)
    assert run.state.is_failed(), run.state


def test_cancelling_a_run_stops_its_process(warm_stack: Any) -> None:
    from prefect.states import Cancelling

    stack, client, base = warm_stack
    never = str(base / "never")
    flow_run, child = _warm_run(stack, client, "waits", base / "cancel.json", release=never)
    client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
    run = _final(client, flow_run.id)
    assert run.state.is_cancelled(), run.state
    _wait(lambda: not _alive(child["pid"]), 60, "the cancelled run's process to exit")


def test_killing_the_launcher_kills_its_child(warm_stack: Any) -> None:
    stack, client, base = warm_stack
    never = str(base / "never")
    flow_run, child = _warm_run(stack, client, "waits", base / "kill.json", release=never)
    pid = _wait(lambda: client.read_flow_run(flow_run.id).infrastructure_pid, 60, "its pid")
    launcher = int(str(pid).rsplit(":", 1)[-1])  # the worker's child: the launcher
    assert launcher != child["pid"]
    os.kill(launcher, signal.SIGKILL)
    _wait(lambda: not _alive(child["pid"]), 60, "the orphaned child to be killed")
    assert not _final(client, flow_run.id).state.is_completed()


def test_an_edited_module_runs_cold_until_the_server_has_imported_it_again(
    warm_stack: Any,
) -> None:
    import banditflow.warm_child

    stack, client, base = warm_stack
    server, worker = stack.components["warm"], stack.components["worker"]
    edited = Path(banditflow.warm_child.__file__)
    os.utime(edited)  # as an edit would: the server's copy of the code is now stale
    first = base / "edited.json"
    assert _final(client, _run(client, "probe", out=str(first)).id).state.is_completed()
    assert _record(first)["ppid"] == worker.pid  # the stock command: fresh code
    # The same server (pid) imports the checkout again, then forks the next run.
    _wait(lambda: socket_path(stack.home).exists(), 600, "the restarted server's socket")
    flow_run, record = _warm_run(stack, client, "probe", base / "again.json")
    assert _final(client, flow_run.id).state.is_completed()
    assert record["ppid"] == server.pid and is_alive(server)
    # The restarted server's children still reach the events stream (a restart that kept
    # the imports' environment made Feast's Prometheus metrics fail every websocket).
    log = (stack.home / "run" / "worker.log").read_text()
    assert "failed to connect to the events stream" not in log
    assert "Failed to emit pull-step event" not in log


def test_without_the_server_the_launcher_runs_the_stock_command(warm_stack: Any) -> None:
    stack, client, base = warm_stack
    worker = stack.components["worker"]
    stop_component(stack.components["warm"])
    assert not socket_path(stack.home).exists()
    out = base / "stock.json"
    run = _final(client, _run(client, "probe", out=str(out)).id)
    assert run.state.is_completed(), run.state
    record = _record(out)
    # Exec'd in place of the launcher: a fresh python, a child of the worker itself.
    assert record["ppid"] == worker.pid and is_alive(worker)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")
