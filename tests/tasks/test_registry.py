"""Registration, aliases and champion management against real MLflow stores (SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contract import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    TAG_GATE_FAILURES,
    TAG_GATES,
    TAG_METRIC_PREFIX,
    TAG_PARAMS_HASH,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL,
    NoChampionToRestore,
    aliases_of,
    promote,
    read_history,
    rollback,
)
from tasks.gates import Holdout, gate_and_record
from tasks.registry import (
    GatedVersion,
    RegistryError,
    assign_aliases,
    champion,
    params_hash,
    register_trial,
    select_trials,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec
from tasks.tracking import configure_mlflow, ensure_experiment

FEATURES = {"x1": "numeric", "x2": "numeric", "channel": "categorical"}
SPEC = StudySpec.parse(
    {
        "name": "conv",
        "model": {"family": "logistic_regression"},
        "gates": {
            "performance": {"metric": "roc_auc", "max_regression": 0.02, "floor": 0.7},
            "latency_p95_ms": 500.0,
            "max_model_bytes": 1_000_000,
        },
    }
)


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)


def make_frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "channel": rng.choice(["web", "app", "store"], n),
        }
    )
    logit = 1.6 * X.x1 + 0.9 * X.x2 + 0.6 * (X.channel == "app") - 0.3
    return X, pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), name="y")


@pytest.fixture(scope="module")
def frames():
    X, y = make_frame(800, seed=1)
    Xh, yh = make_frame(400, seed=2)
    return X, y, Holdout(Xh, yh.to_numpy())


@pytest.fixture(scope="module")
def sqlite_settings(tmp_path_factory: pytest.TempPathFactory) -> PipelineSettings:
    return PipelineSettings(home=tmp_path_factory.mktemp("registry")).ensure_dirs()


def _store(settings: PipelineSettings, study: str):
    client = configure_mlflow(settings)
    return client, ensure_experiment(study, settings)


def _register(client, spec, trial, frames, study, experiment_id):
    X, y, _ = frames
    return register_trial(
        client, spec, trial, X, y, study=study, experiment_id=experiment_id, feature_types=FEATURES
    )


# --- units -------------------------------------------------------------------------------
def test_params_hash_ignores_key_order_and_numpy_types():
    assert params_hash({"C": 1.0, "penalty": "l2"}) == params_hash({"penalty": "l2", "C": 1.0})
    assert params_hash({"n": np.int64(3)}) == params_hash({"n": 3})
    assert params_hash({"C": 1.0}) != params_hash({"C": 2.0})


def test_select_trials_takes_the_best_or_the_pareto_set_up_to_the_limit():
    best = Trial("7", {"C": 1.0}, {"roc_auc": 0.9})
    assert select_trials(SPEC, best) == [best]
    top = [Trial(str(i), {"C": i}, {"roc_auc": 0.8 + i / 100}) for i in range(5)]
    assert [t.trial_id for t in select_trials(SPEC, top[4], (), top)] == ["4", "3", "2"]
    multi = StudySpec.parse(
        {
            "name": "m",
            "optimizer": "ax",
            "objectives": {"roc_auc": "maximize", "latency_ms": "minimize"},
            "registration": {"max_candidates": 2},
        }
    )
    front = [
        Trial("1", {}, {"roc_auc": 0.80, "latency_ms": 1.0}),
        Trial("2", {}, {"roc_auc": 0.90, "latency_ms": 3.0}),
        Trial("3", {}, {"roc_auc": 0.85, "latency_ms": 2.0}),
    ]
    assert [t.trial_id for t in select_trials(multi, front[0], front)] == ["2", "3"]
    with pytest.raises(RegistryError, match="no completed trial"):
        select_trials(SPEC, None, [])


# --- against a SQLite store --------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow  # the module's first MLflow store and log_model: imports and migrations
def test_registering_a_trial_twice_keeps_one_version(sqlite_settings, frames):
    import mlflow

    spec = SPEC.model_copy(update={"name": "idempotent"})
    client, experiment_id = _store(sqlite_settings, "study-idem")
    trial = Trial("3", {"C": 0.5}, {"roc_auc": 0.84, "log_loss": 0.45})
    first, model = _register(client, spec, trial, frames, "study-idem", experiment_id)
    again, model_again = _register(client, spec, trial, frames, "study-idem", experiment_id)
    assert first.created and model is not None
    assert not again.created and model_again is None
    assert again.version == first.version == "1"
    assert len(client.search_model_versions("name='idempotent'")) == 1

    tags = client.get_model_version("idempotent", "1").tags
    assert tags[TAG_STUDY] == "study-idem" and tags[TAG_TRIAL] == "3"
    assert tags[TAG_PARAMS_HASH] == params_hash({"C": 0.5})
    assert float(tags[TAG_METRIC_PREFIX + "roc_auc"]) == pytest.approx(0.84)
    info = mlflow.models.get_model_info("models:/idempotent/1")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert [i.name for i in info.signature.inputs.inputs] == ["x1", "x2", "channel"]
    # Same trial id, other parameters (a different study's trial 3): a new version.
    other, _ = _register(client, spec, Trial("3", {"C": 2.0}), frames, "study-idem", experiment_id)
    assert other.created and other.version == "2"


def _lifecycle(settings: PipelineSettings, frames) -> None:
    """Register two, gate, alias, promote, roll back; the history must tell it in order."""
    spec = SPEC
    client, experiment_id = _store(settings, "study-life")
    _, _, holdout = frames
    strong = Trial("1", {"C": 1.0}, {"roc_auc": 0.85})
    # l1 at this strength keeps only x1: hold-out AUC 0.80 against 0.85, both over the floor.
    weak = Trial("2", {"C": 0.005, "penalty": "l1"}, {"roc_auc": 0.80})
    gated = []
    for trial in (weak, strong):
        registered, model = _register(client, spec, trial, frames, "study-life", experiment_id)
        report = gate_and_record(
            client,
            spec.name,
            registered.version,
            registered.run_id,
            model,
            gates=spec.gates,
            holdout=holdout,
            task="binary",
            latency_calls=10,
        )
        assert report.passed, report.to_markdown()
        gated.append(GatedVersion(registered.version, True, report.metric_value))
        artifacts = {Path(a.path).name for a in client.list_artifacts(registered.run_id, "gates")}
        assert artifacts == {"gate_report.json", "gate_report.md", "gate_report.html"}
        assert client.get_model_version(spec.name, registered.version).tags[TAG_GATES] == "passed"
        run = client.get_run(registered.run_id)
        assert run.data.tags[TAG_GATES] == "passed"
        assert run.data.metrics["gate.performance"] == pytest.approx(report.metric_value)
    weak_v, strong_v = gated[0].version, gated[1].version
    assert (gated[1].score or 0.0) > (gated[0].score or 1.0)

    # No champion yet: the best passer is crowned, the other becomes challenger-1.
    aliases = assign_aliases(client, spec.name, gated, study="study-life")
    assert aliases == {strong_v: CHAMPION, weak_v: "challenger-1"}
    # Running the step again changes nothing.
    assert assign_aliases(client, spec.name, gated, study="study-life") == aliases
    assert aliases_of(client, spec.name) == {CHAMPION: strong_v, "challenger-1": weak_v}
    crowned = champion(client, spec.name)
    assert crowned is not None and crowned[0] == strong_v

    promote(client, spec.name, weak_v, "challenger won the bandit rollout")
    assert aliases_of(client, spec.name) == {CHAMPION: weak_v, PREVIOUS_CHAMPION: strong_v}
    rollback(client, spec.name, "conversion dropped after promotion")
    assert aliases_of(client, spec.name) == {CHAMPION: strong_v}
    assert client.get_model_version(spec.name, weak_v).tags[TAG_ROLE] == "rolled-back"
    with pytest.raises(NoChampionToRestore):
        rollback(client, spec.name, "twice")

    story = [(e.version, e.action) for e in read_history(client, spec.name)]
    assert story == [
        (strong_v, "promoted"),
        (weak_v, "challenger"),
        (strong_v, "demoted"),
        (weak_v, "promoted"),
        (strong_v, "restored"),
        (weak_v, "rolled_back"),
    ]
    reasons = [e.reason for e in read_history(client, spec.name)]
    assert reasons[0].startswith("first champion") and "won the bandit" in reasons[3]


@pytest.mark.integration
def test_register_gate_alias_promote_rollback_on_sqlite(sqlite_settings, frames):
    _lifecycle(sqlite_settings, frames)


@pytest.mark.integration
@pytest.mark.slow
def test_register_gate_alias_promote_rollback_on_postgresql(postgres_url, tmp_path, frames):
    uri = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    settings = PipelineSettings(home=tmp_path, mlflow_tracking_uri=uri).ensure_dirs()
    _lifecycle(settings, frames)


@pytest.mark.integration
def test_a_failing_candidate_gets_no_alias_and_says_why(sqlite_settings, frames):
    spec = SPEC.model_copy(update={"name": "strict"})
    client, experiment_id = _store(sqlite_settings, "study-strict")
    _, _, holdout = frames
    registered, model = _register(
        client, spec, Trial("9", {"C": 1.0}), frames, "study-strict", experiment_id
    )
    # A good model, but no pipeline fits in 100 bytes: it fails the size gate only.
    gates = spec.gates.model_copy(update={"max_model_bytes": 100})
    report = gate_and_record(
        client,
        spec.name,
        registered.version,
        registered.run_id,
        model,
        gates=gates,
        holdout=holdout,
        task="binary",
        latency_calls=10,
    )
    assert report.failures == ["size"]
    gated = [GatedVersion(registered.version, report.passed, report.metric_value, report.failures)]
    assert assign_aliases(client, spec.name, gated, study="study-strict") == {
        registered.version: None
    }
    assert aliases_of(client, spec.name) == {}
    tags = client.get_model_version(spec.name, registered.version).tags
    assert tags[TAG_GATES] == "failed" and tags[TAG_GATE_FAILURES] == "size"
    history = read_history(client, spec.name)
    assert [(e.action, e.reason) for e in history] == [("rejected", "failed gates: size")]
    assert champion(client, spec.name) is None


@pytest.mark.integration
def test_cli_promotes_rolls_back_and_lists_versions(sqlite_settings, frames, monkeypatch):
    from typer.testing import CliRunner

    from banditflow.cli import app
    from tasks.settings import get_settings

    spec = SPEC.model_copy(update={"name": "cli-model"})
    client, experiment_id = _store(sqlite_settings, "study-cli")
    for trial in (Trial("1", {"C": 1.0}), Trial("2", {"C": 0.5})):
        _register(client, spec, trial, frames, "study-cli", experiment_id)
    monkeypatch.setenv("BANDITFLOW_HOME", str(sqlite_settings.home))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        first = runner.invoke(app, ["promote", "cli-model", "1", "--reason", "first pick"])
        assert first.exit_code == 0, first.output
        assert "version 1 is champion" in first.output
        second = runner.invoke(app, ["promote", "cli-model", "2"])
        assert second.exit_code == 0 and "was 1" in second.output
        back = runner.invoke(app, ["rollback", "cli-model", "--reason", "bad day"])
        assert back.exit_code == 0 and "version 1 is champion again" in back.output
        assert aliases_of(client, "cli-model") == {CHAMPION: "1"}

        nothing = runner.invoke(app, ["rollback", "cli-model"])
        assert nothing.exit_code == 1 and "nothing to roll back" in nothing.output
        missing = runner.invoke(app, ["promote", "cli-model", "9"])
        assert missing.exit_code == 1 and "no version '9'" in missing.output

        listing = runner.invoke(app, ["models", "cli-model"], env={"COLUMNS": "200"})
        assert listing.exit_code == 0, listing.output
        for text in ("cli-model: 2 version(s)", "champion", "study-cli / 1", "history"):
            assert text in listing.output
        assert "rolled_back" in listing.output and "bad day" in listing.output
        unknown = runner.invoke(app, ["models", "no-such-model"])
        assert unknown.exit_code == 1 and "no registered model" in unknown.output
    finally:
        get_settings.cache_clear()
