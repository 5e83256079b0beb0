"""Asynchronous successive halving and Hyperband over a fidelity: Optuna's pruners as oracles.

The study's own optimizer (hyperopt, Ax, random) suggests; Optuna's
``SuccessiveHalvingPruner`` (ASHA: asynchronous, so q trials stay in flight) or
``HyperbandPruner`` decides whether a trial goes on to the next rung. Each trial of ours
has an Optuna trial in a journal file beside the study's state
(``<study>.pruner.log``): the trial reports its score at each rung with
``trial.report(value, step)`` and asks ``trial.should_prune()``, from a thread of the flow,
a warm pool worker or any process that sees the file, and a resumed study keeps every rung
it had. A hand-written scheduler would re-implement what Optuna's pruners already test.

The fidelity (``rows``, ``iterations`` or ``folds``) comes from the model family
(``tasks.families``) unless the spec names one. A step is ``1 .. max_resource``; a trial
evaluated at step ``s`` used ``s / max_resource`` of the full fidelity. Rungs sit at
``reduction_factor ** k`` steps, so with the defaults (3, ``min_fraction`` 1/3) a trial
runs at 1/3 and all of its fidelity, and only the top third goes on from the rung
(``min_fraction: 0.111`` adds a rung at 1/9).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.spec import StudySpec

RUNG_RULES = ("asha", "hyperband")
FIDELITIES = ("rows", "iterations", "folds")
TRIAL_ATTR = "banditflow_trial"  # our trial id on its Optuna trial


@dataclass(frozen=True)
class RungSchedule:
    """Where a trial reports: ``steps`` (resources) out of ``max_resource``."""

    kind: str  # rows | iterations | folds
    param: str | None  # iterations: the estimator parameter that counts them
    steps: tuple[int, ...]
    max_resource: int

    def fraction(self, step: int) -> float:
        """Return the share of the full fidelity a trial uses at ``step``."""
        return step / self.max_resource


def rung_steps(max_resource: int, reduction_factor: int) -> tuple[int, ...]:
    """Return the rungs ``1, eta, eta**2, ...`` below ``max_resource``, then the full one."""
    steps, step = [], 1
    while step < max_resource:
        steps.append(step)
        step *= reduction_factor
    return (*steps, max_resource)


def schedule_for(spec: StudySpec) -> RungSchedule | None:
    """Return the rung schedule of a spec whose pruning rule is ``asha`` or ``hyperband``."""
    from tasks.models import get_family

    pruning = spec.budget.pruning
    if pruning is None or pruning.rule not in RUNG_RULES:
        return None
    declared = get_family(spec.model.family).fidelity
    kind = pruning.fidelity or declared.kind
    param = declared.param if kind == declared.kind else None
    if kind == "iterations" and param is None:
        raise ValueError(
            f"pruning.fidelity 'iterations': model family {spec.model.family!r} declares no "
            f"iterations parameter (it declares {declared.kind!r}); use 'rows' or 'folds'"
        )
    if kind == "folds":
        if spec.evaluation.method != "cv":
            raise ValueError("pruning.fidelity 'folds' needs evaluation.method 'cv'")
        # Every fold is a step: the running CV mean after k folds is the rung's score.
        return RungSchedule(
            kind, None, tuple(range(1, spec.evaluation.folds + 1)), spec.evaluation.folds
        )
    max_resource = max(2, round(1 / pruning.min_fraction))
    return RungSchedule(
        kind, param, rung_steps(max_resource, pruning.reduction_factor), max_resource
    )


def build_pruner(rule: str, reduction_factor: int, max_resource: int, bootstrap_count: int) -> Any:
    """Return Optuna's pruner for ``rule`` (rungs from one step up to ``max_resource``)."""
    import optuna

    if rule == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1,
            reduction_factor=reduction_factor,
            min_early_stopping_rate=0,
            bootstrap_count=bootstrap_count,
        )
    if rule == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=max_resource,
            reduction_factor=reduction_factor,
            bootstrap_count=bootstrap_count,
        )
    raise ValueError(f"pruning rule must be one of {RUNG_RULES}, got {rule!r}")


_STUDIES: dict[tuple[str, str], Any] = {}
_STUDIES_LOCK = threading.Lock()


def _study(path: str, name: str, pruner: Any, direction: str | None = None) -> Any:
    """Return the Optuna study in the journal at ``path`` (one per process and file)."""
    key = (path, name)
    with _STUDIES_LOCK:
        if key not in _STUDIES:
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = JournalStorage(JournalFileBackend(path))
            if direction is not None:
                _STUDIES[key] = optuna.create_study(
                    study_name=name,
                    storage=storage,
                    direction="maximize" if direction == "maximize" else "minimize",
                    pruner=pruner,
                    load_if_exists=True,
                )
            else:
                _STUDIES[key] = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        return _STUDIES[key]


@dataclass(frozen=True)
class RungPruner:
    """One trial's line to the pruner: sent with the trial (it pickles to a few strings)."""

    path: str
    study_name: str
    optuna_trial_id: int
    rule: str
    reduction_factor: int
    max_resource: int
    bootstrap_count: int

    def should_prune(self, step: int, value: float) -> bool:
        """Report ``value`` at ``step``; return whether the trial stops here."""
        import optuna

        pruner = build_pruner(
            self.rule, self.reduction_factor, self.max_resource, self.bootstrap_count
        )
        trial = optuna.trial.Trial(_study(self.path, self.study_name, pruner), self.optuna_trial_id)
        trial.report(float(value), step)
        return bool(trial.should_prune())


class RungOracle:
    """The study's side: one Optuna trial per trial of ours, told as ours are told."""

    def __init__(self, spec: StudySpec, state_path: Path, direction: str) -> None:
        from optuna.trial import TrialState

        pruning = spec.budget.pruning
        schedule = schedule_for(spec)
        assert pruning is not None and schedule is not None
        self.schedule = schedule
        self.path = str(state_path.with_name(state_path.stem + ".pruner.log"))
        self._args = (pruning.rule, pruning.reduction_factor, schedule.max_resource)
        self._bootstrap = pruning.bootstrap_count
        self.study = _study(self.path, spec.name, self._pruner(), direction)
        self._numbers: dict[str, int] = {}
        # Trials in flight at a crash are evaluated again: each gets a fresh Optuna trial.
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)

    def _pruner(self) -> Any:
        return build_pruner(*self._args, self._bootstrap)

    def handle(self, trial_id: str) -> RungPruner:
        """Open an Optuna trial for ours; return the handle the evaluation reports to."""
        trial = self.study.ask()
        trial.set_user_attr(TRIAL_ATTR, trial_id)
        self._numbers[trial_id] = trial.number
        return RungPruner(
            self.path, self.study.study_name, trial._trial_id, *self._args, self._bootstrap
        )

    def tell(self, trial_id: str, status: str, value: float | None) -> None:
        """Close the trial's Optuna trial: complete (with its score), pruned or failed."""
        from optuna.trial import TrialState

        number = self._numbers.pop(trial_id, None)
        if number is None:
            return
        if status == "completed" and value is not None:
            self.study.tell(number, float(value), skip_if_finished=True)
        else:
            state = TrialState.PRUNED if status == "pruned" else TrialState.FAIL
            self.study.tell(number, state=state, skip_if_finished=True)
