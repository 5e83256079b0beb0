"""Study plots (importance, parallel coordinates, slices) and metric columns on the parent run.

The importance test uses a known response (the score depends on one parameter only); the
others write to a real SQLite MLflow store, the last one through the optimize flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.study_plots import completed, log_study_plots, param_columns, param_importance
from tasks.study_result import TrialRecord, build_result

PNGS = {"plots/param_importance.png", "plots/parallel_coordinates.png", "plots/slice.png"}


def records(n: int = 40, seed: int = 1) -> list[TrialRecord]:
    """Trials whose score depends on ``lr`` alone (a peak at 10**-2); ``depth``, ``kind`` idle."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, 0))
        depth = int(rng.integers(2, 12))
        kind = str(rng.choice(["gini", "entropy"]))
        score = 0.9 - 0.05 * (np.log10(lr) + 2) ** 2
        values = {"roc_auc": float(score), "model_bytes": float(1000 * depth)}
        params: dict[str, Any] = {"lr": lr, "depth": depth, "kind": kind}
        if i % 4 == 0:
            params.pop("kind")  # a conditional parameter, absent in some trials
        out.append(TrialRecord(trial_id=str(i), params=params, values=values))
    out.append(TrialRecord(trial_id=str(n), params={"lr": 0.1}, status="failed"))
    return out


def test_columns_know_log_scales_categories_and_absent_values() -> None:
    done = [r for r in records() if r.status == "completed"]
    columns = {c.name: c for c in param_columns(done)}
    assert columns["lr"].log and not columns["depth"].log
    assert columns["kind"].categories == ["entropy", "gini"]
    assert np.isnan(columns["kind"].values[0]) and np.isfinite(columns["kind"].values[1])
    scaled = columns["lr"].scaled()
    assert scaled.min() == pytest.approx(0.0) and scaled.max() == pytest.approx(1.0)


def test_importance_finds_the_one_parameter_that_matters() -> None:
    done = [r for r in records() if r.status == "completed"]
    columns = param_columns(done)
    scores = np.array([r.values["roc_auc"] for r in done])
    importance = param_importance(columns, scores, seed=0)
    assert sum(importance.values()) == pytest.approx(1.0)
    # Tolerance: the forest is seeded; lr carries all of the signal, the others none.
    assert importance["lr"] > 0.8, importance
    assert max(importance["depth"], importance["kind"]) < 0.1, importance
    assert param_importance(columns, scores[:2]) == dict.fromkeys(importance, 0.0)


@pytest.fixture
def client(settings: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, settings.registry_uri)


def _parent(client: Any, name: str) -> str:
    experiment = client.create_experiment(name)
    return str(client.create_run(experiment).info.run_id)


def test_plots_and_metric_columns_on_a_multi_objective_parent_run(client: Any) -> None:
    trials = records()
    run_id = _parent(client, "plots-multi")
    objectives = {"roc_auc": "maximize", "model_bytes": "minimize"}
    result = build_result(
        trials,
        study_name="plots-multi",
        experiment_id="0",
        parent_run_id=run_id,
        objectives=objectives,
    )
    logged = log_study_plots(client, result, trials)
    assert set(logged) == PNGS
    stored = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert PNGS | {"plots/param_importance.json"} <= stored
    metrics = client.get_run(run_id).data.metrics
    best = max(r.values["roc_auc"] for r in completed(result, trials))
    assert metrics["n_trials"] == len(trials) and metrics["best_roc_auc"] == pytest.approx(best)
    assert metrics["pareto_size"] == len(result.pareto) >= 2
    # The runs table of the experiment shows them as columns (search reads the same values).
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_runs([experiment], order_by=["metrics.best_roc_auc DESC"])
    assert found and found[0].data.metrics["pareto_size"] == len(result.pareto)


def test_a_study_without_a_completed_trial_still_gets_its_columns(client: Any) -> None:
    trials = [TrialRecord(trial_id="0", params={"C": 1.0}, status="failed", reason="boom")]
    run_id = _parent(client, "plots-none")
    result = build_result(
        trials,
        study_name="plots-none",
        experiment_id="0",
        parent_run_id=run_id,
        objectives={"roc_auc": "maximize"},
    )
    assert log_study_plots(client, result, trials) == []
    assert client.get_run(run_id).data.metrics["n_trials"] == 1


def write_rows(path: Path, n: int = 500, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    logit = 1.4 * frame.x1 - frame.x2
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.integration
@pytest.mark.slow
def test_the_optimize_flow_logs_the_plots_and_columns_on_the_study_run(
    prefect_harness: None, settings: Any, client: Any, tmp_path: Path
) -> None:
    from flows.optimize import optimize
    from tasks.spec import StudySpec

    spec = StudySpec.parse(
        {
            "name": "plotted",
            "data": {
                "source": "file",
                "path": str(write_rows(tmp_path / "rows.csv")),
                "target": "y",
                "timestamp_column": None,
            },
            "model": {
                "family": "logistic_regression",
                "space": {"C": {"type": "float", "low": 1e-4, "high": 10.0, "log": True}},
            },
            "optimizer": "random",
            "budget": {"max_trials": 6},
            "q": 1,
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )
    result = optimize(spec, runner="threads")
    stored = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert stored >= PNGS, stored
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert metrics["n_trials"] == result.n_trials
    assert result.best is not None
    assert metrics["best_roc_auc"] == pytest.approx(result.best.values["roc_auc"])
    if result.tuning_gain is not None:
        assert metrics["tuning_gain"] == pytest.approx(result.tuning_gain)
