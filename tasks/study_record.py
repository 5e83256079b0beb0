"""A study's MLflow record: the parent run, trial child runs written off the hot path, read-back.

MLflow's active run is per thread (STACK.md): every child run names its parent explicitly
through the ``mlflow.parentRunId`` tag, through the client API, from one writer thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from contract import (
    TAG_PARAMS_JSON,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STOP_REASON,
    TAG_STUDY,
    TAG_TRIAL,
)
from tasks.settings import PipelineSettings, get_settings
from tasks.study_result import RESULT_ARTIFACT, StudyResult, TrialRecord, build_result

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.spec import StudySpec

log = logging.getLogger(__name__)

TRIAL_ROLE_PARAM = "trial_role"  # defaults | warm_start | search, a param of each child run
SPEC_ARTIFACT = "spec.yaml"


class StudyNotFoundError(LookupError):
    """No study of that name in MLflow."""


class MlflowWriter:
    """Log trial runs from one background thread, so a tell costs no MLflow round trip."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.errors: list[str] = []
        # hold: keep each trial's run until ``release`` (the executor calls it when the next
        # trial starts evaluating), so the writer never holds the GIL on the loop's path.
        self.hold = False
        self._held: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception as exc:  # noqa: BLE001 - tracking must never end a study
                log.warning("MLflow logging failed: %s", exc)
                self.errors.append(str(exc))
            finally:
                self._queue.task_done()

    def log_trial(
        self,
        record: TrialRecord,
        *,
        seed: int,
        running: list[float] | None = None,
        metric: str | None = None,
    ) -> None:
        self.run(lambda: self._log_trial(record, seed, running or [], metric))

    def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the writer thread, after the runs logged before it (held too)."""
        with self._lock:
            if self.hold:
                self._held.append(job)
                return
        self._queue.put(job)

    def release(self) -> None:
        """Start writing the held runs (safe from any thread)."""
        with self._lock:
            jobs, self._held = self._held, []
        for job in jobs:
            self._queue.put(job)

    def _log_trial(
        self, record: TrialRecord, seed: int, running: list[float], metric: str | None
    ) -> None:
        from mlflow.entities import Metric, Param

        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            TAG_TRIAL: record.trial_id,
            TAG_ROLE: "trial",
            TAG_STATUS: record.status,
            TAG_PARAMS_JSON: json.dumps(record.params, default=str),
        }
        if record.reason:
            tags[TAG_REASON] = record.reason[:4000]
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{record.trial_id}", tags=tags
        )
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in record.values.items()]
        if metric:
            metrics += [
                Metric(f"cv_running_{metric}", float(v), now, step)
                for step, v in enumerate(running, start=1)
            ]
        params = [Param(k, str(v)[:6000]) for k, v in record.params.items()]
        params += [Param("seed", str(seed)), Param(TRIAL_ROLE_PARAM, record.role)]
        # The status tag went with create_run: a tag here would be one more SQL commit.
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        status = {"completed": "FINISHED", "failed": "FAILED", "pruned": "KILLED"}[record.status]
        self.client.set_terminated(run.info.run_id, status=status)
        self.run_ids[record.trial_id] = run.info.run_id

    def flush(self) -> None:
        self.release()
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)


def find_study_run(client: MlflowClient, experiment_id: str) -> Any | None:
    """Return the study's parent run (the latest), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Return every child run of ``parent_run_id`` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def record_from_run(run: Any) -> TrialRecord:
    """Rebuild a trial record from its MLflow child run."""
    tags = run.data.tags
    return TrialRecord(
        trial_id=tags[TAG_TRIAL],
        params=json.loads(tags.get(TAG_PARAMS_JSON, "{}")),
        values=dict(run.data.metrics),
        status=tags.get(TAG_STATUS, "completed"),
        reason=tags.get(TAG_REASON),
        run_id=run.info.run_id,
        role=run.data.params.get(TRIAL_ROLE_PARAM, "search"),
    )


