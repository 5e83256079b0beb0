"""The study loop without Prefect: budget, pruning medians across a resume, the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.spec import StudySpec


def make_spec(name: str = "studytest", **extra) -> StudySpec:
    raw = {
        "name": name,
        "data": {"source": "file", "path": "unused.csv", "target": "y", "timestamp_column": None},
        "model": {"family": "logistic_regression"},
        "optimizer": "random",
        "objectives": {"roc_auc": "maximize"},
        "budget": {"max_trials": 10},
        "evaluation": {"folds": 3, "latency_calls": 10},
        "gates": {"performance": None},
    }
    raw.update(extra)
    return StudySpec.parse(raw)


def tell_scores(study, scores: list[float]) -> None:
    from tasks.evaluate import TrialOutcome

    for score in scores:
        (trial,) = study.ask(1)
        outcome = TrialOutcome(
            trial.params,
            "completed",
            values={"roc_auc": score},
            running_scores=[score - 0.2, score - 0.1, score],
        )
        study.tell(trial, outcome)


def test_pruning_median_survives_a_resume_with_after_folds_2(settings) -> None:
    """The median read 0.7 before a kill and None after it (issue 10's bug)."""
    from tasks.study import Study

    spec = make_spec(budget={"max_trials": 10, "pruning": {"after_folds": 2, "min_trials": 3}})
    study = Study.open(spec, settings)
    try:
        tell_scores(study, [0.75, 0.80, 0.85])  # running scores after 2 folds: .65 .70 .75
        before = study.prune_threshold()
    finally:
        study.close()  # what a kill leaves: the state file, no finish()
    assert before == pytest.approx(0.70)
    resumed = Study.open(spec, settings)
    try:
        assert resumed.resumed
        assert resumed.prune_threshold() == pytest.approx(before)
        tell_scores(resumed, [0.95])  # one more: .65 .70 .75 .85 -> median .725
        assert resumed.prune_threshold() == pytest.approx(0.725)
    finally:
        resumed.close()


def test_no_threshold_before_min_trials(settings) -> None:
    from tasks.study import Study

    spec = make_spec(
        name="few", budget={"max_trials": 10, "pruning": {"after_folds": 3, "min_trials": 3}}
    )
    study = Study.open(spec, settings)
    try:
        tell_scores(study, [0.7, 0.8])
        assert study.prune_threshold() is None
        tell_scores(study, [0.9])
        assert study.prune_threshold() == pytest.approx(0.8)  # fold 3 running = final score
    finally:
        study.close()


def test_finish_and_read_back_build_the_same_result(settings) -> None:
    """One builder: the finished result and MLflow's rebuild agree on best, top and counts."""
    from tasks.study import Study
    from tasks.study_record import find_study_run, load_study_result
    from tasks.tracking import configure_mlflow

    spec = make_spec(name="same", budget={"max_trials": 4})
    study = Study.open(spec, settings)
    try:
        tell_scores(study, [0.7, 0.9, 0.8, 0.6])
        result = study.finish()
    finally:
        study.close()
    assert result.best is not None and result.best.values["roc_auc"] == 0.9
    assert [r.values["roc_auc"] for r in result.top] == [0.9, 0.8, 0.7, 0.6]
    assert Path(result.state_path).exists()
    loaded = load_study_result("same", settings)
    assert loaded.best == result.best and loaded.top == result.top
    # Rebuilt from the child runs (as for a crashed study) the ranking is the same.
    client = configure_mlflow(settings)
    exp = client.get_experiment_by_name("same")
    parent = find_study_run(client, exp.experiment_id)
    client.delete_tag(parent.info.run_id, "banditflow.stop_reason")
    from tasks.study_record import child_runs, record_from_run
    from tasks.study_result import build_result

    records = sorted(
        (record_from_run(r) for r in child_runs(client, exp.experiment_id, parent.info.run_id)),
        key=lambda r: int(r.trial_id),
    )
    rebuilt = build_result(
        records,
        study_name="same",
        experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id,
        objectives=spec.objectives,
    )
    assert rebuilt.best.trial_id == result.best.trial_id
    assert [r.trial_id for r in rebuilt.top] == [r.trial_id for r in result.top]
    assert (rebuilt.n_completed, rebuilt.n_failed) == (result.n_completed, result.n_failed)


def test_defaults_first_then_warm_start_and_the_gain_of_tuning(settings) -> None:
    from tasks.study import Study

    spec = make_spec(
        name="defaults",
        model={"family": "hist_gradient_boosting"},
        budget={"max_trials": 4},
        warm_start=[
            {
                "learning_rate": 0.05,
                "max_iter": 200,
                "max_leaf_nodes": 16,
                "min_samples_leaf": 10,
                "l2_regularization": 0.1,
            }
        ],
    )
    study = Study.open(spec, settings)
    try:
        first, second = study.ask(2)
        # scikit-learn's own defaults; l2_regularization=0.0 is below the log space's 1e-6
        assert first.params == {
            "learning_rate": 0.1,
            "max_iter": 100,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 1e-6,
        }
        assert second.params["learning_rate"] == 0.05
        assert [study.role(first.id), study.role(second.id)] == ["defaults", "warm_start"]
        from tasks.evaluate import TrialOutcome

        study.tell(first, TrialOutcome(first.params, "completed", values={"roc_auc": 0.81}))
        study.tell(second, TrialOutcome(second.params, "completed", values={"roc_auc": 0.84}))
        tell_scores(study, [0.79, 0.83])
        result = study.finish()
    finally:
        study.close()
    assert result.defaults.trial_id == "0" and result.defaults.role == "defaults"
    assert result.best.trial_id == "1"
    assert result.tuning_gain == pytest.approx(0.03)
    assert any("l2_regularization" in note for note in result.defaults_notes)


def test_defaults_gain_is_never_negative_for_a_minimized_metric(settings) -> None:
    from tasks.evaluate import TrialOutcome
    from tasks.study import Study

    spec = make_spec(name="minimize", objectives={"log_loss": "minimize"}, budget={"max_trials": 3})
    study = Study.open(spec, settings)
    try:
        for value in (0.40, 0.45, 0.50):  # the defaults are the best: tuning won nothing
            (trial,) = study.ask(1)
            study.tell(trial, TrialOutcome(trial.params, "completed", values={"log_loss": value}))
        result = study.finish()
    finally:
        study.close()
    assert result.best.role == "defaults" and result.tuning_gain == 0.0


def test_resuming_with_a_changed_spec_is_refused_naming_the_field(settings) -> None:
    from tasks.study import Study, StudyStateError

    spec = make_spec(name="changed", budget={"max_trials": 5})
    Study.open(spec, settings).close()
    more = make_spec(name="changed", budget={"max_trials": 50}, q=4)  # budget may change
    Study.open(more, settings).close()
    other = make_spec(name="changed", evaluation={"folds": 5, "latency_calls": 10})
    with pytest.raises(StudyStateError, match=r"evaluation\.folds \(3 -> 5\).*changed-v2"):
        Study.open(other, settings)


def test_an_unavailable_family_is_refused_at_validation_with_the_pip_line() -> None:
    import importlib.util

    from tasks.spec import SpecError

    if importlib.util.find_spec("xgboost") is not None:
        pytest.skip("xgboost is installed here")
    with pytest.raises(SpecError, match=r"model\.family: .*pip install 'banditflow\[xgboost\]'"):
        make_spec(name="xgb", model={"family": "xgboost"})


def test_max_cpu_seconds_stops_the_study_with_the_best_so_far(settings) -> None:
    from tasks.evaluate import TrialOutcome
    from tasks.study import Study

    spec = make_spec(name="cpu", budget={"max_trials": 20, "max_cpu_seconds": 10.0})
    study = Study.open(spec, settings)
    try:
        told = 0
        while not study.done:
            trials = study.ask(2)  # two in flight, as the flow keeps q of them
            for trial, score in zip(trials, (0.7 + told / 100, 0.71 + told / 100), strict=False):
                values = {"roc_auc": score, "cpu_seconds": 3.0}
                study.tell(trial, TrialOutcome(trial.params, "completed", values=values))
                told += 1
        assert study.ask(1) == []
        result = study.finish()
    finally:
        study.close()
    # 3 CPU-seconds a trial: after 4 trials (12 s >= 10 s) no more are asked for.
    assert told == 4 and result.n_completed == 4
    assert result.cpu_seconds == pytest.approx(12.0)
    assert result.stop_reason.startswith("max_cpu_seconds=10 spent")
    assert result.best.values["roc_auc"] == pytest.approx(0.73)
    # The CPU spent survives a resume: the reopened study is still out of budget.
    again = Study.open(spec, settings)
    try:
        assert again.cpu_seconds() == pytest.approx(12.0) and again.done
    finally:
        again.close()


def test_a_trial_reports_its_own_cpu_time(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from tasks.data import load_study_data
    from tasks.evaluate import evaluate_trial

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=400), "x2": rng.normal(size=400)})
    frame["y"] = (frame["x1"] + rng.normal(0, 0.5, 400) > 0).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = make_spec(
        name="cputrial",
        data={
            "source": "file",
            "path": str(tmp_path / "d.csv"),
            "target": "y",
            "timestamp_column": None,
        },
    )
    outcome = evaluate_trial(spec, {"C": 1.0, "penalty": "l2"}, load_study_data(spec))
    assert outcome.status == "completed", outcome.reason
    cpu = outcome.values["cpu_seconds"]
    # One thread's CPU time: positive, and never more than the trial's own wall time.
    assert 0 < cpu <= outcome.values["eval_seconds"] + 1e-3


