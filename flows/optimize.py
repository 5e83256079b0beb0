"""The ``optimize`` flow: build the data once, then ask -> evaluate (mapped tasks) -> tell."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data import StudyData, load_study_data
from tasks.evaluate import EvalConfig
from tasks.executors import TrialExecutor, run_trial
from tasks.settings import get_settings
from tasks.spec import StudySpec
from tasks.stages import (
    COMPRESSION,
    FEATURE_SELECTION,
    compression_stage,
    defaults_only,
    feature_selection_stage,
    has_stage,
    hpo_stage,
    log_selection,
)
from tasks.study import Study, StudyResult, notify

load_data = task(name="load-study-data", cache_policy=NO_CACHE)(load_study_data)
evaluate = task(name="evaluate-trial", task_run_name="trial-{trial_id}", cache_policy=NO_CACHE)(
    run_trial
)


@flow(name="optimize", log_prints=True)
def optimize(spec: StudySpec, runner: str | None = None) -> StudyResult:
    """Optimize ``spec``'s model family; resumes the study saved under ``spec.name``.

    ``runner`` overrides ``settings.task_runner``: threads | processes | dask
    (| prefect-processes, Prefect's own process runner, to compare). With ``stages:``
    (tasks/stages.py) the columns are selected first and the candidates compressed last,
    each stage a task and an MLflow run under the study's.
    """
    settings = get_settings().ensure_dirs()
    logger = get_run_logger()
    notify({"phase": "loading data"})
    data: StudyData = load_data(spec, settings)
    logger.info("data: %s", data.summary())
    selection = None
    if has_stage(spec, FEATURE_SELECTION):
        notify({"phase": "selecting features"})
        spec, data, selection = feature_selection_stage(spec, data)
        logger.info("features kept: %s", selection.summary())
    spec = defaults_only(spec)
    notify({"phase": "opening study"})
    study = Study.open(spec, settings)
    try:
        if selection is not None:
            log_selection(study.client, study.experiment_id, study.parent_run_id, spec, selection)
        notify({"phase": "trials", "finished": study.n_finished})
        run_trials(study, spec, data, settings, runner or settings.task_runner)
        notify({"phase": "finishing"})
        result = study.finish()
        report_failed_trials(spec.name, study.records())
    finally:
        study.close()
    logger.info("study %s: %s; best %s", spec.name, result.stop_reason, result.best)
    if spec.stages is not None:
        hpo_stage(spec, result, data, settings)
    if has_stage(spec, COMPRESSION):
        notify({"phase": "compressing"})
        found = compression_stage(spec, result, data, settings)
        logger.info("compression: best trade-off %s", found["chosen"])
    return result


def run_trials(study: Study, spec: StudySpec, data: StudyData, settings: Any, kind: str) -> None:
    """The HPO loop: keep q trials in flight, tell each as it finishes, until the budget."""
    logger = get_run_logger()
    config = EvalConfig.from_spec(spec)
    data_path = str(settings.studies_dir / f"{spec.name}.data.pkl")
    with TrialExecutor(
        kind,
        data,
        q=spec.q,
        data_path=data_path,
        dask_address=settings.dask_address,
        on_start=study.writer.release,
    ) as executor:
        # Trial runs reach MLflow while the next trial evaluates, not between two trials.
        study.writer.hold = executor.channel is not None
        in_flight: dict[Any, Any] = {}
        while True:
            # Keep q trials in flight: when one finishes, ask for one more.
            for trial in study.ask(spec.q - len(in_flight)):
                future = executor.submit(
                    evaluate,
                    config,
                    trial.id,
                    trial.params,
                    study.prune_threshold(),
                    study.pruner_for(trial),
                )
                in_flight[future] = trial
            if not in_flight:
                break
            finished, outcome = executor.wait_next(in_flight)
            trial = in_flight.pop(finished)
            record = study.tell(trial, outcome)
            logger.info("trial %s %s %s", trial.id, record.status, _short(record.values, spec))


def report_failed_trials(study: str, records: list[Any]) -> str | None:
    """Say which trials failed and why, as a Prefect artifact of the run (None: none failed).

    A failed trial is not a failed step: the study goes on and the run completes. The
    result counts them (``n_failed``); this artifact names each one and its reason.
    """
    failed = [r for r in records if r.status == "failed"]
    if not failed:
        return None
    from prefect.artifacts import create_markdown_artifact

    from tasks.study_report import artifact_key

    rows = "\n".join(f"| {r.trial_id} | {str(r.reason or '-')[:300]} |" for r in failed)
    text = (
        f"{len(failed)} of {len(records)} trials of study {study} failed; the study went on "
        f"without them.\n\n| trial | reason |\n|---|---|\n{rows}"
    )
    get_run_logger().warning("%d trial(s) failed: see the artifact", len(failed))
    create_markdown_artifact(
        markdown=text,
        key=artifact_key(f"{study}-failed-trials"),
        description="trials that failed (skipped by the study)",
    )
    return text


def _short(values: dict[str, float], spec: StudySpec) -> str:
    return " ".join(f"{k}={values[k]:.4g}" for k in spec.objectives if k in values)


if __name__ == "__main__":
    import sys

    print(optimize(StudySpec.from_yaml(sys.argv[1])).model_dump_json(indent=2))
