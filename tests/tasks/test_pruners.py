"""ASHA / Hyperband over a family's fidelity, on real trials: prunes, resumes, CPU budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.spec import StudySpec


def write_data(path: Path, n: int = 600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(6)})
    logit = frame["x0"] - 0.7 * frame["x1"] + 0.5 * frame["x2"] * frame["x3"]
    frame["y"] = (logit + rng.logistic(size=n) * 0.7 > 0).astype(int)
    frame.to_csv(path, index=False)
    return path


def make_spec(data: Path, name: str, family: str = "hist_gradient_boosting", **budget) -> StudySpec:
    return StudySpec.parse(
        {
            "name": name,
            "data": {"source": "file", "path": str(data), "target": "y", "timestamp_column": None},
            "model": {"family": family},
            "optimizer": "random",
            "objectives": {"roc_auc": "maximize"},
            "budget": {"max_trials": 10, "pruning": {"rule": "asha"}, **budget},
            "q": 1,
            "evaluation": {"folds": 3, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )


def run_study(study, data, n: int | None = None) -> list:
    """Ask, evaluate for real (reporting to the pruner), tell: until done or ``n`` trials."""
    from tasks.evaluate import EvalConfig, evaluate_trial

    config = EvalConfig.from_spec(study.spec)
    records = []
    while not study.done and (n is None or len(records) < n):
        for trial in study.ask(1):
            outcome = evaluate_trial(
                config, trial.params, data, trial_id=trial.id, pruner=study.pruner_for(trial)
            )
            records.append(study.tell(trial, outcome))
    return records


def test_the_families_declare_their_fidelity() -> None:
    from tasks.models import get_family

    assert get_family("hist_gradient_boosting").fidelity.param == "max_iter"
    assert get_family("random_forest").fidelity.param == "n_estimators"
    assert get_family("logistic_regression").fidelity.kind == "rows"


def test_iterations_fidelity_is_refused_for_a_family_without_one(tmp_path: Path) -> None:
    from tasks.spec import SpecError

    with pytest.raises(SpecError, match="declares no iterations parameter"):
        make_spec(
            tmp_path / "d.csv",
            "lr",
            family="logistic_regression",
            pruning={"rule": "asha", "fidelity": "iterations"},
        )


def test_a_trial_that_climbs_every_rung_scores_what_a_plain_cv_scores(
    settings, tmp_path: Path
) -> None:
    """Warm-started boosting grown to its full iterations is the model a plain fit makes."""
    from tasks.data import load_study_data
    from tasks.evaluate import EvalConfig, evaluate_trial
    from tasks.study import Study

    pruning = {"rule": "asha", "min_fraction": 1 / 9}  # rungs at 1/9 and 1/3
    spec = make_spec(write_data(tmp_path / "d.csv"), "same", pruning=pruning)
    data = load_study_data(spec)
    study = Study.open(spec, settings)
    try:
        (first,) = run_study(study, data, n=1)  # alone at every rung: always goes on
        optuna_trial = study.rungs.study.trials[0]
    finally:
        study.close()
    plain = evaluate_trial(EvalConfig.from_spec(spec), first.params, data)
    assert first.status == plain.status == "completed", (first.reason, plain.reason)
    assert sorted(optuna_trial.intermediate_values) == [1, 3]  # 1/9 and 1/3 of max_iter
    for metric in ("roc_auc", "log_loss", "accuracy"):
        assert first.values[metric] == pytest.approx(plain.values[metric], abs=1e-12)


def test_nested_rows_keep_the_class_shares() -> None:
    from tasks.fidelity import nested_order

    y = np.array([0] * 90 + [1] * 30)
    order = nested_order(np.arange(120), y, seed=3)
    assert sorted(order) == list(range(120))
    for n in (12, 40, 120):
        assert abs(y[order[:n]].mean() - 0.25) <= 1 / n + 1e-9


def test_asha_prunes_real_trials_and_their_cpu_counts(settings, tmp_path: Path) -> None:
    from tasks.data import load_study_data
    from tasks.study import Study

    spec = make_spec(write_data(tmp_path / "d.csv"), "asha")
    study = Study.open(spec, settings)
    try:
        records = run_study(study, load_study_data(spec))
        result = study.finish()
    finally:
        study.close()
    pruned = [r for r in records if r.status == "pruned"]
    completed = [r for r in records if r.status == "completed"]
    assert len(records) == 10 and pruned and completed
    for r in pruned:  # stopped at a rung below the full fidelity, with its own CPU time
        assert r.values["fidelity_fraction"] in (pytest.approx(1 / 9), pytest.approx(1 / 3))
        assert r.values["cpu_seconds"] > 0 and r.reason.startswith("asha:")
    assert result.n_pruned == len(pruned)
    assert result.cpu_seconds == pytest.approx(sum(r.values["cpu_seconds"] for r in records))
    assert result.best is not None and result.best.status == "completed"
    # A pruned trial cost less CPU than the completed ones, on average.
    mean = lambda rs: np.mean([r.values["cpu_seconds"] for r in rs])  # noqa: E731
    assert mean(pruned) < mean(completed)


def test_asha_rungs_survive_a_resume(settings, tmp_path: Path) -> None:
    """After a kill the pruner still knows every rung: a bad first rung is cut at once."""
    from tasks.data import load_study_data
    from tasks.study import Study

    # Rungs at 1/9, 1/3, all: the report made by hand below completes rung 0 (step 1), so
    # ASHA ignores the evaluation's own step-1 report and judges it again at step 3.
    pruning = {"rule": "asha", "min_fraction": 1 / 9}
    spec = make_spec(write_data(tmp_path / "d.csv"), "asha-resume", max_trials=12, pruning=pruning)
    data = load_study_data(spec)
    study = Study.open(spec, settings)
    try:
        run_study(study, data, n=6)
        (left,) = study.ask(1)  # handed out, never told: what a kill leaves in flight
        study.pruner_for(left)
    finally:
        study.close()
    resumed = Study.open(spec, settings)
    try:
        assert resumed.resumed and resumed.n_finished == 6
        (again,) = resumed.ask(1)
        assert again.id == left.id  # the trial in flight at the kill runs again
        handle = resumed.pruner_for(again)
        # Rung 1 holds the six earlier trials' scores: 0.5 is below the top third of them.
        # (With the rungs lost, a lone trial is always in its own top third: not pruned.)
        assert handle.should_prune(1, 0.5) is True
        from tasks.evaluate import EvalConfig, evaluate_trial

        config = EvalConfig.from_spec(spec)
        outcome = evaluate_trial(config, again.params, data, trial_id=again.id, pruner=handle)
        assert resumed.tell(again, outcome).status == "pruned"  # its rung 1 is the 0.5
        records = run_study(resumed, data)
        assert resumed.n_finished == 12 and {r.status for r in records} <= {"completed", "pruned"}
    finally:
        resumed.close()


def test_max_cpu_seconds_counts_pruned_trials(settings, tmp_path: Path) -> None:
    from tasks.data import load_study_data
    from tasks.study import Study

    spec = make_spec(
        write_data(tmp_path / "d.csv"), "asha-cpu", max_trials=200, max_cpu_seconds=5.0
    )
    study = Study.open(spec, settings)
    try:
        records = run_study(study, load_study_data(spec))
        result = study.finish()
    finally:
        study.close()
    spent = [r.values["cpu_seconds"] for r in records]
    assert result.stop_reason.startswith("max_cpu_seconds=5 spent")
    assert any(r.status == "pruned" for r in records)
    # It stopped asking as soon as the sum (pruned trials included) reached the budget:
    # one trial at a time, so the sum before the last trial was still under it.
    assert sum(spent) >= 5.0 > sum(spent[:-1])
    assert result.cpu_seconds == pytest.approx(sum(spent))
    assert len(records) < 200 and result.best is not None
