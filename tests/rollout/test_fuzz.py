"""A hypothesis fuzz of /predict and /feedback bodies against a real uvicorn process: no 5xx,
no arm state changed by a rejected request, and /healthz answering all the while."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_helpers import FEATURES, UvicornProcess, env_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JSON = {"Content-Type": "application/json"}

numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1, 3.5e38, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
features = st.fixed_dictionaries(
    {}, optional={"x1": values, "x2": values, "region": values, "x9": values}
)
predict_bodies = st.one_of(
    st.fixed_dictionaries({"features": features}),
    st.fixed_dictionaries(
        {"features": features},
        optional={"entity": values, "unit_id": values, "request_id": values, "extra": values},
    ),
    st.lists(st.fixed_dictionaries({"features": features}), max_size=5),
    values,
)
feedback_bodies = st.one_of(
    st.fixed_dictionaries({"request_id": values, "reward": values}),
    st.lists(st.fixed_dictionaries({"request_id": values, "reward": values}), max_size=5),
    values,
)


@pytest.fixture(scope="module")
def server(
    registry_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UvicornProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    home = folder / "home"
    home.mkdir()
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    process = UvicornProcess(env_for(home), folder / "server.log").wait()
    try:
        yield process
    finally:
        process.stop()


def state(client: httpx.Client) -> dict[str, Any]:
    """Rotation and the feedback counters (committed before a response, so exact)."""
    ready = client.get("/readyz").json()
    arms = client.get("/arms").json()["arms"]
    return {
        "rotation": {a: m["in_rotation"] for a, m in ready["models"].items()},
        "outcomes": {a["arm"]: (a["outcomes"], a["reward_sum"]) for a in arms},
    }


def encode(body: Any) -> bytes:
    try:
        return json.dumps(body).encode()  # NaN/Infinity literals and huge ints, as a client may
    except ValueError:
        return b'{"features": {"x1": 1' + b"0" * 500 + b"}}"  # an int too long for str()


def test_fuzzed_bodies_get_no_5xx_and_change_nothing_when_rejected(
    server: UvicornProcess,
) -> None:
    stop = threading.Event()
    health: list[tuple[int, float]] = []

    def watch_health() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                response = client.get("/healthz")
                health.append((response.status_code, response.elapsed.total_seconds()))

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    sent: dict[str, int] = {"examples": 0, "rejected": 0}
    client = httpx.Client(base_url=server.url, timeout=60)

    @given(path=st.sampled_from(["/predict", "/feedback"]), data=st.data())
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(path: str, data: st.DataObject) -> None:
        body = data.draw(predict_bodies if path == "/predict" else feedback_bodies)
        before = state(client)
        response = client.post(path, content=encode(body), headers=JSON)
        sent["examples"] += 1
        assert response.status_code < 500, (path, body, response.text[:300])
        if response.status_code >= 400:
            sent["rejected"] += 1
            assert state(client) == before, (path, body, response.status_code)
            assert len(response.content) < 5000

    try:
        fuzz()
        ok = client.post("/predict", json={"features": FEATURES})
        assert ok.status_code == 200  # the service still serves
    finally:
        stop.set()
        watcher.join()
        client.close()
    worst = max(t for _, t in health)
    print(f"fuzz: {sent['examples']} examples, {sent['rejected']} rejected; /healthz answered "
          f"{len(health)} times, max {worst:.3f} s")  # fmt: skip
    assert {code for code, _ in health} == {200} and worst < 10.0
    assert sent["rejected"] > 50
