"""A retrain's challengers supersede the earlier ones; the probation arm and staging stay."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from contract import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    STAGING,
    add_challenger,
    aliases_of,
    promote,
    read_history,
    stage,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec
from tasks.supersede import supersede_challengers
from tasks.tracking import configure_mlflow

NAME = "conv"


@dataclass
class State:
    version: str
    alias: str | None


@pytest.fixture
def registry(tmp_path):
    """A SQLite registry with versions 1..7 of NAME: v2 champion, v1 on probation."""
    settings = PipelineSettings(home=tmp_path).ensure_dirs()
    client = configure_mlflow(settings)
    client.create_registered_model(NAME)
    experiment = client.create_experiment("s")
    for _ in range(7):
        run = client.create_run(experiment)
        client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    promote(client, NAME, "1", "first")
    add_challenger(client, NAME, "2", "study a")
    promote(client, NAME, "2", "better")
    add_challenger(client, NAME, "1", "probation: watched against version 2")
    add_challenger(client, NAME, "3", "study b")
    add_challenger(client, NAME, "4", "retrain 1")
    return settings, client


def spec(supersede: bool) -> StudySpec:
    return StudySpec.parse({"name": NAME, "registration": {"supersede_challengers": supersede}})


def test_a_retrains_challenger_retires_the_earlier_ones_but_not_probation(registry):
    settings, client = registry
    add_challenger(client, NAME, "5", "retrain 2")
    states = [State("5", "challenger-4"), State("6", None)]
    retired = supersede_challengers.fn(spec(True), "retrain-2", states, settings)
    assert retired == ["3", "4"]
    aliases = aliases_of(client, NAME)
    assert aliases[CHAMPION] == "2" and aliases[PREVIOUS_CHAMPION] == "1"
    serving = sorted(v for a, v in aliases.items() if a.startswith("challenger-"))
    assert serving == ["1", "5"]  # the probation arm and the new one
    reasons = [e.reason for e in read_history(client, NAME) if e.action == "retired"]
    assert len(reasons) == 2 and all("superseded by study retrain-2" in r for r in reasons)
    tags = client.get_model_version(NAME, "3").tags
    assert tags["banditflow.role"] == "retired"


def test_nothing_is_retired_without_the_setting_or_without_a_new_challenger(registry):
    settings, client = registry
    before = aliases_of(client, NAME)
    add_challenger(client, NAME, "5", "first studies")
    assert supersede_challengers.fn(spec(False), "ax", [State("5", "challenger-4")], settings) == []
    # All candidates failed their gates: nothing joined, nothing is superseded.
    assert supersede_challengers.fn(spec(True), "r", [State("6", None)], settings) == []
    # The one passer went to staging (a shadow serves no traffic): the challengers stay.
    stage(client, NAME, "7", "best trade-off")
    assert supersede_challengers.fn(spec(True), "r", [State("7", STAGING)], settings) == []
    assert aliases_of(client, NAME) == before | {"challenger-4": "5", STAGING: "7"}


def test_a_retrain_study_supersedes_and_a_first_study_does_not():
    from datetime import UTC, datetime

    from tasks.retrain import retrain_spec

    first = spec(False)
    start, end = datetime(2026, 4, 13, tzinfo=UTC), datetime(2026, 4, 15, tzinfo=UTC)
    retrain = retrain_spec(first, NAME, start, end, warm_start=[])
    assert retrain.registration.supersede_challengers
    assert not first.registration.supersede_challengers