def test_three_objectives_pareto_set_and_its_plot(settings) -> None:
    from tasks.evaluate import TrialOutcome
    from tasks.optimizers.base import dominates
    from tasks.study import Study
    from tasks.study_report import pareto_figure

    objectives = {"accuracy": "maximize", "latency_ms": "minimize", "model_bytes": "minimize"}
    spec = make_spec(name="three", objectives=objectives, budget={"max_trials": 12})
    rng = np.random.default_rng(0)
    study = Study.open(spec, settings)
    try:
        while not study.done:
            for trial in study.ask(2):
                acc = float(rng.uniform(0.8, 0.95))
                values = {  # more accurate: slower and bigger, with noise
                    "accuracy": acc,
                    "latency_ms": float(10 * acc + rng.normal(0, 0.5)),
                    "model_bytes": float(1e5 * acc + rng.normal(0, 3e3)),
                }
                study.tell(trial, TrialOutcome(trial.params, "completed", values=values))
        result = study.finish()
        records = study.records()
    finally:
        study.close()
    assert result.best is None and 2 <= len(result.pareto) < 12
    loss = {
        r.trial_id: [-r.values["accuracy"], r.values["latency_ms"], r.values["model_bytes"]]
        for r in records
    }
    front = {r.trial_id for r in result.pareto}
    for member in front:  # nothing dominates a member; every other trial is dominated
        assert not any(dominates(loss[o], loss[member]) for o in loss)
    for other in set(loss) - front:
        assert any(dominates(loss[m], loss[other]) for m in front)
    figure = pareto_figure(result, records)
    assert len(figure.axes) == 3  # accuracy-latency, accuracy-bytes, latency-bytes
    from tasks.tracking import configure_mlflow

    plots = {
        a.path for a in configure_mlflow(settings).list_artifacts(result.parent_run_id, "plots")
    }
    assert "plots/pareto_front.png" in plots
