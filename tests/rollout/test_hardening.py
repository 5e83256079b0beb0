"""Hostile input and failing dependencies, against a real uvicorn process (issue 15).

Each test names the fault it guards against; each failed on the service before the fix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_helpers import (
    ADMIN,
    BROKEN,
    FEATURES,
    MODEL,
    UvicornProcess,
    env_for,
    mlflow_client,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JSON = {"Content-Type": "application/json"}


def fresh_home(registry_template: Path, folder: Path) -> Path:
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    return home


@pytest.fixture(scope="module")
def server(
    registry_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UvicornProcess]:
    """One uvicorn process for the tests that only send bad input (they change nothing)."""
    folder = tmp_path_factory.mktemp("hardening")
    home = fresh_home(registry_template, folder)
    env = env_for(home, BANDITFLOW_MAX_BODY_BYTES="1000000")
    process = UvicornProcess(env, folder / "server.log").wait()
    try:
        yield process
    finally:
        process.stop()


def arm_state(url: str) -> dict[str, Any]:
    """What a rejected request must not change: rotation, and each arm's counters."""
    ready = httpx.get(url + "/readyz", timeout=30).json()
    arms = httpx.get(url + "/arms", timeout=30).json()["arms"]
    return {
        "rotation": {a: m["in_rotation"] for a, m in ready["models"].items()},
        "counts": {a["arm"]: (a["served"], a["outcomes"], a["reward_sum"]) for a in arms},
    }


