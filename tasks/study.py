"""A study's budget loop: the optimizer's ask/tell with budget, pruning medians and resume.

``Study`` owns what the ``optimize`` flow needs between evaluations: the optimizer (resumed
from ``settings.studies_dir/<study>.json``, saved after every tell), the budget (trials,
seconds, patience) and the median-rule threshold for pruning. Its MLflow record lives in
``tasks.study_record``, its plots and tables in ``tasks.study_report`` and what it returns
in ``tasks.study_result``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any

from tasks.settings import PipelineSettings, get_settings
from tasks.study_meta import (
    DefaultsUnavailable,
    StudyMeta,
    StudyStateError,
    check_resume,
    library_defaults,
    meta_path,
    refuse_resume,
    search_fields,
    study_state_path,
    trials_so_far,
)
from tasks.study_progress import add_progress_listener, has_listeners, notify
from tasks.study_record import (
    MlflowWriter,
    StudyNotFoundError,
    child_runs,
    find_study_run,
    load_study_result,
    log_result,
    log_trials_missing,
    open_parent_run,
)
from tasks.study_report import artifact_key, log_plots, table_artifact, warm_report_imports
from tasks.study_result import (
    COMPUTE_SAVED,
    CPU_SECONDS,
    PRUNE_SCORE,
    SUGGEST_SECONDS,
    StudyResult,
    TrialRecord,
    build_result,
    loss_sign,
)

if TYPE_CHECKING:
    from tasks.evaluate import TrialOutcome
    from tasks.optimizers import Optimizer, Trial
    from tasks.pruners import RungOracle, RungPruner
    from tasks.spec import StudySpec

__all__ = [
    "MlflowWriter",
    "Study",
    "StudyNotFoundError",
    "StudyResult",
    "StudyStateError",
    "TrialRecord",
    "add_progress_listener",
    "notify",
    "check_resume",
    "artifact_key",
    "child_runs",
    "find_study_run",
    "load_study_result",
    "study_state_path",
    "trials_so_far",
]


class Study:
    """The optimizer plus budget, pruning medians, resume and MLflow: the flow's one helper."""

    def __init__(self, spec: StudySpec, settings: PipelineSettings) -> None:
        self.spec = spec
        self.settings = settings.ensure_dirs()
        self.state_path = study_state_path(spec.name, settings)
        self.started = time.perf_counter()
        self.stop_reason = ""
        self.resumed = False
        self._in_flight: set[str] = set()
        self._replay: list[Trial] = []
        # Each completed trial's running score at the pruning fold: the median rule's input.
        self._prune_scores: dict[str, float] = {}
        self._suggest_seconds: dict[str, float] = {}
        self.meta = StudyMeta.load(meta_path(self.state_path))
        self.optimizer = self._open_optimizer()
        from tasks.evaluate import EvalConfig

        self._metric = EvalConfig.from_spec(spec).pruning_metric  # measured per fold / rung
        self.rungs = self._open_rungs()
        self.client, self.experiment_id, self.parent_run_id = open_parent_run(
            spec, self.settings, resume=self.resumed
        )
        self.writer = MlflowWriter(self.client, self.experiment_id, self.parent_run_id)
        if self.resumed:
            log_trials_missing(self.writer, self.records(), spec.seed)

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
        from tasks.optimizers import load_optimizer

        spec = self.spec
        if not self.state_path.exists():
            return self._new_optimizer()
        check_resume(spec, self.settings)
        optimizer = load_optimizer(self.state_path)
        if optimizer.name != spec.optimizer or dict(optimizer.objectives) != dict(spec.objectives):
            refuse_resume(
                spec, self.state_path, [f"optimizer/objectives ({optimizer.name} -> ...)"]
            )
        self.resumed = True
        # Trials pending at a crash were never told: evaluate them again (same id and
        # params), so no budget is lost and no finished trial is re-run.
        self._replay = optimizer.pending()
        for record in optimizer.trials():
            if PRUNE_SCORE in record.values:
                self._prune_scores[record.id] = record.values[PRUNE_SCORE]
        return optimizer

    def _new_optimizer(self) -> Optimizer:
        """Build the optimizer; enqueue the library defaults, then the warm starts."""
        from tasks.optimizers import get_optimizer

        spec = self.spec
        optimizer = get_optimizer(
            spec.optimizer,
            self._space(),
            dict(spec.objectives),
            seed=spec.seed,
            **spec.optimizer_options,
        )
        meta = StudyMeta(search=search_fields(spec))
        points: list[tuple[str, dict[str, Any]]] = []
        if spec.defaults_first:
            try:
                point, meta.notes = library_defaults(
                    spec.model.family, optimizer.space, spec.task, spec.seed
                )
                points.append(("defaults", point))
            except DefaultsUnavailable as exc:
                meta.notes = [str(exc)]
        points += [("warm_start", {**p}) for p in spec.warm_start]
        for number, (role, point) in enumerate(points):
            optimizer.enqueue(point)
            getattr(meta, role).append(str(number))
        meta.save(meta_path(self.state_path))
        self.meta = meta
        optimizer.save(self.state_path)
        return optimizer

    def _open_rungs(self) -> RungOracle | None:
        """ASHA / Hyperband: Optuna's pruner beside the optimizer (tasks/pruners.py)."""
        from tasks.pruners import RUNG_RULES, RungOracle

        pruning = self.spec.budget.pruning
        if pruning is None or pruning.rule not in RUNG_RULES or self._metric is None:
            return None
        return RungOracle(self.spec, self.state_path, self._metric[1])

    # -- the loop's questions ----------------------------------------------------------------
    def role(self, trial_id: str) -> str:
        """Return why a trial ran: ``defaults``, ``warm_start`` (both enqueued) or ``search``."""
        return self.meta.role(trial_id) if self.meta is not None else "search"

    def records(self) -> list[TrialRecord]:
        """Return the finished trials (completed, failed, pruned) in id order."""
        run_ids = self.writer.run_ids if hasattr(self, "writer") else {}
        return [
            TrialRecord(
                trial_id=r.id,
                params=r.params,
                values=r.values,
                status=r.status,
                reason=r.reason,
                run_id=run_ids.get(r.id),
                role=self.role(r.id),
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
        elif budget.max_cpu_seconds and self.cpu_seconds() >= budget.max_cpu_seconds:
            self.stop_reason = (
                f"max_cpu_seconds={budget.max_cpu_seconds:g} spent "
                f"({self.cpu_seconds():.1f} CPU-seconds in trials)"
            )
        elif budget.patience and self._trials_without_improvement() >= budget.patience:
            self.stop_reason = f"no improvement in {budget.patience} trials (patience)"
        return bool(self.stop_reason)

    def cpu_seconds(self) -> float:
        """Return the CPU time the told trials used (saved with each, so a resume counts it)."""
        return sum(r.values.get(CPU_SECONDS, 0.0) for r in self.optimizer.trials())

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
        if pruning is None or pruning.rule != "median":
            return None
        if len(self._prune_scores) < pruning.min_trials:
            return None
        return float(statistics.median(self._prune_scores.values()))

    def pruner_for(self, trial: Trial) -> RungPruner | None:
        """Return the trial's line to the ASHA / Hyperband pruner (None: another rule)."""
        return self.rungs.handle(trial.id) if self.rungs is not None else None

    def tell(self, trial: Trial, outcome: TrialOutcome) -> TrialRecord:
        """Record an outcome: optimizer, state file, then MLflow in the background."""
        self._in_flight.discard(trial.id)
        values = dict(outcome.values)
        pruning = self.spec.budget.pruning
        if (
            pruning
            and pruning.rule == "median"
            and outcome.status == "completed"
            and len(outcome.running_scores) >= pruning.after_folds
        ):
            score = outcome.running_scores[pruning.after_folds - 1]
            values[PRUNE_SCORE] = score  # saved with the trial: the median survives a resume
            self._prune_scores[trial.id] = score
        if outcome.status == "pruned":
            values[COMPUTE_SAVED] = outcome.compute_saved_seconds
        if trial.id in self._suggest_seconds:
            values[SUGGEST_SECONDS] = self._suggest_seconds.pop(trial.id)
        result = self.optimizer.tell(trial.id, values, status=outcome.status, reason=outcome.reason)
        self.optimizer.save(self.state_path)
        if self.rungs is not None and self._metric is not None:
            self.rungs.tell(trial.id, result.status, result.values.get(self._metric[0]))
        record = TrialRecord(
            trial_id=trial.id,
            params=trial.params,
            values=result.values,
            status=result.status,
            reason=result.reason,
            role=self.role(trial.id),
        )
        self.writer.log_trial(
            record,
            seed=self.spec.seed,
            running=outcome.running_scores,
            metric=self._metric[0] if self._metric else None,
        )
        if self.n_finished == 1:  # the end's plots import while the next trials run
            self.writer.run(warm_report_imports)
        self._notify(record)
        return record

    def _notify(self, record: TrialRecord) -> None:
        if not has_listeners():
            return
        notify(
            {
                "phase": "trials",
                "study": self.spec.name,
                "finished": self.n_finished,
                "budget": self.spec.budget.max_trials,
                "record": record,
                "best": self._best_value(),
                "metric": self.spec.primary_objective[0],
            }
        )

    def _sign(self) -> float:
        return loss_sign(self.spec.primary_objective[1])

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
    def result(self) -> StudyResult:
        """Return what the study found so far (the one builder, as MLflow's read-back uses)."""
        return build_result(
            self.records(),
            study_name=self.spec.name,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            objectives=self.spec.objectives,
            wall_seconds=time.perf_counter() - self.started,
            stop_reason=self.stop_reason or "budget spent",
            state_path=str(self.state_path),
            resumed=self.resumed,
            cpu_seconds=self.cpu_seconds(),
            defaults_notes=self.meta.notes if self.meta else [],
        )

    def finish(self) -> StudyResult:
        """Flush MLflow, log plots, the result and a Prefect table; end the parent run."""
        self.writer.flush()
        result = self.result()
        try:
            log_plots(self.client, result, self.records())
        except Exception as exc:  # noqa: BLE001 - a plot must not lose a study's result
            import logging

            logging.getLogger(__name__).warning("could not plot the study: %s", exc)
        log_result(self.client, result)
        self.writer.close()
        table_artifact(result)
        return result

    def close(self) -> None:
        """Stop the background writer (after ``finish`` or on an error)."""
        self.writer.close()


# Older names, kept for callers outside the study modules.
_child_runs = child_runs
_find_study_run = find_study_run
