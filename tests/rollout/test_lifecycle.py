"""Decisions, guardrails and the ONNX flavour, through the app against a real registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rollout_helpers import ADMIN, FEATURES, MODEL, make_settings, mlflow_client

import contract
from rollout.app import create_app
from rollout.store import FeedbackRow
from rollout.store_health import HealthCounts, latency_bucket

RULE = {"min_outcomes": 200, "draws": 2000}


def seed_outcomes(client: Any, rewards: dict[str, tuple[int, int]]) -> None:
    """Record (outcomes, successes) per arm in the service's real store."""
    store = client.app.state.service.store
    rows = []
    for arm, (n, wins) in rewards.items():
        rows += [FeedbackRow(f"{arm}-{i}", float(i < wins), arm, time.time()) for i in range(n)]
    # The predictions behind them (none failed, all fast): what the guardrail metrics read.
    health = {arm: HealthCounts(n, 0, {latency_bucket(2.0): n}) for arm, (n, _) in rewards.items()}
    store.apply_batch([], rows, health=health)


@pytest.mark.parametrize("auto", [False, True])
def test_decision_rule_recommends_or_promotes(rollout_home: Path, auto: bool) -> None:
    settings = make_settings(rollout_home, auto_decisions=auto, decision_params=RULE)
    with TestClient(create_app(settings)) as client:
        seed_outcomes(client, {"v1": (600, 30), "v2": (600, 120), "v3": (600, 30)})
        response = client.post("/admin/decide", headers=ADMIN)
        assert response.status_code == 200, response.text
        recs = {r["arm"]: r for r in response.json()["result"]["recommendations"]}
        assert recs["v2"]["action"] == "promote" and recs["v2"]["applied"] is auto
        assert recs["v3"]["action"] != "promote"
        aliases = mlflow_client(rollout_home).get_registered_model(MODEL).aliases
        champion = client.get("/readyz").json()["champion"]
        if auto:
            assert str(aliases["champion"]) == "2" and champion == "v2"
            history = contract.read_history(mlflow_client(rollout_home), MODEL)
            assert any(e.action == "promoted" and e.version == "2" for e in history)
        else:
            assert str(aliases["champion"]) == "1" and champion == "v1"
            shown = client.get("/arms").json()["recommendations"]
            assert any(r["action"] == "promote" and r["arm"] == "v2" for r in shown)


def test_invalid_decision_params_fail_at_start(rollout_home: Path) -> None:
    settings = make_settings(rollout_home, decision_params={"p_best_threshold": 2})
    with pytest.raises(ValueError, match="p_best_threshold"), TestClient(create_app(settings)):
        pass


def test_latency_guardrail_pulls_a_challenger_not_the_champion(rollout_home: Path) -> None:
    settings = make_settings(
        rollout_home, guardrail_max_p99_ms=0.001, guardrail_min_requests=20, policy="fixed"
    )
    with TestClient(create_app(settings)) as client:
        rows = [{"features": FEATURES} for _ in range(200)]
        for _ in range(3):
            assert client.post("/predict", json=rows).status_code == 200
            assert all(r.status_code == 200 for r in [client.post("/predict", json=rows[0])])
        ready = client.get("/readyz").json()
        assert ready["models"]["v1"]["in_rotation"] is True  # the fallback stays
        pulled = [a for a in ("v2", "v3") if not ready["models"][a]["in_rotation"]]
        assert pulled, ready
        assert "guardrail: p99 latency" in ready["models"][pulled[0]]["error"]
        served = {r["arm"] for r in client.post("/predict", json=rows).json()}
        assert not served & set(pulled)


def test_onnx_flavour_serves_the_same_predictions(rollout_home: Path) -> None:
    import mlflow
    import numpy as np
    from rollout_helpers import _train
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    model, frame = _train(seed=0, c=1.0)
    proto = convert_sklearn(
        model,
        initial_types=[
            ("x1", FloatTensorType([None, 1])),
            ("x2", FloatTensorType([None, 1])),
            ("region", StringTensorType([None, 1])),
        ],
        options={id(model.steps[-1][1]): {"zipmap": False}},
    )
    onnx_file = rollout_home / "model.onnx"
    onnx_file.write_bytes(proto.SerializeToString())
    registry = mlflow_client(rollout_home)
    version = registry.get_model_version(MODEL, "1")
    uri = f"sqlite:///{rollout_home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=version.run_id):
        mlflow.log_artifact(str(onnx_file), artifact_path="onnx")
        artifact_uri = mlflow.get_artifact_uri("onnx/model.onnx")
    registry.set_model_version_tag(MODEL, "1", contract.TAG_SERVING_FLAVOUR, "onnx")
    registry.set_model_version_tag(MODEL, "1", contract.TAG_ONNX_URI, artifact_uri)

    with TestClient(create_app(make_settings(rollout_home))) as client:
        client.post("/admin/freeze", json={"frozen": True}, headers=ADMIN)
        assert client.get("/readyz").json()["models"]["v1"]["flavour"] == "onnx"
        rows = [
            {"features": {"x1": float(r.x1), "x2": float(r.x2), "region": r.region}}
            for r in frame.head(50).itertuples()
        ]
        body = client.post("/predict", json=rows).json()
    expected = model.predict_proba(frame.head(50))[:, 1]
    assert [b["arm"] for b in body] == ["v1"] * 50
    np.testing.assert_allclose([b["score"] for b in body], expected, atol=1e-4)
    assert [b["prediction"] for b in body] == list(model.predict(frame.head(50)))