def post_raw(
    url: str, path: str, text: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = {**JSON, **(headers or {})}
    return httpx.post(url + path, content=text.encode(), headers=sent, timeout=60)


# --- 1. inputs validated to what the model can take, before routing ----------------------
@pytest.mark.parametrize(
    "value", ["1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e39"]
)
def test_numbers_a_model_cannot_take_are_422_and_leave_every_arm_in_rotation(
    server: UvicornProcess, value: str
) -> None:
    before = arm_state(server.url)
    body = '{"features": {"x1": VALUE, "x2": 0.5, "region": "north"}}'.replace("VALUE", value)
    for _ in range(5):  # more than one: a single request never pulled, nor do five now
        response = post_raw(server.url, "/predict", body)
        assert response.status_code == 422, response.text
        assert "x1" in response.json()["detail"]
        assert len(response.content) < 2000
    assert arm_state(server.url) == before
    assert set(before["rotation"].values()) == {True}


def test_422_handler_survives_nan_infinity_and_1e400_in_the_rejected_input(
    server: UvicornProcess,
) -> None:
    for reward in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = '{"request_id": "x", "reward": VALUE}'.replace("VALUE", reward)
        response = post_raw(server.url, "/feedback", body)
        assert response.status_code == 422, response.text
        body = response.json()  # valid JSON, though the input was not
        assert body["error"] == "bad_input" and "reward" in body["detail"]
    nested = '[{"features": {"x1": NaN, "x2": 1e400, "region": "north"}, "colour": Infinity}]'
    response = post_raw(server.url, "/predict", nested)
    assert response.status_code == 422 and response.json()["error"] == "bad_input"


# --- 3. body limit, length checks first, short error bodies, the loop stays free ----------
def test_a_body_over_the_limit_is_413_before_parsing(server: UvicornProcess) -> None:
    big = json.dumps([{"features": FEATURES}] * 30_000)  # ~1.5 MB > the 1 MB limit
    response = post_raw(server.url, "/predict", big)
    assert response.status_code == 413, response.text[:200]
    assert response.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what streams in
        for _ in range(40):
            yield b" " * 50_000

    streamed = httpx.post(server.url + "/feedback", content=chunks(), headers=JSON, timeout=60)
    assert streamed.status_code == 413


def test_list_length_is_checked_before_items_and_errors_quote_only_an_excerpt(
    server: UvicornProcess,
) -> None:
    rows = [{"features": {"x1": "not a number " * 5}} for _ in range(5001)]
    response = post_raw(server.url, "/feedback", json.dumps(rows))
    assert response.status_code == 422
    assert "at most 5000 rows, got 5001" in response.json()["detail"]
    huge = json.dumps({"features": {"x1": "y" * 500_000, "x2": 1.0, "region": "north"}})
    response = post_raw(server.url, "/predict", huge)
    assert response.status_code == 422 and len(response.content) < 2000, len(response.content)


def test_healthz_answers_while_a_large_body_is_in_flight(server: UvicornProcess) -> None:
    """A client that sends a large body slowly does not hold up /healthz."""
    half_sent, healthz_answered = threading.Event(), threading.Event()
    body = json.dumps([{"features": FEATURES}] * 900).encode()
    result: dict[str, Any] = {}

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        assert healthz_answered.wait(120), "/healthz did not answer while the body was open"
        yield body[len(body) // 2 :]

    def send() -> None:
        result["response"] = httpx.post(
            server.url + "/predict", content=slow_body(), headers=JSON, timeout=120
        )

    sender = threading.Thread(target=send)
    sender.start()
    assert half_sent.wait(60)
    health = httpx.get(server.url + "/healthz", timeout=30)
    assert health.status_code == 200
    healthz_answered.set()
    sender.join(120)
    assert result["response"].status_code == 200 and len(result["response"].json()) == 900


def test_healthz_is_not_blocked_by_parsing_a_large_batch(server: UvicornProcess) -> None:
    """Measured, with a bound a loaded machine cannot break: the batch parses in a thread."""
    rows = json.dumps([{"features": FEATURES, "unit_id": None}] * 1000)
    done = threading.Event()
    latencies: list[float] = []

    def batches() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for _ in range(5):
                assert client.post("/predict", content=rows, headers=JSON).status_code == 200
        done.set()

    thread = threading.Thread(target=batches)
    thread.start()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        while not done.is_set():
            response = client.get("/healthz")
            assert response.status_code == 200
            latencies.append(response.elapsed.total_seconds())
    thread.join()
    print(f"/healthz during 5 batches of 1000: n={len(latencies)} max={max(latencies):.3f}s")
    assert latencies and max(latencies) < 10.0


# --- 7. the lesser ones -----------------------------------------------------------------
def test_strict_types_admin_token_first_and_one_error_format(server: UvicornProcess) -> None:
    url = server.url
    assert post_raw(url, "/feedback", '{"request_id": "x", "reward": true}').status_code == 422
    frozen = httpx.post(url + "/admin/freeze", json={"frozen": 0}, headers=ADMIN, timeout=30)
    assert frozen.status_code == 422 and "frozen" in frozen.json()["detail"]
    # A malformed admin body without a token: the token is checked first.
    assert post_raw(url, "/admin/freeze", '{"frozen": ').status_code == 401
    denied = post_raw(url, "/admin/promote", "{", headers={"Authorization": "Bearer no"})
    assert denied.status_code == 403
    # Every error body has the documented shape: error + detail (+ errors on a 422).
    for response in (
        post_raw(url, "/predict", "{"),
        httpx.get(url + "/nowhere", timeout=30),
        httpx.put(url + "/predict", timeout=30),
    ):
        body = response.json()
        assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str), body
    schema = httpx.get(url + "/openapi.json", timeout=30).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "PredictRequest" in schema["components"]["schemas"]


def test_public_routes_show_no_raw_exception_text(server: UvicornProcess) -> None:
    ready = httpx.get(server.url + "/readyz", timeout=30).json()
    assert ready["entity_lookups"] == "off"  # no feature repo applied in this data folder
    text = json.dumps(ready) + httpx.get(server.url + "/arms", timeout=30).text
    assert "Traceback" not in text and "sqlite3." not in text


def test_a_fixed_split_only_on_a_missing_arm_is_refused(server: UvicornProcess) -> None:
    policy = {"name": "fixed", "params": {"weights": {"v99": 1.0}}}
    response = httpx.put(server.url + "/admin/policy", json=policy, headers=ADMIN, timeout=30)
    assert response.status_code == 422 and "v99" in response.json()["detail"]
    assert httpx.get(server.url + "/arms", timeout=30).json()["policy"] == "thompson"


# --- 1. a failing model: pulled on a rate, never on one request; the fallback never 500s ---
def test_a_failing_challenger_is_pulled_on_a_rate_and_no_request_fails(
    registry_template: Path, tmp_path: Path
) -> None:
    home = fresh_home(registry_template, tmp_path)
    mlflow_client(home).set_registered_model_alias(MODEL, "challenger-2", BROKEN)
    server = UvicornProcess(env_for(home), tmp_path / "server.log").wait()
    broken = f"v{BROKEN}"
    try:
        weights = {"name": "fixed", "params": {"weights": {broken: 1.0}}}
        put = httpx.put(server.url + "/admin/policy", json=weights, headers=ADMIN, timeout=30)
        assert put.status_code == 200, put.text
        first = httpx.post(server.url + "/predict", json={"features": FEATURES}, timeout=30)
        assert first.status_code == 200 and first.json()["arm"] == "v1"  # served by the champion
        ready = httpx.get(server.url + "/readyz", timeout=30).json()
        assert ready["models"][broken]["in_rotation"] is True, "one failure must not pull an arm"
        statuses = [
            httpx.post(server.url + "/predict", json={"features": FEATURES}, timeout=30)
            for _ in range(10)
        ]
        assert {r.status_code for r in statuses} == {200}
        ready = httpx.get(server.url + "/readyz", timeout=30).json()
        assert ready["models"][broken]["in_rotation"] is False
        assert "rate" in ready["models"][broken]["error"]
    finally:
        server.stop()


# --- 2. failed loads retried with backoff; the best loaded arm serves meanwhile ------------
def test_a_champion_that_cannot_load_is_retried_and_the_best_loaded_arm_serves(
    registry_template: Path, tmp_path: Path
) -> None:
    import mlflow

    home = fresh_home(registry_template, tmp_path)
    registry = mlflow_client(home)
    late = tmp_path / "late-artifacts"  # the "artifact store" of the new champion: down
    version = registry.create_model_version(MODEL, source=str(late), run_id=None).version
    registry.set_registered_model_alias(MODEL, "champion", str(version))
    env = env_for(home, BANDITFLOW_ALIAS_POLL_S="0.3", BANDITFLOW_MODEL_RETRY_BASE_S="0.3")
    server = UvicornProcess(env, tmp_path / "server.log").wait()
    try:
        ready = httpx.get(server.url + "/readyz", timeout=30).json()
        assert ready["champion"] == f"v{version}" and ready["serving_from"] in {"v2", "v3"}
        assert "serving from" in ready["reason"] and "failed to load" in ready["reason"]
        served = httpx.post(server.url + "/predict", json={"features": FEATURES}, timeout=30)
        assert served.status_code == 200 and served.json()["arm"] in {"v2", "v3"}
        # The artifact store comes back: the next retry loads the champion by itself.
        uri = f"sqlite:///{home / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/1", dst_path=str(late))
        wait_for(lambda: httpx.get(server.url + "/readyz", timeout=30).json()["serving_from"]
                 == f"v{version}")  # fmt: skip
    finally:
        server.stop()


