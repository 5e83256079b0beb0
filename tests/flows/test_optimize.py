"""The optimize flow through Prefect: MLflow parent + child runs, artifacts, resume, runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.spec import StudySpec

ROOT = Path(__file__).resolve().parents[2]


def write_data(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    signal_ = frame["x1"] + 0.8 * (frame["colour"] == "red") + rng.normal(0, 0.8, n)
    frame["y"] = (signal_ > 0.4).astype(int)
    frame.to_csv(path, index=False)
    return path


def make_spec(data: Path, name: str = "flowtest", **extra) -> StudySpec:
    raw = {
        "name": name,
        "data": {"source": "file", "path": str(data), "target": "y", "timestamp_column": None},
        "model": {"family": "logistic_regression"},
        "optimizer": "random",
        "objectives": {"roc_auc": "maximize"},
        "budget": {"max_trials": 6},
        "q": 2,
        "evaluation": {"folds": 3, "latency_calls": 10},
        "gates": {"performance": None},
    }
    for key, value in extra.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return StudySpec.parse(raw)


@pytest.fixture(scope="module")
def flow_settings(tmp_path_factory: pytest.TempPathFactory):
    """One data folder for the module: creating an MLflow SQLite store costs seconds."""
    from tasks.settings import PipelineSettings, get_settings

    home = tmp_path_factory.mktemp("flowhome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BANDITFLOW_HOME", str(home))
        get_settings.cache_clear()
        yield PipelineSettings(home=home).ensure_dirs()
    get_settings.cache_clear()


def child_runs(settings, study: str):
    from tasks.study import _child_runs, _find_study_run
    from tasks.tracking import configure_mlflow

    client = configure_mlflow(settings)
    exp = client.get_experiment_by_name(study)
    parent = _find_study_run(client, exp.experiment_id)
    return client, parent, _child_runs(client, exp.experiment_id, parent.info.run_id)


@pytest.mark.integration
@pytest.mark.slow
def test_flow_logs_parent_child_runs_artifacts_and_result(
    prefect_harness, flow_settings, tmp_path
) -> None:
    from flows.optimize import optimize
    from tasks.study import load_study_result

    spec = make_spec(write_data(tmp_path / "d.csv"), budget={"max_trials": 6, "pruning": None})
    result = optimize(spec, runner="threads")
    assert result.n_trials == 6 and result.n_completed == 6
    assert result.best is not None and 0.6 < result.best.values["roc_auc"] <= 1.0
    assert result.best.run_id is not None
    assert result.stop_reason.startswith("max_trials")
    assert Path(result.state_path).exists()

    client, parent, children = child_runs(flow_settings, "flowtest")
    assert parent.info.run_id == result.parent_run_id
    assert parent.data.tags["banditflow.study"] == "flowtest"
    assert parent.data.tags["banditflow.role"] == "study"
    assert len(children) == 6
    ids = sorted(int(c.data.tags["banditflow.trial_id"]) for c in children)
    assert ids == list(range(6))
    one = children[0].data
    assert {"roc_auc", "log_loss", "latency_ms", "model_bytes", "fit_seconds"} <= set(one.metrics)
    assert "C" in one.params and one.params["seed"] == "0"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"spec.yaml", "study_result.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/optimization_history.png" in plots

    loaded = load_study_result("flowtest", flow_settings)
    assert loaded.best.trial_id == result.best.trial_id
    assert loaded.best.params == result.best.params  # exact types survive

    # Running again with the same name resumes: the budget is spent, nothing is re-run.
    again = optimize(spec, runner="threads")
    assert again.resumed and again.n_trials == 6
    assert len(child_runs(flow_settings, "flowtest")[2]) == 6


@pytest.mark.integration
@pytest.mark.slow
def test_flow_with_warm_process_pool_pruning_and_pareto(
    prefect_harness, flow_settings, tmp_path
) -> None:
    from flows.optimize import optimize

    spec = make_spec(
        write_data(tmp_path / "d.csv"),
        name="pareto",
        optimizer="random",
        objectives={"roc_auc": "maximize", "latency_ms": "minimize"},
        budget={"max_trials": 8, "pruning": {"after_folds": 1, "min_trials": 2}},
    )
    result = optimize(spec, runner="processes")
    assert result.n_trials == 8
    assert result.n_completed + result.n_pruned + result.n_failed == 8
    assert result.best is None and 1 <= len(result.pareto) <= result.n_completed
    client, _, _ = child_runs(flow_settings, "pareto")
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/pareto_front.png" in plots


RUN_FLOW = """
import sys
from flows.optimize import optimize
from tasks.spec import StudySpec
optimize(StudySpec.model_validate_json(sys.argv[1]), runner="threads")
"""


@pytest.mark.integration
@pytest.mark.slow
def test_resume_after_sigkill_reruns_no_finished_trial(
    prefect_harness, flow_settings, tmp_path
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.optimize import optimize
    from tasks.study import add_progress_listener

    spec = make_spec(
        write_data(tmp_path / "d.csv", n=600),
        name="crashy",
        model={"family": "random_forest", "fixed": {"n_estimators": 20}},
        budget={"max_trials": 10},
    )
    state = flow_settings.studies_dir / "crashy.json"
    env = {**os.environ, "BANDITFLOW_HOME": str(flow_settings.home), "PYTHONPATH": str(ROOT)}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the harness's server, not ephemeral
    log_path = tmp_path / "flow.log"
    log = log_path.open("wb")  # a file, not a pipe: a full pipe would block the flow
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_FLOW, spec.model_dump_json()],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    finished_before: dict[str, dict] = {}
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                history = json.loads(state.read_text())["history"]
                finished_before = {h["id"]: h for h in history if h["status"] != "pending"}
                if len(finished_before) >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        log.close()
    # What the state held at the kill (the file is replaced atomically after every tell).
    saved = json.loads(state.read_text())["history"]
    finished = {h["id"] for h in saved if h["status"] != "pending"}
    assert 3 <= len(finished) < 10

    told: list[str] = []
    remove = add_progress_listener(lambda event: told.append(event["record"].trial_id))
    try:
        result = optimize(spec, runner="threads")
    finally:
        remove()
    assert result.resumed and result.n_trials == 10
    assert not finished & set(told), "a finished trial was evaluated again"
    assert sorted(finished | set(told), key=int) == [str(i) for i in range(10)]
    # Every trial has exactly one MLflow child run (the ones the crash kept from MLflow
    # are logged from the saved state, not re-run).
    _, _, children = child_runs(flow_settings, "crashy")
    ids = sorted(int(c.data.tags["banditflow.trial_id"]) for c in children)
    assert ids == list(range(10))


@pytest.mark.integration
@pytest.mark.slow
def test_flow_on_a_dask_local_cluster(prefect_harness, flow_settings, tmp_path) -> None:
    pytest.importorskip("distributed", reason="pip install 'banditflow[dask]'")
    from flows.optimize import optimize

    spec = make_spec(write_data(tmp_path / "d.csv"), name="dasky", budget={"max_trials": 4})
    result = optimize(spec, runner="dask")
    assert result.n_completed == 4
    assert len(child_runs(flow_settings, "dasky")[2]) == 4


def test_study_budget_patience_and_pruning_median(flow_settings, tmp_path) -> None:
    from tasks.evaluate import TrialOutcome
    from tasks.study import Study

    spec = make_spec(
        tmp_path / "unused.csv",
        name="patience",
        budget={"max_trials": 20, "patience": 3, "pruning": {"after_folds": 2, "min_trials": 3}},
        warm_start=[{"C": 0.5, "penalty": "l2"}],
    )
    study = Study.open(spec, flow_settings)
    try:
        scores = [0.70, 0.80, 0.75, 0.79, 0.80]  # no improvement on the best after trial 1
        for i, score in enumerate(scores):
            assert not study.done
            (trial,) = study.ask(1)
            if i == 0:  # the library defaults first (scikit-learn's C=1.0, l2), then warm start
                assert trial.params == {"C": 1.0, "penalty": "l2"}
                assert study.role(trial.id) == "defaults"
            if i == 1:
                assert trial.params == {"C": 0.5, "penalty": "l2"}
                assert study.role(trial.id) == "warm_start"
            outcome = TrialOutcome(
                trial.params,
                "completed",
                values={"roc_auc": score},
                running_scores=[score - 0.1, score - 0.05, score],
            )
            study.tell(trial, outcome)
            if i == 2:  # median of the running scores after 2 folds: 0.65, 0.75, 0.70
                assert study.prune_threshold() == pytest.approx(0.70)
        assert study.done and "patience" in study.stop_reason
        assert study.ask(1) == []
        result = study.finish()
    finally:
        study.close()
    assert result.n_completed == 5 and result.best.values["roc_auc"] == 0.80
    assert result.best.trial_id == "1" and result.best.role == "warm_start"
    assert result.defaults.trial_id == "0"
    assert result.tuning_gain == pytest.approx(0.10)  # 0.80 best - 0.70 defaults


@pytest.mark.integration
@pytest.mark.slow
def test_cli_trials_means_more_trials_shows_phases_and_refuses_a_changed_spec(
    prefect_harness, flow_settings, tmp_path
) -> None:
    import yaml
    from typer.testing import CliRunner

    from banditflow.cli import app
    from tasks.study import add_progress_listener

    spec = make_spec(write_data(tmp_path / "d.csv"), name="clitrials", budget={"max_trials": 3})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    phases: list[str] = []
    remove = add_progress_listener(lambda e: phases.append(str(e.get("phase"))), phases=True)
    try:
        first = CliRunner().invoke(app, ["optimize", str(path), "--trials", "2"])
        again = CliRunner().invoke(app, ["optimize", str(path), "--trials", "2"])
    finally:
        remove()
    assert first.exit_code == 0, first.output
    assert "2 completed, 0 pruned" in first.output
    assert "over the library defaults" in first.output
    assert again.exit_code == 0, again.output
    assert "resuming study 'clitrials': 2 trials so far, 2 more (budget 4)" in again.output
    assert "4 completed, 0 pruned" in again.output
    # The bar names each phase before the first trial: data, the study, then trials.
    assert phases[:3] == ["loading data", "opening study", "trials"]
    assert "finishing" in phases
    changed = spec.model_dump(mode="json")
    changed["evaluation"]["folds"] = 4
    path.write_text(yaml.safe_dump(changed))
    refused = CliRunner().invoke(app, ["optimize", str(path), "--trials", "1"])
    assert refused.exit_code == 2
    assert "evaluation.folds (3 -> 4)" in " ".join(refused.output.split())


@pytest.mark.integration
@pytest.mark.slow
def test_flow_with_asha_in_the_warm_pool_prunes_and_logs_killed_runs(
    prefect_harness, flow_settings, tmp_path
) -> None:
    """Pool workers report every rung to the study's journal; Optuna's ASHA cuts trials."""
    import optuna

    from flows.optimize import optimize

    spec = make_spec(
        write_data(tmp_path / "d.csv", n=400),
        name="ashaflow",
        model={"family": "random_forest"},
        budget={"max_trials": 8, "pruning": {"rule": "asha"}},
    )
    result = optimize(spec, runner="processes")
    assert result.n_trials == 8 and result.n_pruned >= 1
    assert result.n_completed + result.n_pruned == 8
    _, _, children = child_runs(flow_settings, "ashaflow")
    assert sorted(c.info.status for c in children).count("KILLED") == result.n_pruned
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(
            str(flow_settings.studies_dir / "ashaflow.pruner.log")
        )
    )
    trials = optuna.load_study(study_name="ashaflow", storage=journal).trials
    states = sorted(t.state.name for t in trials)
    assert states.count("PRUNED") == result.n_pruned and "RUNNING" not in states
    assert all(t.intermediate_values for t in trials)  # reported from the worker processes
