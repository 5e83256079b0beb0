"""The HTTP API against a real MLflow registry: success paths and every bad input."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_helpers import ADMIN, BROKEN, FEATURES, mlflow_client


def predict(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post("/predict", json={"features": FEATURES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_returns_arm_model_and_prediction(client: Any) -> None:
    body = predict(client)
    assert body["arm"] in {"v1", "v2", "v3"}
    assert body["model"] == {"name": "conversion-test", "version": body["arm"][1:]}
    assert body["prediction"] in (0, 1)
    assert 0.0 <= body["score"] <= 1.0
    assert body["request_id"].startswith(body["arm"] + ".")


def test_predict_batch_and_client_request_id(client: Any) -> None:
    rows = [{"features": FEATURES, "request_id": f"client-{i}"} for i in range(5)]
    response = client.post("/predict", json=rows)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["request_id"] for r in body] == [f"client-{i}" for i in range(5)]
    # Feedback for a client id resolves the arm from the stored decision.
    fb = client.post("/feedback", json={"request_id": "client-3", "reward": 1})
    assert fb.status_code == 200, fb.text
    assert fb.json() == {"request_id": "client-3", "status": "accepted", "arm": body[3]["arm"]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"features": {"x1": 1.0, "x2": 2.0}}, "missing features: region"),
        ({"features": {**FEATURES, "x9": 1}}, "unexpected features: x9"),
        ({"features": {**FEATURES, "x1": "high"}}, "wrongly typed features: x1"),
        ({"features": {**FEATURES, "region": 3}}, "wrongly typed features: region"),
        ({"features": {**FEATURES, "x2": True}}, "wrongly typed features: x2"),
        ({"features": {**FEATURES, "x2": [1]}}, "wrongly typed features: x2"),
        ({}, "exactly one of 'features' or 'entity'"),
        ({"features": FEATURES, "entity": {"customer_id": 1}}, "exactly one"),
        ({"features": FEATURES, "colour": "red"}, "colour"),
        ({"entity": {"customer_id": 1}}, "entity lookups are not configured"),
        ([], "at least 1"),
        ([{"features": FEATURES}, {"features": {"x1": 1}}], "row 1: missing features"),
        ("text", "valid dictionary"),
    ],
)
def test_predict_bad_input_is_422_with_a_message(
    shared_client: Any, body: Any, fragment: str
) -> None:
    response = shared_client.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_malformed_json_is_422(shared_client: Any) -> None:
    for path in ("/predict", "/feedback"):
        response = shared_client.post(
            path, content=b'{"features": {', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert "JSON" in response.json()["detail"]


def test_feedback_accepted_duplicate_unknown_out_of_range(client: Any) -> None:
    rid = predict(client)["request_id"]
    first = client.post("/feedback", json={"request_id": rid, "reward": 1})
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    again = client.post("/feedback", json={"request_id": rid, "reward": 0})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"

    unknown = client.post("/feedback", json={"request_id": "never-issued", "reward": 1})
    assert unknown.status_code == 404
    assert "never-issued" in unknown.json()["detail"]
    forged = rid[:-3] + "AAA"  # a token whose signature does not match
    assert client.post("/feedback", json={"request_id": forged, "reward": 1}).status_code == 404

    for reward in (1.5, -0.1):
        bad = client.post("/feedback", json={"request_id": rid, "reward": reward})
        assert bad.status_code == 422
        assert "outside [0.0, 1.0]" in bad.json()["detail"]
    for body in ({"request_id": rid}, {"reward": 1}, {"request_id": rid, "reward": "yes"}):
        assert client.post("/feedback", json=body).status_code == 422

    stats = {a["arm"]: a for a in client.get("/arms").json()["arms"]}
    assert sum(a["outcomes"] for a in stats.values()) == 1
    assert sum(a["reward_sum"] for a in stats.values()) == 1.0


def test_feedback_batch_reports_each_row(client: Any) -> None:
    ids = [predict(client)["request_id"] for _ in range(3)]
    rows = [{"request_id": i, "reward": 1} for i in ids] + [
        {"request_id": ids[0], "reward": 0},
        {"request_id": "nope", "reward": 0},
    ]
    response = client.post("/feedback", json=rows)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()] == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "unknown",
    ]


def test_late_feedback_after_window_is_410(rollout_home: Any) -> None:
    from fastapi.testclient import TestClient
    from rollout_helpers import make_settings

    from rollout.app import create_app

    now = [1_800_000_000.0]  # the service's clock, moved by the test
    settings = make_settings(rollout_home, feedback_window_s=0.2)
    with TestClient(create_app(settings, clock=lambda: now[0])) as client:
        rid = predict(client)["request_id"]
        now[0] += 0.1
        fresh = predict(client)["request_id"]
        inside = client.post("/feedback", json={"request_id": fresh, "reward": 1})
        assert inside.status_code == 200, inside.text
        now[0] += 0.2
        response = client.post("/feedback", json={"request_id": rid, "reward": 1})
        assert response.status_code == 410
        assert "window" in response.json()["detail"]


def test_arms_report(client: Any) -> None:
    for _ in range(20):
        rid = predict(client)["request_id"]
        client.post("/feedback", json={"request_id": rid, "reward": 1})
    body = client.get("/arms").json()
    assert body["policy"] == "thompson"
    arms = {a["arm"]: a for a in body["arms"]}
    assert set(arms) == {"v1", "v2", "v3"}
    assert arms["v1"]["role"] == "champion"
    assert {arms["v2"]["role"], arms["v3"]["role"]} == {"challenger-1", "challenger-2"}
    assert sum(a["served"] for a in arms.values()) == 20
    assert sum(a["outcomes"] for a in arms.values()) == 20
    assert sum(a["traffic_share"] for a in arms.values()) == pytest.approx(1.0)
    assert sum(a["p_best"] for a in arms.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(a["expected_loss"] >= 0 for a in arms.values())


def test_admin_needs_a_token(client: Any) -> None:
    routes = [
        ("post", "/admin/freeze", {"frozen": True}),
        ("put", "/admin/policy", {"name": "ucb1"}),
        ("post", "/admin/arms", {"version": "3"}),
        ("delete", "/admin/arms/v3", None),
        ("post", "/admin/promote", {"arm": "v2"}),
        ("post", "/admin/rollback", {}),
    ]
    for method, path, body in routes:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        none = client.request(method, path, **kwargs)
        assert none.status_code == 401, (path, none.text)
        assert "Bearer" in none.json()["detail"]
        wrong = client.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 403, (path, wrong.text)
        assert "wrong admin token" in wrong.json()["detail"]


def test_admin_freeze_policy_and_bad_values(client: Any) -> None:
    assert client.post("/admin/freeze", json={"frozen": True}, headers=ADMIN).status_code == 200
    assert {predict(client)["arm"] for _ in range(15)} == {"v1"}
    assert client.post("/admin/freeze", json={"frozen": False}, headers=ADMIN).status_code == 200

    ok = client.put("/admin/policy", json={"name": "ucb1"}, headers=ADMIN)
    assert ok.status_code == 200, ok.text
    assert client.get("/arms").json()["policy"] == "ucb1"
    unknown = client.put("/admin/policy", json={"name": "oracle"}, headers=ADMIN)
    assert unknown.status_code == 422 and "unknown policy" in unknown.json()["detail"]
    bad = client.put(
        "/admin/policy", json={"name": "thompson", "params": {"prior_a": -1}}, headers=ADMIN
    )
    assert bad.status_code == 422 and "prior_a" in bad.json()["detail"]


def test_admin_retire_add_promote_rollback(client: Any, rollout_home: Any) -> None:
    retired = client.delete("/admin/arms/v3", headers=ADMIN)
    assert retired.status_code == 200, retired.text
    assert {a["arm"] for a in client.get("/arms").json()["arms"]} == {"v1", "v2"}
    assert client.delete("/admin/arms/v3", headers=ADMIN).status_code == 404
    assert client.delete("/admin/arms/v1", headers=ADMIN).status_code == 409  # the champion
    assert client.delete("/admin/arms/banana", headers=ADMIN).status_code == 404

    added = client.post("/admin/arms", json={"version": "3"}, headers=ADMIN)
    assert added.status_code == 200, added.text
    assert added.json()["result"]["role"].startswith("challenger-")
    assert client.post("/admin/arms", json={"version": "3"}, headers=ADMIN).status_code == 409
    missing = client.post("/admin/arms", json={"version": "99"}, headers=ADMIN)
    assert missing.status_code == 404 and "no version 99" in missing.json()["detail"]
    assert client.post("/admin/arms", json={"version": "x"}, headers=ADMIN).status_code == 422

    promoted = client.post("/admin/promote", json={"arm": "v2", "reason": "test"}, headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    aliases = mlflow_client(rollout_home).get_registered_model("conversion-test").aliases
    assert str(aliases["champion"]) == "2" and str(aliases["previous-champion"]) == "1"
    roles = {a["arm"]: a["role"] for a in client.get("/arms").json()["arms"]}
    # The replaced champion stays in rotation on probation, watched against the new one.
    assert roles["v2"] == "champion" and roles["v1"].startswith("challenger-")

    rolled = client.post("/admin/rollback", json={"reason": "test"}, headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    aliases = mlflow_client(rollout_home).get_registered_model("conversion-test").aliases
    assert str(aliases["champion"]) == "1"
    again = client.post("/admin/rollback", json={}, headers=ADMIN)
    assert again.status_code == 409 and "nothing to roll back" in again.json()["detail"]


def test_shadow_arm_scores_off_the_response_path(rollout_home: Any) -> None:
    from fastapi.testclient import TestClient
    from rollout_helpers import make_settings

    from rollout.app import create_app

    settings = make_settings(rollout_home, shadow_fraction=1.0)
    with TestClient(create_app(settings)) as client:
        client.delete("/admin/arms/v3", headers=ADMIN)
        shadow = client.post("/admin/arms", json={"version": "3", "shadow": True}, headers=ADMIN)
        assert shadow.status_code == 200, shadow.text
        served = {predict(client)["arm"] for _ in range(30)}
        assert "v3" not in served  # a shadow arm never serves
        service = client.app.state.service  # type: ignore[attr-defined]
        client.portal.call(service.settle)  # shadow scoring runs off the response path
        client.portal.call(service.writer.flush)  # type: ignore[union-attr]
        arms = {a["arm"]: a for a in client.get("/arms").json()["arms"]}
        assert arms["v3"]["role"] == "shadow" and not arms["v3"]["in_rotation"]
        comparison = arms["v3"]["shadow"]
        assert comparison["compared"] == 30
        assert 0.0 <= comparison["agreement"] <= 1.0
        assert comparison["mean_abs_score_diff"] >= 0.0


def test_failing_challenger_is_pulled_and_champion_serves(client: Any, rollout_home: Any) -> None:
    mlflow_client(rollout_home).set_registered_model_alias(
        "conversion-test", "challenger-2", BROKEN
    )
    service = client.app.state.service
    client.portal.call(service.refresh_models)
    ready = client.get("/readyz").json()
    assert ready["models"][f"v{BROKEN}"]["in_rotation"] is True
    arms = [predict(client)["arm"] for _ in range(60)]  # every request succeeds
    assert f"v{BROKEN}" not in arms
    ready = client.get("/readyz").json()
    entry = ready["models"][f"v{BROKEN}"]
    assert entry["in_rotation"] is False and "failed to predict" in entry["error"]
    report = {a["arm"]: a for a in client.get("/arms").json()["arms"]}
    assert report[f"v{BROKEN}"]["in_rotation"] is False
    assert report[f"v{BROKEN}"]["errors"] >= 1
    metrics = client.get("/metrics").text
    assert f'rollout_errors_total{{arm="v{BROKEN}",kind="predict"}}' in metrics

    restored = client.post(f"/admin/arms/v{BROKEN}/restore", headers=ADMIN)
    assert restored.status_code == 200, restored.text


def test_ops_endpoints(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    predict(client)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    for name in (
        "rollout_requests_total",
        "rollout_request_latency_seconds_bucket",
        "rollout_arm_pulls_total",
        "rollout_model_latency_seconds",
    ):
        assert name in metrics.text
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/dashboard")
    assert (
        page.status_code == 200
        and "<svg" in page.text
        and "http"
        not in page.text.split("<script>")[1]
        .split("</script>")[0]
        .replace("http://www.w3.org/2000/svg", "")
    )


def test_no_champion_is_503_with_reason(rollout_home: Any) -> None:
    from fastapi.testclient import TestClient
    from rollout_helpers import make_settings

    from rollout.app import create_app

    mlflow_client(rollout_home).delete_registered_model_alias("conversion-test", "champion")
    with TestClient(create_app(make_settings(rollout_home))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "champion" in ready.json()["reason"]
        response = client.post("/predict", json={"features": FEATURES})
        assert response.status_code == 503 and "champion" in response.json()["detail"]


def test_metrics_survive_a_library_setting_the_multiprocess_dir_later(
    client: Any, monkeypatch: Any, tmp_path: Any
) -> None:
    # Importing Feast (for entity lookups) sets PROMETHEUS_MULTIPROC_DIR in the process.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    predict(client)
    text = client.get("/metrics").text
    assert "rollout_arm_pulls_total" in text and "rollout_requests_total" in text
