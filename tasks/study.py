"""A study's bookkeeping: the optimizer's ask/tell with budget and resume, and its MLflow record.

``Study`` owns what the ``optimize`` flow needs between evaluations: the optimizer (resumed
from ``settings.studies_dir/<study>.json``, saved after every tell), the budget (trials,
seconds, patience), the median-rule threshold for pruning, and the MLflow parent run whose
child runs a background writer logs off the hot path. ``StudyResult`` is what the flow
returns and what ``load_study_result`` reads back from MLflow for ``banditflow register``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

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

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.evaluate import TrialOutcome
    from tasks.optimizers import Optimizer, Trial
    from tasks.spec import StudySpec

log = logging.getLogger(__name__)

RESULT_ARTIFACT = "study_result.json"
PRUNE_SCORE = "prune_score"  # running score at the pruning fold, kept for resume
COMPUTE_SAVED = "compute_saved_seconds"
SUGGEST_SECONDS = "suggest_seconds"


class StudyStateError(RuntimeError):
    """A saved study cannot be resumed with this spec (say what to change)."""


class StudyNotFoundError(LookupError):
    """No study of that name in MLflow."""


class TrialRecord(BaseModel):
    """One finished trial: what registration and reports need."""

    trial_id: str
    params: dict[str, Any]
    values: dict[str, float] = Field(default_factory=dict)
    status: str = "completed"
    reason: str | None = None
    run_id: str | None = None


class StudyResult(BaseModel):
    """What an ``optimize`` run found, and where its records are."""

    study_name: str
    experiment_id: str
    parent_run_id: str
    objectives: dict[str, str]
    best: TrialRecord | None = None  # single objective
    pareto: list[TrialRecord] = Field(default_factory=list)  # several objectives
    top: list[TrialRecord] = Field(default_factory=list)  # by the primary objective
    n_trials: int = 0
    n_completed: int = 0
    n_failed: int = 0
    n_pruned: int = 0
    compute_saved_seconds: float = 0.0
    wall_seconds: float = 0.0
    stop_reason: str = ""
    state_path: str = ""
    resumed: bool = False


# --- progress listeners (the CLI's progress bar) ------------------------------------------
ProgressListener = Callable[[dict[str, Any]], None]
_LISTENERS: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    """Call ``listener(event)`` after every tell; return a function that removes it."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener) if listener in _LISTENERS else None