def wait_for(condition: Any, attempts: int = 600) -> None:
    """Poll a condition of the server (each poll is an HTTP round trip, not a sleep clock)."""
    import time

    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


# --- 5. store failures: 503 with Retry-After, /readyz false, nothing lost -----------------
def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def test_a_failing_store_is_503_and_every_refused_feedback_can_be_sent_again(
    registry_template: Path, tmp_path: Path
) -> None:
    from rollout.store import Store

    if shutil.which("chattr") is None:
        pytest.skip("chattr is missing (e2fsprogs)")
    home = fresh_home(registry_template, tmp_path)
    server = UvicornProcess(env_for(home), tmp_path / "server.log").wait()
    # The database, its WAL and the folder (no new journal); not the -shm file, which SQLite
    # maps into memory (an immutable mapped file kills the process with SIGBUS).
    state = [p for p in (home / "rollout.db", home / "rollout.db-wal", home) if p.exists()]
    acked: dict[str, float] = {}
    refused: list[str] = []
    try:
        rows = [{"features": FEATURES} for _ in range(300)]
        ids = [r["request_id"] for r in httpx.post(server.url + "/predict", json=rows).json()]
        for rid in ids[:100]:
            response = httpx.post(server.url + "/feedback", json={"request_id": rid, "reward": 1})
            assert response.json()["status"] == "accepted"
            acked[rid] = 1.0
        _chattr("+i", state)  # the state files become read-only, even for root
        try:
            ready = httpx.get(server.url + "/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["store"] != "ok"
            for rid in ids[100:130]:
                response = httpx.post(
                    server.url + "/feedback", json={"request_id": rid, "reward": 0}
                )
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] and "again" in response.json()["detail"]
                refused.append(rid)
            unit = httpx.post(
                server.url + "/predict", json={"features": FEATURES, "unit_id": "new"}
            )
            assert unit.status_code == 503 and "Retry-After" in unit.headers
        finally:
            _chattr("-i", state)
        wait_for(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200)
        for rid in refused:  # sent again: each is accepted now, once
            response = httpx.post(server.url + "/feedback", json={"request_id": rid, "reward": 0})
            assert response.status_code == 200 and response.json()["status"] == "accepted"
            acked[rid] = 0.0
    finally:
        server.stop()
    stored = {
        rid: reward
        for rid, _arm, reward, _kind in Store(f"sqlite:///{home / 'rollout.db'}").feedback_rows()
    }
    assert stored == acked, "every acknowledged feedback stored once, and only those"


