"""The ``optimize`` flow: build the data once, then ask -> evaluate (mapped tasks) -> tell."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from tasks.data import StudyData, load_study_data
from tasks.evaluate import EvalConfig, TrialOutcome
from tasks.executors import TrialExecutor, run_trial
from tasks.settings import get_settings
from tasks.spec import StudySpec
from tasks.study import Study, StudyResult, notify

load_data = task(name="load-study-data", cache_policy=NO_CACHE)(load_study_data)
evaluate = task(name="evaluate-trial", task_run_name="trial-{trial_id}", cache_policy=NO_CACHE)(
    run_trial
)


@flow(name="optimize", log_prints=True)
def optimize(spec: StudySpec, runner: str | None = None) -> StudyResult:
    """Optimize ``spec``'s model family; resumes the study saved under ``spec.name``.

    ``runner`` overrides ``settings.task_runner``: threads | processes | dask
    (| prefect-processes, Prefect's own process runner, to compare).
    """
    settings = get_settings().ensure_dirs()
    logger = get_run_logger()
    notify({"phase": "loading data"})
    data: StudyData = load_data(spec, settings)
    logger.info("data: %s", data.summary())
    config = EvalConfig.from_spec(spec)
    notify({"phase": "opening study"})
    study = Study.open(spec, settings)
    notify({"phase": "trials", "finished": study.n_finished})
    kind = runner or settings.task_runner
    data_path = str(settings.studies_dir / f"{spec.name}.data.pkl")
    try:
        with TrialExecutor(
            kind, data, q=spec.q, data_path=data_path, dask_address=settings.dask_address
        ) as executor:
            in_flight: dict[Any, Any] = {}
            while True:
                # Keep q trials in flight: when one finishes, ask for one more.
                for trial in study.ask(spec.q - len(in_flight)):
                    future = executor.submit(
                        evaluate, config, trial.id, trial.params, study.prune_threshold()
                    )
                    in_flight[future] = trial
                if not in_flight:
                    break
                finished = next(as_completed(list(in_flight)))
                trial = in_flight.pop(finished)
                outcome = _outcome(finished, trial)
                record = study.tell(trial, outcome)
                logger.info("trial %s %s %s", trial.id, record.status, _short(record.values, spec))
        notify({"phase": "finishing"})
        result = study.finish()
        report_failed_trials(spec.name, study.records())
    finally:
        study.close()
    logger.info("study %s: %s; best %s", spec.name, result.stop_reason, result.best)
    return result


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


def _outcome(future: Any, trial: Any) -> TrialOutcome:
    """Return the trial's outcome; a task that crashed (not a failed trial) becomes failed."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. a Dask worker lost: the study goes on
        return TrialOutcome(
            trial.params, "failed", reason=f"task crashed: {exc!r}", trial_id=trial.id
        )


def _short(values: dict[str, float], spec: StudySpec) -> str:
    return " ".join(f"{k}={values[k]:.4g}" for k in spec.objectives if k in values)


if __name__ == "__main__":
    import sys

    print(optimize(StudySpec.from_yaml(sys.argv[1])).model_dump_json(indent=2))
