"""The retrain flow end to end in one process (Prefect test API, MLflow in SQLite)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tasks.spec import StudySpec

# --- the flow, end to end in one process (Prefect test API, MLflow in SQLite) -------------
START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=45)


def small_spec(name: str, path: Path) -> StudySpec:
    return StudySpec.parse(
        {
            "name": name,
            "data": {"source": "file", "path": str(path), "start": START, "end": DRIFT_AT},
            "model": {
                "family": "logistic_regression",
                "space": {"C": {"type": "float", "low": 0.001, "high": 100.0, "log": True}},
            },
            "budget": {"max_trials": 4},
            "q": 2,
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {"performance": {"floor": 0.5}, "latency_p95_ms": 500},
            "registration": {"max_candidates": 1, "convert_onnx": False},
        }
    )


def screened(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """Screen three families, not all five: the same choice logic, a third of the fits."""
    from tasks.settings import get_settings

    families = "logistic_regression,logistic_regression_power,hist_gradient_boosting"
    monkeypatch.setenv("BANDITFLOW_RETRAIN_FAMILIES", families)  # the flow's own settings
    monkeypatch.setattr(settings, "retrain_families", families)  # the test's
    get_settings.cache_clear()


@pytest.mark.slow
def test_retrain_on_drift_starts_from_the_previous_best_points(
    settings, prefect_harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.optimize import optimize
    from flows.register import register
    from flows.retrain import retrain
    from tasks.datagen import GeneratorConfig, generate, labelled_sessions
    from tasks.register import load_study_spec
    from tasks.study import load_study_result

    config = GeneratorConfig(
        seed=0, n_customers=600, rows=9_000, start=START, days=60, drift_at=DRIFT_AT
    )
    generate(config, settings.data_dir)
    table = settings.data_dir / "training.parquet"
    labelled_sessions(settings.data_dir).to_parquet(table, index=False)

    spec = small_spec("wsdemo", table)
    first = optimize(spec)
    summary = register("wsdemo", spec)
    assert [v["alias"] for v in summary["versions"]] == ["champion"]

    # A live alarm whose labels all predate the change (labels arrive late): a retrain on
    # them would learn the old world again, so it waits for labels that show the change.
    [alarm] = retrain(
        model="wsdemo",
        start=DRIFT_AT - timedelta(days=7),
        end=DRIFT_AT,
        reason="banditflow.performance.degraded",
    )
    assert alarm["status"] == "waiting-for-labels" and "predate" in alarm["detail"], alarm
    assert alarm["new_study"] is None

    screened(monkeypatch, settings)
    [outcome] = retrain(start=DRIFT_AT, end=config.end, model="wsdemo", warm_start_top=2)
    assert outcome["status"] == "retrained", outcome
    assert set(outcome["drifted_features"]) >= {"discount_rate_7d"}
    # The family screen ran on the retrain's rows and the study searched its winner
    # (listed first); the champion's best points compete in it with its family.
    screen = re.search(
        r"family screen \((\w+) as a loss, cross-validated\): (.*)$", outcome["detail"]
    )
    assert screen is not None, outcome["detail"]
    ranked = [item.split(" ")[0] for item in screen.group(2).split(", ")]
    assert ranked[0] == outcome["family"] and screen.group(1) == spec.primary_objective[0]
    assert set(ranked) == {
        "logistic_regression",
        "logistic_regression_power",
        "hist_gradient_boosting",
    }
    expected = [dict(t.params) for t in first.top[:2]]
    if outcome["family"] == "logistic_regression":  # kept: its best points, re-ranked
        assert sorted(p["C"] for p in outcome["warm_start"]) == sorted(p["C"] for p in expected)
    else:  # another family: it starts from its library defaults, the study's first trial
        assert outcome["warm_start"] == []
    again = load_study_result(outcome["new_study"], settings)
    by_id = sorted(again.top, key=lambda t: int(t.trial_id))
    searched = load_study_spec(again.parent_run_id, settings)
    assert searched.model.family == outcome["family"]
    # It also fitted the labels before the change, weighted by a searched power prior.
    assert searched.data.history_days == settings.retrain_history_days > 0
    assert searched.model.space is not None and "history_weight" in searched.model.space
    prior = re.search(r"prior rows: ([\d,]+) labels", outcome["detail"])
    assert prior is not None and int(prior.group(1).replace(",", "")) > 0, outcome["detail"]
    assert all(0 < t.params["history_weight"] <= 1 for t in again.top), again.top
    # The warm-start points are enqueued first (after the library defaults, when on).
    firsts = [t.params for t in by_id if t.role == "warm_start"]
    assert [p["C"] for p in firsts] == pytest.approx([p["C"] for p in outcome["warm_start"]])
    assert outcome["registered"], "the retrain registered no candidate"


def test_retrain_of_an_unknown_model_says_what_to_do(settings) -> None:
    from flows.retrain import retrain_model
    from tasks.retrain import RetrainError

    with pytest.raises(RetrainError, match="no registered model 'nope'"):
        retrain_model("nope", None, None, settings=settings, warm_start_top=3)


def _drift_events(model: str, timeout: float = 30.0) -> list:
    """Read the ``banditflow.drift.detected`` events of a model from the Prefect API."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    from contract import EVENT_DRIFT_DETECTED, model_resource_id

    EventsWorker.drain_all(timeout=10)
    wanted = EventFilter(
        event=EventNameFilter(name=[EVENT_DRIFT_DETECTED]),
        resource=EventResourceFilter(id_prefix=[model_resource_id(model)]),
    )
    deadline, events = time.monotonic() + timeout, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            events = list(client.read_events(filter=wanted, limit=10).events)
            if events:
                break
            time.sleep(0.5)
    return events


