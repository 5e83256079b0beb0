"""The ask/tell interface every optimizer backend implements; the flow owns the loop."""

from __future__ import annotations

import json
import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from tasks.metrics import sign
from tasks.optimizers.space import Space, normalise_space

Status = Literal["completed", "failed", "pruned"]
STATUSES: tuple[str, ...] = ("completed", "failed", "pruned")
DIRECTIONS = ("minimize", "maximize")
STATE_VERSION = 1


class OptimizerError(Exception):
    """Base class of the optimizers' errors."""


class ConfigurationError(OptimizerError, ValueError):
    """A bad argument: unknown backend or status, bad direction, ``n < 1``."""


class CapabilityError(OptimizerError, ValueError):
    """A backend cannot do what was asked (e.g. hyperopt with several objectives)."""


class UnknownTrialError(OptimizerError, KeyError):
    """``tell`` got a trial id this study never handed out."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrialAlreadyToldError(OptimizerError):
    """``tell`` was called a second time for the same trial."""


class MultiObjectiveError(OptimizerError):
    """``best()`` is ambiguous with several objectives: use ``pareto()``."""


class StateError(OptimizerError):
    """A saved optimizer state cannot be loaded."""


@dataclass(frozen=True)
class Trial:
    """A point to evaluate: ``params`` holds only the active parameters."""

    id: str
    params: dict[str, Any]


@dataclass
class TrialResult:
    """What is known about a trial: status is pending, completed, failed or pruned."""

    id: str
    params: dict[str, Any]
    status: str = "pending"
    values: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_objectives(objectives: Mapping[str, str]) -> dict[str, str]:
    if not objectives:
        raise ConfigurationError(
            "objectives is empty: name at least one metric, e.g. {'roc_auc': 'maximize'}"
        )
    out: dict[str, str] = {}
    for name, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ConfigurationError(
                f"objective {name!r}: direction must be 'minimize' or 'maximize', got {direction!r}"
            )
        out[str(name)] = str(direction)
    return out


def loss_sign(direction: str) -> float:
    """Return the factor that turns a metric of ``direction`` into a loss (lower is better)."""
    if direction not in DIRECTIONS:
        raise ConfigurationError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return sign(direction)  # the project's one direction-to-sign function


def dominates(a: list[float], b: list[float]) -> bool:
    """Return whether ``a`` Pareto-dominates ``b`` (both in minimisation form)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