def open_parent_run(
    spec: StudySpec, settings: PipelineSettings, *, resume: bool
) -> tuple[MlflowClient, str, str]:
    """Return (client, experiment id, parent run id): the saved study's run on resume."""
    from tasks.tracking import configure_mlflow, ensure_experiment

    experiment_id = ensure_experiment(spec.name, settings)
    client = configure_mlflow(settings)
    existing = find_study_run(client, experiment_id) if resume else None
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return client, experiment_id, existing.info.run_id
    tags = {TAG_STUDY: spec.name, TAG_ROLE: "study"}
    run = client.create_run(experiment_id, run_name=f"study-{spec.name}", tags=tags)
    _log_spec(client, run.info.run_id, spec)
    return client, experiment_id, run.info.run_id


def _log_spec(client: MlflowClient, run_id: str, spec: StudySpec) -> None:
    import yaml
    from mlflow.entities import Param

    dumped = spec.model_dump(mode="json")
    client.log_text(run_id, yaml.safe_dump(dumped, sort_keys=False), SPEC_ARTIFACT)
    flat = {
        "task": spec.task,
        "family": spec.model.family,
        "optimizer": spec.optimizer,
        "objectives": ",".join(f"{k}:{v}" for k, v in spec.objectives.items()),
        "q": spec.q,
        "seed": spec.seed,
        "max_trials": spec.budget.max_trials,
        "max_seconds": spec.budget.max_seconds,
        "max_cpu_seconds": spec.budget.max_cpu_seconds,
        "patience": spec.budget.patience,
        "evaluation": f"{spec.evaluation.method}:{spec.evaluation.folds}",
        "data_source": spec.data.source,
        "target": spec.data.target,
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flat.items()])


def log_trials_missing(writer: MlflowWriter, records: list[TrialRecord], seed: int) -> None:
    """After a crash: log the trials the state has as finished but MLflow lacks."""
    logged = {
        r.data.tags.get(TAG_TRIAL)
        for r in child_runs(writer.client, writer.experiment_id, writer.parent_run_id)
    }
    for record in records:
        if record.trial_id not in logged:
            writer.log_trial(record, seed=seed)


def log_result(client: MlflowClient, result: StudyResult) -> None:
    """Write the result artifact, the summary metrics and the stop reason; end the run."""
    from mlflow.entities import Metric

    run_id = result.parent_run_id
    client.log_text(run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)
    summary: dict[str, float] = {
        "n_completed": result.n_completed,
        "n_failed": result.n_failed,
        "n_pruned": result.n_pruned,
        "compute_saved_seconds": result.compute_saved_seconds,
        "cpu_seconds": result.cpu_seconds,
        "wall_seconds": result.wall_seconds,
    }
    if result.best is not None:
        summary |= {f"best_{k}": v for k, v in result.best.values.items()}
    if result.tuning_gain is not None:
        summary["tuning_gain"] = result.tuning_gain
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.set_tag(run_id, TAG_STOP_REASON, result.stop_reason)
    client.set_terminated(run_id, status="FINISHED")


def load_study_result(study_name: str, settings: PipelineSettings | None = None) -> StudyResult:
    """Read a study's result back from MLflow (rebuilt from its trial runs if unfinished)."""
    import mlflow

    from tasks.tracking import configure_mlflow

    settings = settings or get_settings()
    client = configure_mlflow(settings)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise StudyNotFoundError(
            f"no study {study_name!r} in MLflow at {settings.tracking_uri}: "
            f"run `banditflow optimize SPEC.yaml` with name {study_name!r} first"
        )
    parent = find_study_run(client, experiment.experiment_id)
    if parent is None:
        raise StudyNotFoundError(f"experiment {study_name!r} has no study run")
    try:
        text = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/{RESULT_ARTIFACT}")
        return StudyResult.model_validate_json(text)
    except Exception:  # noqa: BLE001 - unfinished (crashed) study: rebuild from its trials
        pass
    runs = child_runs(client, experiment.experiment_id, parent.info.run_id)
    records = sorted(
        (record_from_run(r) for r in runs if TAG_TRIAL in r.data.tags),  # not stage runs
        key=lambda r: int(r.trial_id) if r.trial_id.isdigit() else r.trial_id,
    )
    objectives = dict(
        item.split(":", 1) for item in parent.data.params.get("objectives", "").split(",") if item
    )
    if not objectives:
        raise StudyNotFoundError(f"study run of {study_name!r} has no objectives param")
    return build_result(
        records,
        study_name=study_name,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent.info.run_id,
        objectives=objectives,
        stop_reason="unfinished: rebuilt from trial runs",
        state_path=str(settings.studies_dir / f"{study_name}.json"),
    )
