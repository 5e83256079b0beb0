"""Schemathesis over the service's own OpenAPI document: every check, with and without the
admin token; generated requests, valid and invalid, get no 5xx and no schema violation."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from rollout_helpers import LiveServer, make_settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, positive_data_acceptance

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = {"Authorization": "Bearer s3cret"}
# Every check but one: which features /predict takes is the champion's signature, known only
# at run time, so a body the static schema allows ({"features": {}}) is rightly a 422.
EXCLUDED = [positive_data_acceptance]


def fuzz(operation: Any, mode: GenerationMode, url: str, headers: dict[str, str]) -> Counter[str]:
    """Send a few generated requests for one operation with every check; count the outcomes."""
    seen: Counter[str] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=8,
        deadline=None,
        derandomize=True,  # the same examples every run: no flakes
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: Any) -> None:
        response = case.call_and_validate(base_url=url, headers=headers, excluded_checks=EXCLUDED)
        seen["cases"] += 1
        seen["5xx"] += response.status_code >= 500

    try:
        check()
    except Unsatisfiable:
        # No invalid input exists for a route without parameters (GET /healthz).
        assert mode == GenerationMode.NEGATIVE
    return seen


def test_generated_requests_pass_every_check(registry_template: Path, tmp_path: Path) -> None:
    from rollout.app import create_app

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    totals: Counter[str] = Counter()
    with LiveServer(create_app(make_settings(home))) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert {op.path for op in operations} >= {"/predict", "/feedback", "/arms"}
        for op in operations:
            for headers in ({}, TOKEN):
                if headers and not op.path.startswith("/admin"):
                    continue
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    totals += fuzz(op, mode, server.url, headers)
    print(f"schemathesis: {totals['cases']} cases, {len(CHECKS.get_all())} checks, "
          f"{totals['5xx']} 5xx")  # fmt: skip
    assert totals["cases"] > 100 and totals["5xx"] == 0