@pytest.mark.slow
def test_every_serving_arm_is_checked_and_a_signal_retrains_once(
    settings, prefect_harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contract import CHAMPION, aliases_of
    from flows.optimize import optimize
    from flows.register import register
    from flows.retrain import retrain
    from tasks.datagen import GeneratorConfig, generate, labelled_sessions
    from tasks.drift_check import check_model
    from tasks.tracking import configure_mlflow

    config = GeneratorConfig(
        seed=1, n_customers=600, rows=9_000, start=START, days=60, drift_at=DRIFT_AT
    )
    generate(config, settings.data_dir)
    table = settings.data_dir / "training.parquet"
    labelled_sessions(settings.data_dir).to_parquet(table, index=False)
    # The champion learnt from the drifted days; a challenger from the days before them.
    late = small_spec("arms", table)
    late = late.model_copy(
        update={"data": late.data.model_copy(update={"start": DRIFT_AT, "end": config.end})}
    )
    early = small_spec("arms-early", table)
    optimize(late)
    register("arms", late)
    optimize(early)
    register("arms-early", early, model_name="arms")
    client = configure_mlflow(settings)
    aliases = aliases_of(client, "arms")
    champion, challenger = aliases[CHAMPION], aliases.get("challenger-1")
    assert challenger is not None, aliases

    screened(monkeypatch, settings)
    # The check that only emits the event stops once a retrain is due: no family screen.
    import tasks.retrain_family

    def no_screen(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a decide-only check screened the families")

    with monkeypatch.context() as patched:
        patched.setattr(tasks.retrain_family, "choose_family", no_screen)
        due = check_model(
            "arms", DRIFT_AT, config.end, settings=settings, warm_start_top=2,
            emit=False, decide_only=True,
        )  # fmt: skip
    assert due.outcome.status == "drift-detected" and due.outcome.family is None
    # The recent window is the champion's own: only the challenger's data has drifted.
    plan = check_model("arms", DRIFT_AT, config.end, settings=settings, warm_start_top=2)
    assert due.spec is not None and plan.spec is not None and due.spec.name == plan.spec.name
    outcome = plan.outcome
    assert set(outcome.arms) == {champion, challenger}
    assert outcome.arms[champion]["drifted_features"] == []
    assert "discount_rate_7d" in outcome.arms[challenger]["drifted_features"]
    assert outcome.status == "retrained" and plan.spec is not None
    [event] = _drift_events("arms")
    assert event.payload["model"] == "arms"
    assert event.payload["version"] == champion
    assert "discount_rate_7d" in event.payload["arms"][challenger]["drifted_features"]
    assert event.payload["start"] == outcome.window["start"]

    # The event's consumer retrains without checking again, warm-started...
    [signalled] = retrain(
        model="arms",
        start=DRIFT_AT,
        end=config.end,
        reason="banditflow.drift.detected",
        drifted_features=event.payload["drifted_features"],  # as the trigger passes them
    )
    assert signalled["status"] == "retrained", signalled
    assert (
        signalled["new_study"] == plan.spec.name and signalled["family"] == plan.spec.model.family
    )
    assert signalled["arms"] == {}  # no check ran
    # ... and learns from the same rows the check chose: the change is placed as it was
    # (by the drifted features on each arm's training data), not the whole window.
    placed = plan.outcome.detail.split(";")[0]
    assert "moved from" in placed and signalled["detail"].startswith(placed), signalled["detail"]
    # ... and a second look at the same window starts nothing and emits nothing.
    again = check_model("arms", DRIFT_AT, config.end, settings=settings, warm_start_top=2)
    assert again.outcome.status == "already-retrained" and again.spec is None
    assert len(_drift_events("arms")) == 1