class Optimizer(ABC):
    """Ask for points, tell their results; ``save``/``load`` resume a study after a crash.

    The base class keeps the study's history and the enqueued points; a backend implements
    ``_suggest`` (new points, told about pending ones), ``_register`` (a point it did not
    suggest: enqueued, or replayed on load) and ``_observe`` (a result).

    ``best()`` is defined for a single objective; with several it raises
    ``MultiObjectiveError``: use ``pareto()``.
    """

    name: ClassVar[str] = "base"
    # Whether the backend takes several objectives (a Pareto front); the spec checks it.
    multi_objective: ClassVar[bool] = True
    # Whether the same history and seed give the same next suggestions after ``load``.
    deterministic_resume: ClassVar[bool] = False

    def __init__(
        self,
        space: Mapping[str, Any],
        objectives: Mapping[str, str],
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.space: Space = normalise_space(space)
        self.objectives = _check_objectives(objectives)
        self.seed = int(seed)
        self.options = dict(options)
        self._history: dict[str, TrialResult] = {}
        self._queue: list[dict[str, Any]] = []
        self._next_id = 0

    # -- the interface -------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        """Return up to ``n`` new points: enqueued ones first, then the backend's.

        A backend may return fewer than asked (Ax waits for data); never blocks.
        """
        if n < 1:
            raise ConfigurationError(f"ask(n): n must be at least 1, got {n=}")
        trials: list[Trial] = []
        while self._queue and len(trials) < n:
            params = self._queue.pop(0)
            trial = self._new_trial(params)
            self._register(trial)
            trials.append(trial)
        if len(trials) < n:
            for params in self._suggest(n - len(trials)):
                trials.append(self._new_trial(params))
        return trials

    def enqueue(self, params: Mapping[str, Any]) -> None:
        """Serve ``params`` at the next ``ask`` before any suggestion (a warm start)."""
        self._queue.append(self.space.validate_point(params))

    def tell(
        self,
        trial_id: str,
        values: Mapping[str, float] | None,
        status: str = "completed",
        reason: str | None = None,
    ) -> TrialResult:
        """Record a trial's outcome; NaN or a missing objective makes it a failed trial."""
        trial_id = str(trial_id)
        if status not in STATUSES:
            raise ConfigurationError(f"tell: status must be one of {STATUSES}, got {status!r}")
        if trial_id not in self._history:
            raise UnknownTrialError(
                f"tell: unknown trial id {trial_id!r}; this study handed out "
                f"{len(self._history)} trials (ids '0'..'{len(self._history) - 1}')"
            )
        record = self._history[trial_id]
        if record.status != "pending":
            raise TrialAlreadyToldError(
                f"tell: trial {trial_id!r} was already told (status {record.status!r})"
            )
        clean: dict[str, float] = {}
        problems: list[str] = []
        bad_keys: set[str] = set()
        for key, value in (values or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                problems.append(f"{key}={value!r} is not a number")
                bad_keys.add(str(key))
                continue
            if math.isfinite(number):
                clean[str(key)] = number
            else:
                problems.append(f"{key}={number}")
                bad_keys.add(str(key))
        if status == "completed":
            missing = [k for k in self.objectives if k not in clean and k not in bad_keys]
            if missing or problems:
                status = "failed"
                detail = "; ".join(problems + [f"objective {k!r} missing" for k in missing])
                reason = f"{reason}; {detail}" if reason else f"bad values: {detail}"
        record.status = status
        record.values = clean
        record.reason = reason
        self._observe(record)
        return TrialResult(record.id, dict(record.params), status, dict(clean), reason)

    def trials(self) -> list[TrialResult]:
        """Return every trial handed out, in order, with status, values and reason."""
        return [
            TrialResult(r.id, dict(r.params), r.status, dict(r.values), r.reason)
            for r in self._history.values()
        ]

    def pending(self) -> list[Trial]:
        """Return the trials asked but not told yet."""
        return [
            Trial(r.id, dict(r.params)) for r in self._history.values() if r.status == "pending"
        ]

    def best(self) -> TrialResult | None:
        """Return the best completed trial (single objective), or None before any."""
        if len(self.objectives) > 1:
            raise MultiObjectiveError(
                f"best() is ambiguous with {len(self.objectives)} objectives "
                f"{list(self.objectives)}: use pareto() for the non-dominated trials"
            )
        completed = self._completed()
        if not completed:
            return None
        return min(completed, key=lambda r: self._loss_vector(r)[0])

    def pareto(self) -> list[TrialResult]:
        """Return the non-dominated completed trials, respecting each objective's direction."""
        completed = self._completed()
        losses = [self._loss_vector(r) for r in completed]
        front = [
            r
            for i, r in enumerate(completed)
            if not any(dominates(losses[j], losses[i]) for j in range(len(completed)) if j != i)
        ]
        return [
            TrialResult(r.id, dict(r.params), r.status, dict(r.values), r.reason) for r in front
        ]

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the study's state atomically (temp file, then ``os.replace``)."""
        path = Path(path)
        state = {
            "version": STATE_VERSION,
            "backend": self.name,
            "space": self.space.to_dict(),
            "objectives": self.objectives,
            "seed": self.seed,
            "options": self.options,
            "next_id": self._next_id,
            "queue": self._queue,
            # Plain dicts, not ``asdict`` (a deep copy of every value, 6 of 7 ms at 40 trials).
            "history": [
                {
                    "id": r.id,
                    "params": r.params,
                    "status": r.status,
                    "values": r.values,
                    "reason": r.reason,
                }
                for r in self._history.values()
            ],
            "backend_state": self._backend_state(),
        }
        text = json.dumps(state, default=_json_default)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Optimizer:
        """Rebuild a saved study: the same history, pending trials still pending."""
        return load_optimizer(path)

    def _restore(self, state: Mapping[str, Any]) -> None:
        for raw in state["history"]:
            record = TrialResult(**raw)
            self._history[record.id] = record
            self._register(Trial(record.id, dict(record.params)))
            if record.status != "pending":
                self._observe(record)
        self._next_id = int(state["next_id"])
        self._queue = [dict(p) for p in state["queue"]]
        self._restore_backend_state(state.get("backend_state") or {})

    # -- for backends --------------------------------------------------------------------
    def _new_trial(self, params: Mapping[str, Any]) -> Trial:
        trial_id = str(self._next_id)
        self._next_id += 1
        clean = self.space.validate_point(params)
        self._history[trial_id] = TrialResult(trial_id, dict(clean))
        return Trial(trial_id, dict(clean))

    def _peek_next_id(self) -> str:
        return str(self._next_id)

    def _completed(self) -> list[TrialResult]:
        return [r for r in self._history.values() if r.status == "completed"]

    def _loss_vector(self, record: TrialResult) -> list[float]:
        """Return the objectives in minimisation form (maximised ones negated)."""
        return [loss_sign(d) * record.values[k] for k, d in self.objectives.items()]

    @abstractmethod
    def _suggest(self, n: int) -> list[dict[str, Any]]:
        """Return up to ``n`` new points; ids are handed out in order from ``_peek_next_id``."""

    @abstractmethod
    def _register(self, trial: Trial) -> None:
        """Know about a pending point the backend did not suggest itself."""

    @abstractmethod
    def _observe(self, result: TrialResult) -> None:
        """Take a told result (completed, failed or pruned) into account."""

    def _backend_state(self) -> dict[str, Any]:
        return {}

    def _restore_backend_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore what ``_backend_state`` saved, after the history was replayed."""


def _json_default(value: Any) -> Any:
    # numpy scalars in params or values
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot save {value!r} ({type(value).__name__}) in the optimizer state")


def load_optimizer(path: str | Path) -> Optimizer:
    """Load a study saved with ``Optimizer.save``, whatever its backend."""
    from tasks.optimizers import get_optimizer

    path = Path(path)
    if not path.exists():
        raise StateError(f"no optimizer state at {str(path)!r}")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: not a saved optimizer state: {exc}") from exc
    if state.get("version") != STATE_VERSION:
        raise StateError(
            f"{path}: state version {state.get('version')!r}, this code reads {STATE_VERSION}"
        )
    optimizer = get_optimizer(
        state["backend"],
        state["space"],
        state["objectives"],
        seed=state["seed"],
        **state["options"],
    )
    optimizer._restore(state)
    return optimizer