# --- 6. client-chosen request ids: one decision each, and the feedback window -------------
def test_a_reused_client_request_id_is_one_decision(server: UvicornProcess) -> None:
    before = sum(c[0] for c in arm_state(server.url)["counts"].values())
    body = {"features": FEATURES, "request_id": "client-reused-1"}
    arms = {httpx.post(server.url + "/predict", json=body).json()["arm"] for _ in range(10)}
    assert len(arms) == 1, f"a reused id is served by the arm of its first decision: {arms}"
    marker = {"features": FEATURES, "request_id": "client-marker-1"}
    assert httpx.post(server.url + "/predict", json=marker).status_code == 200
    wait_for(lambda: sum(c[0] for c in arm_state(server.url)["counts"].values()) >= before + 2)
    assert sum(c[0] for c in arm_state(server.url)["counts"].values()) == before + 2
    fb = httpx.post(server.url + "/feedback", json={"request_id": "client-reused-1", "reward": 1})
    assert fb.status_code == 200 and fb.json()["arm"] in arms


def test_the_feedback_window_holds_for_client_request_ids(
    registry_template: Path, tmp_path: Path
) -> None:
    import time

    from rollout.store import DecisionRow, Store

    home = fresh_home(registry_template, tmp_path)
    env = env_for(home, BANDITFLOW_FEEDBACK_WINDOW_S="3600")
    server = UvicornProcess(env, tmp_path / "server.log").wait()
    try:
        # A decision the client made two hours ago under its own id (written as the service
        # would have): its window closed an hour ago.
        store = Store(f"sqlite:///{home / 'rollout.db'}")
        store.apply_batch([DecisionRow("client-old", "v1", time.time() - 7200, None)], [])
        store.dispose()
        late = httpx.post(server.url + "/feedback", json={"request_id": "client-old", "reward": 1})
        assert late.status_code == 410, late.text
        fresh = {"features": FEATURES, "request_id": "client-new"}
        assert httpx.post(server.url + "/predict", json=fresh).status_code == 200
        ok = httpx.post(server.url + "/feedback", json={"request_id": "client-new", "reward": 1})
        assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    finally:
        server.stop()
