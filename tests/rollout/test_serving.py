"""The service as it runs: uvicorn processes, SIGKILL, two workers, replicas on PostgreSQL."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import httpx
import pytest
from rollout_helpers import FEATURES, UvicornProcess, env_for

from rollout.store import Store, sum_feedback

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def issue_ids(url: str, n: int) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while len(ids) < n:
            rows = [{"features": FEATURES} for _ in range(min(500, n - len(ids)))]
            response = client.post("/predict", json=rows)
            response.raise_for_status()
            ids += [r["request_id"] for r in response.json()]
    return ids


def send_feedback(
    urls: list[str], ids: list[str], threads: int, stop: threading.Event | None = None
) -> dict[str, float]:
    """Send one feedback per id (plus duplicates) from several threads; return acknowledged."""
    acked: dict[str, float] = {}
    lock = threading.Lock()

    def work(part: list[str], seed: int) -> None:
        rng = random.Random(seed)
        clients = [httpx.Client(base_url=u, timeout=30) for u in urls]
        try:
            for i, rid in enumerate(part):
                if stop is not None and stop.is_set():
                    return
                reward = float(rng.random() < 0.3)
                try:
                    response = clients[i % len(clients)].post(
                        "/feedback", json={"request_id": rid, "reward": reward}
                    )
                except httpx.HTTPError:
                    return  # the server was killed
                if response.status_code == 200 and response.json()["status"] == "accepted":
                    with lock:
                        acked[rid] = reward
                if i % 10 == 0 and rid in acked:  # a duplicate, sent to another replica
                    try:
                        dup = clients[(i + 1) % len(clients)].post(
                            "/feedback", json={"request_id": rid, "reward": 1.0 - reward}
                        )
                    except httpx.HTTPError:
                        return  # the server was killed
                    assert dup.status_code == 200 and dup.json()["status"] == "duplicate"
        finally:
            for c in clients:
                c.close()

    parts = [ids[t::threads] for t in range(threads)]
    workers = [threading.Thread(target=work, args=(p, t)) for t, p in enumerate(parts)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return acked


def assert_exact(store: Store, acked: dict[str, float]) -> None:
    rows = {rid: (arm, reward) for rid, arm, reward, _kind in store.feedback_rows()}
    missing = [rid for rid in acked if rid not in rows]
    assert not missing, f"{len(missing)} acknowledged feedback lost, e.g. {missing[:3]}"
    assert all(rows[rid][1] == reward for rid, reward in acked.items())
    stats = store.read_stats()
    for arm, (count, total) in sum_feedback(store.feedback_rows()).items():
        assert stats[arm].outcomes == count and stats[arm].pulls == count
        assert stats[arm].reward_sum == pytest.approx(total)


def test_acknowledged_feedback_survives_sigkill(rollout_home: Path, tmp_path: Path) -> None:
    env = env_for(rollout_home)
    server = UvicornProcess(env, tmp_path / "server.log").wait()
    try:
        ids = issue_ids(server.url, 3000)
        stop = threading.Event()

        def kill() -> None:
            server.kill()
            stop.set()

        killer = threading.Timer(1.5, kill)
        killer.start()
        acked = send_feedback([server.url], ids, threads=8, stop=stop)
        killer.join()
    finally:
        server.stop()
    assert 0 < len(acked) < len(ids), "the kill must land while feedback is flowing"
    store = Store(f"sqlite:///{rollout_home / 'rollout.db'}")
    assert_exact(store, acked)

    # After a restart the service reports the same statistics and remembers what it counted.
    restarted = UvicornProcess(env, tmp_path / "server.log").wait()
    try:
        arms = httpx.get(restarted.url + "/arms").json()["arms"]
        assert sum(a["outcomes"] for a in arms) == len(store.feedback_rows())
        rid = next(iter(acked))
        again = httpx.post(restarted.url + "/feedback", json={"request_id": rid, "reward": 1})
        assert again.json()["status"] == "duplicate"
    finally:
        restarted.stop()


def test_two_workers_count_exactly(rollout_home: Path, tmp_path: Path) -> None:
    server = UvicornProcess(env_for(rollout_home), tmp_path / "server.log", workers=2).wait()
    try:
        ids = issue_ids(server.url, 800)
        acked = send_feedback([server.url], ids, threads=8)
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert len(acked) == len(ids)
    assert_exact(Store(f"sqlite:///{rollout_home / 'rollout.db'}"), acked)
    assert "rollout_arm_feedback_total" in metrics


def test_two_replicas_on_postgres_count_exactly(
    rollout_home: Path, tmp_path: Path, postgres_url: str
) -> None:
    env = env_for(rollout_home, BANDITFLOW_STATE_URL=postgres_url)
    a = UvicornProcess(env, tmp_path / "a.log")
    b = UvicornProcess(env, tmp_path / "b.log")
    try:
        a.wait()
        b.wait()
        # Ids issued by each replica get their feedback from both: the signing secret is shared.
        ids = issue_ids(a.url, 400) + issue_ids(b.url, 400)
        random.Random(0).shuffle(ids)
        acked = send_feedback([a.url, b.url], ids, threads=8)
    finally:
        a.stop()
        b.stop()
    assert len(acked) == len(ids)
    store = Store(postgres_url)
    try:
        assert_exact(store, acked)
    finally:
        store.dispose()


def test_alias_moves_during_traffic_without_a_failed_request(rollout_home: Path) -> None:
    """Traffic runs while the aliases move; the test triggers the poll and counts requests."""
    from fastapi.testclient import TestClient
    from rollout_helpers import make_settings, mlflow_client

    import contract
    from rollout.app import create_app

    settings = make_settings(rollout_home)  # background off: the test runs the alias poll
    statuses: list[int] = []
    served: list[tuple[str, str]] = []
    enough = threading.Condition()
    stop = threading.Event()

    def wait_for(count: int) -> None:
        with enough:
            assert enough.wait_for(lambda: len(statuses) >= count, timeout=300), len(statuses)

    with TestClient(create_app(settings)) as client:

        def traffic() -> None:
            while not stop.is_set():
                response = client.post("/predict", json={"features": FEATURES})
                with enough:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        body = response.json()
                        served.append((body["arm"], body["model"]["version"]))
                    enough.notify_all()

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            wait_for(150)
            registry = mlflow_client(rollout_home)
            registry.delete_registered_model_alias("conversion-test", "challenger-2")  # v3 out
            moved_at = len(served)
            contract.promote(registry, "conversion-test", "2", "hot reload test")  # v2 champion
            client.portal.call(client.app.state.service.refresh_models)  # type: ignore[attr-defined]
            assert client.get("/readyz").json()["champion"] == "v2"
            swapped_at = len(served) + 1  # one request may have been in flight on the old set
            wait_for(len(statuses) + 150)
        finally:
            stop.set()
            thread.join()
    assert statuses and set(statuses) == {200}, f"failed requests: {set(statuses)}"
    before = {arm for arm, _ in served[:moved_at]}
    after = {arm for arm, _ in served[swapped_at:]}
    assert before == {"v1", "v2", "v3"}
    assert after == {"v2"}, "after the move only the new champion serves (v1 and v3 left)"
    assert all(arm == f"v{version}" for arm, version in served)
