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
    prefect_harness, settings, tmp_path
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

    client, parent, children = child_runs(settings, "flowtest")
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

    loaded = load_study_result("flowtest", settings)
    assert loaded.best.trial_id == result.best.trial_id
    assert loaded.best.params == result.best.params  # exact types survive

    # Running again with the same name resumes: the budget is spent, nothing is re-run.
    again = optimize(spec, runner="threads")
    assert again.resumed and again.n_trials == 6
    assert len(child_runs(settings, "flowtest")[2]) == 6


@pytest.mark.integration
@pytest.mark.slow
def test_flow_with_warm_process_pool_pruning_and_pareto(
    prefect_harness, settings, tmp_path
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
    client, _, _ = child_runs(settings, "pareto")
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/pareto_front.png" in plots
