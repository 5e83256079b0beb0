"""A stage's MLflow run on a real SQLite store: kept if the result is the same, else superseded."""

from __future__ import annotations

from contract import TAG_KIND, TAG_ROLE


def _parent(client) -> tuple[str, str]:
    experiment_id = client.create_experiment("stage-runs")
    return experiment_id, client.create_run(experiment_id).info.run_id


def test_the_same_result_keeps_its_run_and_another_supersedes_it(settings) -> None:
    from tasks.stage_runs import SUPERSEDED_ROLE, TAG_SUPERSEDED_BY, find_stage_run, log_stage_run
    from tasks.tracking import configure_mlflow

    client = configure_mlflow(settings)
    experiment_id, parent = _parent(client)

    def log(n_trials: int, stop: str) -> str:
        return log_stage_run(
            client,
            experiment_id,
            parent,
            "hpo",
            study="s",
            params={"max_trials": n_trials, "stop_reason": stop},
            metrics={"n_trials": n_trials},
            steps={"curve": [(1, 0.5), (2, 0.7)]},
            texts={"hpo.md": f"{n_trials} trials"},
        )

    first = log(2, "max_trials=2 reached")
    assert log(2, "max_trials=2 reached") == first  # same result: same run, no new one
    second = log(5, "max_trials=5 reached")  # another value for an (immutable) param
    assert second != first
    run = find_stage_run(client, experiment_id, parent, "hpo")
    assert run.info.run_id == second and run.info.status == "FINISHED"
    assert run.data.params["max_trials"] == "5" and run.data.metrics["n_trials"] == 5
    assert [m.value for m in client.get_metric_history(second, "curve")] == [0.5, 0.7]
    old = client.get_run(first)
    assert old.data.tags[TAG_ROLE] == SUPERSEDED_ROLE
    assert old.data.tags[TAG_SUPERSEDED_BY] == second
    assert old.data.tags["mlflow.runName"] == "stage-hpo (superseded)"
    assert old.data.params["max_trials"] == "2"  # the first run's record is kept as it was


def test_a_half_logged_stage_run_is_superseded_and_marked_killed(settings) -> None:
    from tasks.stage_runs import STAGE_ROLE, SUPERSEDED_ROLE, find_stage_run, log_stage_run
    from tasks.tracking import configure_mlflow

    client = configure_mlflow(settings)
    experiment_id, parent = _parent(client)
    # What a crash between create_run and log_batch leaves: a RUNNING run with no metrics.
    tags = {"mlflow.parentRunId": parent, TAG_ROLE: STAGE_ROLE, TAG_KIND: "compression"}
    crashed = client.create_run(experiment_id, tags=tags).info.run_id
    assert find_stage_run(client, experiment_id, parent, "compression").info.run_id == crashed
    new = log_stage_run(
        client, experiment_id, parent, "compression", study="s", metrics={"n_variants": 3}
    )
    assert new != crashed
    assert find_stage_run(client, experiment_id, parent, "compression").info.run_id == new
    old = client.get_run(crashed)
    assert old.data.tags[TAG_ROLE] == SUPERSEDED_ROLE and old.info.status == "KILLED"