# --- MLflow, off the hot path ---------------------------------------------------------------
class MlflowWriter:
    """Log trial runs from one background thread, so a tell costs no MLflow round trip.

    MLflow's active run is per thread (STACK.md): every child run names its parent
    explicitly through the ``mlflow.parentRunId`` tag, through the client API.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.errors: list[str] = []
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
        self._queue.put(lambda: self._log_trial(record, seed, running or [], metric))

    def _log_trial(
        self, record: TrialRecord, seed: int, running: list[float], metric: str | None
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

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
        params.append(Param("seed", str(seed)))
        self.client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=params,
            tags=[RunTag(TAG_STATUS, record.status)],
        )
        status = {"completed": "FINISHED", "failed": "FAILED", "pruned": "KILLED"}[record.status]
        self.client.set_terminated(run.info.run_id, status=status)
        self.run_ids[record.trial_id] = run.info.run_id

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)


def _find_study_run(client: MlflowClient, experiment_id: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
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


def _record_from_run(run: Any) -> TrialRecord:
    tags = run.data.tags
    params = json.loads(tags.get(TAG_PARAMS_JSON, "{}"))
    return TrialRecord(
        trial_id=tags[TAG_TRIAL],
        params=params,
        values=dict(run.data.metrics),
        status=tags.get(TAG_STATUS, "completed"),
        reason=tags.get(TAG_REASON),
        run_id=run.info.run_id,
    )


# --- the study ----------------------------------------------------------------------------
class Study:
    """The optimizer plus budget, pruning medians, resume and MLflow: the flow's one helper."""

    def __init__(self, spec: StudySpec, settings: PipelineSettings) -> None:
        self.spec = spec
        self.settings = settings.ensure_dirs()
        self.state_path = settings.studies_dir / f"{spec.name}.json"
        self.started = time.perf_counter()
        self.stop_reason = ""
        self.resumed = False
        self._in_flight: set[str] = set()
        self._replay: list[Trial] = []
        self._running: dict[str, list[float]] = {}
        self._suggest_seconds: dict[str, float] = {}
        self.optimizer = self._open_optimizer()
        self.client, self.experiment_id, self.parent_run_id = self._open_parent_run()
        self.writer = MlflowWriter(self.client, self.experiment_id, self.parent_run_id)
        self._reconcile_mlflow()

    @classmethod
    def open(cls, spec: StudySpec, settings: PipelineSettings | None = None) -> Study:
        """Start a study, or resume the one saved under the spec's name."""
        return cls(spec, settings or get_settings())

    # -- opening ---------------------------------------------------------------------------
    def _space(self) -> dict[str, Any]:
        from tasks.models import default_space

        if self.spec.model.space:
            return {k: v.model_dump(exclude_none=True) for k, v in self.spec.model.space.items()}
        return default_space(self.spec.model.family)

    def _open_optimizer(self) -> Optimizer:
        from tasks.optimizers import get_optimizer, load_optimizer

        spec = self.spec
        if self.state_path.exists():
            optimizer = load_optimizer(self.state_path)
            if optimizer.name != spec.optimizer or dict(optimizer.objectives) != dict(
                spec.objectives
            ):
                raise StudyStateError(
                    f"study {spec.name!r} was saved with optimizer {optimizer.name!r} and "
                    f"objectives {optimizer.objectives}; this spec asks for {spec.optimizer!r} "
                    f"and {dict(spec.objectives)}: rename the study, or delete {self.state_path}"
                )
            self.resumed = True
            # Trials pending at a crash were never told: evaluate them again (same id and
            # params), so no budget is lost and no finished trial is re-run.
            self._replay = optimizer.pending()
            for record in optimizer.trials():
                if PRUNE_SCORE in record.values:
                    self._running[record.id] = [record.values[PRUNE_SCORE]]
            return optimizer
        optimizer = get_optimizer(
            spec.optimizer,
            self._space(),
            dict(spec.objectives),
            seed=spec.seed,
            **spec.optimizer_options,
        )
        for point in spec.warm_start:
            optimizer.enqueue({**point})
        optimizer.save(self.state_path)
        return optimizer

    def _open_parent_run(self) -> tuple[MlflowClient, str, str]:
        from tasks.tracking import ensure_experiment

        experiment_id = ensure_experiment(self.spec.name, self.settings)
        from tasks.tracking import configure_mlflow

        client = configure_mlflow(self.settings)
        existing = _find_study_run(client, experiment_id) if self.resumed else None
        if existing is not None:
            client.update_run(existing.info.run_id, status="RUNNING")
            return client, experiment_id, existing.info.run_id
        tags = {TAG_STUDY: self.spec.name, TAG_ROLE: "study"}
        run = client.create_run(experiment_id, run_name=f"study-{self.spec.name}", tags=tags)
        run_id = run.info.run_id
        self._log_spec(client, run_id)
        return client, experiment_id, run_id

    def _log_spec(self, client: MlflowClient, run_id: str) -> None:
        import yaml
        from mlflow.entities import Param

        spec = self.spec
        dumped = spec.model_dump(mode="json")
        client.log_text(run_id, yaml.safe_dump(dumped, sort_keys=False), "spec.yaml")
        flat = {
            "task": spec.task,
            "family": spec.model.family,
            "optimizer": spec.optimizer,
            "objectives": ",".join(f"{k}:{v}" for k, v in spec.objectives.items()),
            "q": spec.q,
            "seed": spec.seed,
            "max_trials": spec.budget.max_trials,
            "max_seconds": spec.budget.max_seconds,
            "patience": spec.budget.patience,
            "evaluation": f"{spec.evaluation.method}:{spec.evaluation.folds}",
            "data_source": spec.data.source,
            "target": spec.data.target,
        }
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flat.items()])

    def _reconcile_mlflow(self) -> None:
        """After a crash: log trials the state has as finished but MLflow lacks."""
        if not self.resumed:
            return
        logged = {
            r.data.tags.get(TAG_TRIAL)
            for r in _child_runs(self.client, self.experiment_id, self.parent_run_id)
        }
        for record in self.records():
            if record.trial_id not in logged:
                self.writer.log_trial(record, seed=self.spec.seed)

    # -- the loop's questions ----------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        """Return the finished trials (completed, failed, pruned) in id order."""
        return [
            TrialRecord(
                trial_id=r.id,
                params=r.params,
                values=r.values,
                status=r.status,
                reason=r.reason,
                run_id=self.writer.run_ids.get(r.id) if hasattr(self, "writer") else None,
            )
            for r in self.optimizer.trials()
            if r.status != "pending"
        ]

    @property
    def n_finished(self) -> int:
        return sum(1 for r in self.optimizer.trials() if r.status != "pending")

    @property
    def done(self) -> bool:
        """Whether the budget is spent: no more trials will be asked for."""
        budget = self.spec.budget
        if self.stop_reason:
            return True
        handed_out = len(self.optimizer.trials())
        if handed_out >= budget.max_trials and not self._replay:
            self.stop_reason = f"max_trials={budget.max_trials} reached"
        elif budget.max_seconds and time.perf_counter() - self.started > budget.max_seconds:
            self.stop_reason = f"max_seconds={budget.max_seconds:g} spent"
        elif budget.patience and self._trials_without_improvement() >= budget.patience:
            self.stop_reason = f"no improvement in {budget.patience} trials (patience)"
        return bool(self.stop_reason)

    def ask(self, n: int) -> list[Trial]:
        """Return up to ``n`` trials to start: crash leftovers first, within the budget."""
        if n <= 0 or self.done:
            return []
        trials: list[Trial] = []
        while self._replay and len(trials) < n:
            trials.append(self._replay.pop(0))
        room = self.spec.budget.max_trials - len(self.optimizer.trials())
        if len(trials) < n and room > 0:
            t0 = time.perf_counter()
            new = self.optimizer.ask(min(n - len(trials), room))
            # The optimizer's own time, per trial: Ax can take seconds (STACK.md).
            for trial in new:
                self._suggest_seconds[trial.id] = (time.perf_counter() - t0) / max(len(new), 1)
            trials += new
            self.optimizer.save(self.state_path)  # pending trials survive a crash
        if not trials and not self._in_flight:
            self.stop_reason = "the optimizer has no more points to suggest"
        self._in_flight.update(t.id for t in trials)
        return trials

    def prune_threshold(self) -> float | None:
        """Return the median running score at the pruning fold, once enough trials finished."""
        pruning = self.spec.budget.pruning
        if pruning is None:
            return None
        scores = [
            r[pruning.after_folds - 1]
            for r in self._running.values()
            if len(r) >= pruning.after_folds
        ]
        if len(scores) < pruning.min_trials:
            return None
        return float(statistics.median(scores))

    def tell(self, trial: Trial, outcome: TrialOutcome) -> TrialRecord:
        """Record an outcome: optimizer, state file, then MLflow in the background."""
        from tasks.evaluate import EvalConfig

        self._in_flight.discard(trial.id)
        values = dict(outcome.values)
        pruning = self.spec.budget.pruning
        if (
            pruning
            and outcome.status == "completed"
            and len(outcome.running_scores) >= pruning.after_folds
        ):
            values[PRUNE_SCORE] = outcome.running_scores[pruning.after_folds - 1]
            self._running[trial.id] = outcome.running_scores
        if outcome.status == "pruned":
            values[COMPUTE_SAVED] = outcome.compute_saved_seconds
        if trial.id in self._suggest_seconds:
            values[SUGGEST_SECONDS] = self._suggest_seconds.pop(trial.id)
        result = self.optimizer.tell(trial.id, values, status=outcome.status, reason=outcome.reason)
        self.optimizer.save(self.state_path)
        record = TrialRecord(
            trial_id=trial.id,
            params=trial.params,
            values=result.values,
            status=result.status,
            reason=result.reason,
        )
        metric = EvalConfig.from_spec(self.spec).pruning_metric
        self.writer.log_trial(
            record,
            seed=self.spec.seed,
            running=outcome.running_scores,
            metric=metric[0] if metric else None,
        )
        self._notify(record)
        return record

    def _notify(self, record: TrialRecord) -> None:
        if not _LISTENERS:
            return
        best = self._best_value()
        event = {
            "study": self.spec.name,
            "finished": self.n_finished,
            "budget": self.spec.budget.max_trials,
            "record": record,
            "best": best,
            "metric": self.spec.primary_objective[0],
        }
        for listener in list(_LISTENERS):
            listener(event)

    def _sign(self) -> float:
        return -1.0 if self.spec.primary_objective[1] == "maximize" else 1.0

    def _best_value(self) -> float | None:
        metric = self.spec.primary_objective[0]
        values = [
            r.values[metric]
            for r in self.optimizer.trials()
            if r.status == "completed" and metric in r.values
        ]
        if not values:
            return None
        return min(values, key=lambda v: self._sign() * v)

    def _trials_without_improvement(self) -> int:
        metric = self.spec.primary_objective[0]
        best, since = math.inf, 0
        for r in sorted(self.optimizer.trials(), key=lambda r: int(r.id)):
            if r.status == "pending":
                continue
            loss = self._sign() * r.values[metric] if r.status == "completed" else math.inf
            if loss < best:
                best, since = loss, 0
            else:
                since += 1
        return since

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> StudyResult:
        """Flush MLflow, log plots, the result and a Prefect table; end the parent run."""
        self.writer.flush()
        records = self.records()
        result = self._result(records)
        try:
            self._log_plots(records)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose a study's result
            log.warning("could not plot the study: %s", exc)
        self.client.log_text(self.parent_run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)
        summary = {
            "n_completed": result.n_completed,
            "n_failed": result.n_failed,
            "n_pruned": result.n_pruned,
            "compute_saved_seconds": result.compute_saved_seconds,
            "wall_seconds": result.wall_seconds,
        }
        if result.best is not None:
            for k, v in result.best.values.items():
                summary[f"best_{k}"] = v
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()],
        )
        self.client.set_tag(self.parent_run_id, TAG_STOP_REASON, result.stop_reason)
        self.client.set_terminated(self.parent_run_id, status="FINISHED")
        self.writer.close()
        self._table_artifact(result)
        return result

    def _result(self, records: list[TrialRecord]) -> StudyResult:
        metric, _ = self.spec.primary_objective
        completed = [r for r in records if r.status == "completed"]
        ranked = sorted(completed, key=lambda r: self._sign() * r.values[metric])
        best = pareto = None
        if len(self.spec.objectives) == 1:
            top = self.optimizer.best()
            best = next((r for r in records if top and r.trial_id == top.id), None)
        else:
            ids = {t.id for t in self.optimizer.pareto()}
            pareto = [r for r in ranked if r.trial_id in ids]
        counts = {
            s: sum(1 for r in records if r.status == s) for s in ("completed", "failed", "pruned")
        }
        return StudyResult(
            study_name=self.spec.name,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            objectives=dict(self.spec.objectives),
            best=best,
            pareto=pareto or [],
            top=ranked[:10],
            n_trials=len(records),
            n_completed=counts["completed"],
            n_failed=counts["failed"],
            n_pruned=counts["pruned"],
            compute_saved_seconds=sum(r.values.get(COMPUTE_SAVED, 0.0) for r in records),
            wall_seconds=time.perf_counter() - self.started,
            stop_reason=self.stop_reason or "budget spent",
            state_path=str(self.state_path),
            resumed=self.resumed,
        )

    def _log_plots(self, records: list[TrialRecord]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metric, direction = self.spec.primary_objective
        done = [r for r in records if r.status == "completed" and metric in r.values]
        if not done:
            return
        xs = [int(r.trial_id) for r in done]
        ys = [r.values[metric] for r in done]
        best, running = None, []
        for y in ys:
            best = y if best is None or self._sign() * y < self._sign() * best else best
            running.append(best)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.scatter(xs, ys, s=18, label="completed trial")
        ax.step(xs, running, where="post", color="C3", label=f"best so far ({direction})")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.set_title(f"{self.spec.name}: optimization history")
        ax.legend()
        self.client.log_figure(self.parent_run_id, fig, "plots/optimization_history.png")
        plt.close(fig)
        if len(self.spec.objectives) >= 2:
            (m1, _), (m2, _) = list(self.spec.objectives.items())[:2]
            front = {t.id for t in self.optimizer.pareto()}
            fig, ax = plt.subplots(figsize=(6, 5))
            pts = [r for r in done if m2 in r.values]
            ax.scatter(
                [r.values[m1] for r in pts],
                [r.values[m2] for r in pts],
                s=18,
                color="0.6",
                label="trial",
            )
            pf = sorted((r for r in pts if r.trial_id in front), key=lambda r: r.values[m1])
            ax.plot(
                [r.values[m1] for r in pf],
                [r.values[m2] for r in pf],
                "o-",
                color="C3",
                label="Pareto front",
            )
            ax.set_xlabel(m1)
            ax.set_ylabel(m2)
            ax.legend()
            self.client.log_figure(self.parent_run_id, fig, "plots/pareto_front.png")
            plt.close(fig)

    def _table_artifact(self, result: StudyResult) -> None:
        from prefect.artifacts import create_table_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:  # outside a flow run there is nowhere to attach it
            return
        rows = []
        for r in result.pareto or result.top:
            row: dict[str, Any] = {"trial": r.trial_id, "status": r.status}
            row |= {k: round(r.values[k], 6) for k in self.spec.objectives if k in r.values}
            row |= {k: v for k, v in r.params.items()}
            rows.append(row)
        create_table_artifact(
            table=rows,
            key=artifact_key(f"{self.spec.name}-top-trials"),
            description=f"Top trials of study {self.spec.name} ({result.stop_reason})",
        )

    def close(self) -> None:
        """Stop the background writer (after ``finish`` or on an error)."""
        self.writer.close()


def artifact_key(text: str) -> str:
    """Return a Prefect artifact key: lowercase letters, digits and dashes only."""
    import re

    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "study"


def load_study_result(study_name: str, settings: PipelineSettings | None = None) -> StudyResult:
    """Read a study's result back from MLflow (rebuilt from its trial runs if unfinished)."""
    from tasks.tracking import configure_mlflow

    settings = settings or get_settings()
    client = configure_mlflow(settings)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise StudyNotFoundError(
            f"no study {study_name!r} in MLflow at {settings.tracking_uri}: "
            f"run `banditflow optimize SPEC.yaml` with name {study_name!r} first"
        )
    parent = _find_study_run(client, experiment.experiment_id)
    if parent is None:
        raise StudyNotFoundError(f"experiment {study_name!r} has no study run")
    import mlflow

    try:
        text = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/{RESULT_ARTIFACT}")
        return StudyResult.model_validate_json(text)
    except Exception:  # noqa: BLE001 - unfinished (crashed) study: rebuild from its trials
        pass
    records = [
        _record_from_run(r)
        for r in _child_runs(client, experiment.experiment_id, parent.info.run_id)
    ]
    records.sort(key=lambda r: int(r.trial_id) if r.trial_id.isdigit() else r.trial_id)
    objectives = dict(
        item.split(":", 1) for item in parent.data.params.get("objectives", "").split(",") if item
    )
    if not objectives:
        raise StudyNotFoundError(f"study run of {study_name!r} has no objectives param")
    completed = [
        r for r in records if r.status == "completed" and all(k in r.values for k in objectives)
    ]
    metric, direction = next(iter(objectives.items()))
    sign = -1.0 if direction == "maximize" else 1.0
    ranked = sorted(completed, key=lambda r: sign * r.values[metric])
    pareto: list[TrialRecord] = []
    if len(objectives) > 1:
        from tasks.optimizers.base import dominates

        def loss(r: TrialRecord) -> list[float]:
            return [(-1.0 if d == "maximize" else 1.0) * r.values[k] for k, d in objectives.items()]

        pareto = [
            r for r in ranked if not any(dominates(loss(o), loss(r)) for o in ranked if o is not r)
        ]
    return StudyResult(
        study_name=study_name,
        experiment_id=experiment.experiment_id,
        parent_run_id=parent.info.run_id,
        objectives=objectives,
        best=ranked[0] if ranked and len(objectives) == 1 else None,
        pareto=pareto,
        top=ranked[:10],
        n_trials=len(records),
        n_completed=sum(r.status == "completed" for r in records),
        n_failed=sum(r.status == "failed" for r in records),
        n_pruned=sum(r.status == "pruned" for r in records),
        compute_saved_seconds=sum(r.values.get(COMPUTE_SAVED, 0.0) for r in records),
        stop_reason="unfinished: rebuilt from trial runs",
        state_path=str(settings.studies_dir / f"{study_name}.json"),
    )


def study_state_path(study_name: str, settings: PipelineSettings | None = None) -> Path:
    """Return where a study's optimizer state is saved (for resume)."""
    return (settings or get_settings()).studies_dir / f"{study_name}.json"
