"""Schemathesis over the OpenAPI schema: generated requests, valid and invalid, never get a 5xx."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from rollout_helpers import LiveServer, make_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def fuzz(operation: Any, mode: GenerationMode, url: str) -> int:
    """Send a few generated requests for one operation; return how many were sent."""
    headers = {"Authorization": "Bearer s3cret"} if operation.path.startswith("/admin") else {}
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=6,
        deadline=None,
        derandomize=True,  # the same examples every run: no flakes
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(base_url=url, headers=headers, checks=[not_a_server_error])

    try:
        check()
    except Unsatisfiable:
        # No invalid input exists for a route without parameters (GET /healthz).
        assert mode == GenerationMode.NEGATIVE
    return sent


def test_generated_requests_never_get_a_server_error(
    registry_template: Path, tmp_path: Path
) -> None:
    from rollout.app import create_app

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    with LiveServer(create_app(make_settings(home))) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert {op.path for op in operations} >= {"/predict", "/feedback", "/arms"}
        sent = {
            (op.method, op.path, mode.value): fuzz(op, mode, server.url)
            for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        }
    assert sent[("post", "/predict", "negative")] > 0
    assert sent[("post", "/feedback", "positive")] > 0
