"""The study spec: what to optimize, on which data, how, and which gates a candidate must pass."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Metric names and directions come from one registry (tasks.metrics.register_metric).
from tasks.metrics import SYSTEM_METRICS as SYSTEM_METRICS
from tasks.metrics import metrics_for as metrics_for
from tasks.spec_stages import StagesSpec

Direction = Literal["minimize", "maximize"]
TaskType = Literal["binary", "multiclass", "regression"]


class SpecError(ValueError):
    """A study spec is invalid; the message names the field and what to write instead."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One dimension of a search space (the YAML shape the optimizers take)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    # Active only when another parameter takes one of these values, e.g.
    # {"penalty": ["elasticnet"]}. Optimizers may leave inactive parameters out.
    condition: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"'low' must be below 'high', got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got low={self.low}")
        return self


class DataSpec(_Strict):
    """Where the training set comes from: a Feast feature service, or a file."""

    source: Literal["feast", "file"] = "feast"
    # feast: label rows (entity key, event_timestamp, target) joined point-in-time.
    feature_service: str = "conversion_model_v1"
    labels: str | None = None  # parquet/CSV of label rows; default: the generated sessions
    # file: any table with a target column.
    path: str | None = None
    target: str = "converted"
    timestamp_column: str | None = "event_timestamp"
    drop_columns: list[str] = Field(default_factory=list)
    # Restrict the label rows to a time window (the retrain flow's "recent window").
    start: datetime | None = None
    end: datetime | None = None
    max_rows: int | None = Field(default=None, gt=0)
    # Prior rows: the labels of the ``history_days`` before ``start`` join every fit with the
    # weight the trial's ``history_weight`` parameter gives them (a power prior; without
    # that parameter, or at 0, they are unused) and are never scored: cross-validation and
    # the gates judge the window's own rows. What a retrain after a change learns from.
    history_days: float | None = Field(default=None, gt=0)
    # The application's served outcomes (the offers it made and whether they converted),
    # rows like ``labels`` (feast) or ``path`` (file), joined alike over the same window and
    # fitted with the training rows. They are the rows one model chose to act on, not a
    # sample of everyone: never in the hold-out or drift samples (tasks/data.py).
    outcomes: str | None = None
    # Those outcomes alone are the window's rows, hold-out too: a retrain before any label
    # of a change arrived (tasks/retrain_window.py); prior and drift samples stay labels.
    served_only: bool = False

    @model_validator(mode="after")
    def _check_source(self) -> DataSpec:
        if self.source == "file" and not self.path:
            raise ValueError("data.source 'file' needs data.path (a CSV or parquet file)")
        if self.served_only and not self.outcomes:
            raise ValueError("data.served_only learns from data.outcomes: set it, or leave it off")
        if self.history_days is not None and self.start is None:
            raise ValueError(
                "data.history_days counts back from data.start: set data.start, "
                "or leave history_days out"
            )
        for name in ("path", "outcomes"):
            value = getattr(self, name)
            if value and Path(value).suffix.lower() not in {".csv", ".parquet", ".pq"}:
                raise ValueError(f"data.{name} must be a .csv or .parquet file, got {value!r}")
        return self


class ModelSpec(_Strict):
    """A model family from the registry in tasks/models.py and its search space."""

    family: str = "hist_gradient_boosting"
    space: dict[str, ParamSpec] | None = None  # None: the family's default space
    fixed: dict[str, Any] = Field(default_factory=dict)  # passed to every trial as-is

    @field_validator("family")
    @classmethod
    def _available(cls, family: str) -> str:
        # At validation, not in every trial: an extra that is not installed (xgboost) is
        # refused here with its pip line, instead of failing each trial behind an MLflow tag.
        from tasks.models import ModelFamilyError, get_family

        try:
            get_family(family)
        except ModelFamilyError as exc:
            raise ValueError(str(exc)) from None
        return family

    @field_validator("space")
    @classmethod
    def _non_empty(cls, space: dict[str, ParamSpec] | None) -> dict[str, ParamSpec] | None:
        if space is not None and not space:
            raise ValueError(
                "the search space is empty: list at least one parameter, "
                "or leave 'space' out to use the family's default space"
            )
        return space

    @model_validator(mode="after")
    def _fixed_is_not_searched(self) -> ModelSpec:
        both = sorted(set(self.space or {}) & set(self.fixed))
        if both:
            raise ValueError(
                f"{both} are both fixed and searched: a fixed value is never searched; "
                "remove them from 'space' or from 'fixed'"
            )
        return self


class PruningSpec(_Strict):
    """Stop a trial early when it is clearly worse than the others.

    ``median``: after ``after_folds`` folds, worse than the median of completed trials.
    ``asha`` / ``hyperband``: Optuna's asynchronous successive halving or Hyperband over
    the family's fidelity (tasks/pruners.py): rungs at ``min_fraction``, then
    ``reduction_factor`` times more, up to the full fidelity; the top
    ``1 / reduction_factor`` of each rung goes on.
    """

    rule: Literal["median", "asha", "hyperband"] = "median"
    after_folds: int = Field(default=2, ge=1)  # median
    min_trials: int = Field(default=5, ge=1)  # median: completed trials before it prunes
    # asha / hyperband; fidelity None: the one the model family declares
    fidelity: Literal["rows", "iterations", "folds"] | None = None
    reduction_factor: int = Field(default=3, ge=2)
    # 1/3, not 1/9: at a ninth of the boosting iterations the ranking was too noisy to cut on
    # (benchmarks/optimize_multifidelity.py, 8 seeds: ASHA from 1/9 reached full TPE's best
    # on 2, from 1/3 on 6, with a better median best at equal CPU).
    min_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    bootstrap_count: int = Field(default=0, ge=0)  # trials at a rung before it prunes


class BudgetSpec(_Strict):
    max_trials: int = Field(default=32, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    # The trials' own CPU time (each trial's thread), summed: the study stops asking once
    # it is spent, lets the trials in flight finish, and returns the best so far.
    max_cpu_seconds: float | None = Field(default=None, gt=0)
    trial_timeout_seconds: float | None = Field(default=300, gt=0)
    patience: int | None = Field(default=None, ge=1)  # stop after N trials without improvement
    pruning: PruningSpec | None = None


class EvaluationSpec(_Strict):
    method: Literal["cv", "holdout"] = "cv"
    folds: int = Field(default=5, ge=2)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # time-ordered, for "holdout"
    # Kept out of the optimizer's sight (the latest rows when time-stamped): the gates use it.
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    latency_calls: int = Field(default=200, ge=10)


class PerformanceGate(_Strict):
    metric: str = "roc_auc"
    max_regression: float = Field(default=0.005, ge=0)  # vs the champion, same rows
    floor: float | None = 0.6  # absolute, when there is no champion yet


class FairnessGate(_Strict):
    sensitive_attribute: str = "age_band"
    # The score at and above which the application acts (shows the offer): fairness is
    # judged on that decision. With rare positives a 0.5 cut predicts no one positive and
    # every parity difference is trivially 0.
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    max_demographic_parity_difference: float = Field(default=0.1, ge=0, le=1)
    max_equalized_odds_difference: float = Field(default=0.1, ge=0, le=1)


class GatesSpec(_Strict):
    """Which gates run (tasks.gates): a key per gate; a gate registered in user code reads
    its own extra key (``gates: {my_gate: {...}}``), checked against the gate registry."""

    model_config = ConfigDict(extra="allow")

    performance: PerformanceGate | None = Field(default_factory=PerformanceGate)
    fairness: FairnessGate | None = None
    # Single-row p95 CPU milliseconds of the flavour that will serve (ONNX when it does).
    latency_p95_ms: float | None = Field(default=50.0, gt=0)
    max_model_bytes: int | None = Field(default=50_000_000, gt=0)  # of what serves

    @model_validator(mode="after")
    def _extra_keys_are_gates(self) -> GatesSpec:
        if self.model_extra:
            from tasks.gates import gate_spec_keys

            unknown = sorted(set(self.model_extra) - gate_spec_keys())
            if unknown:
                raise ValueError(
                    f"no registered gate reads {unknown}; known gates keys: "
                    f"{sorted(gate_spec_keys())} (tasks.gates.register_gate adds one)"
                )
        return self


class ChoiceSpec(_Strict):
    """Which Pareto candidate goes to ``staging`` (tasks/staging.py states both rules)."""

    rule: Literal["knee", "utility", "none"] = "knee"
    # utility: weight per objective (>= 0) of its normalized loss; objectives left out weigh 0
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights(self) -> ChoiceSpec:
        import math

        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("weights: each weight is a finite number >= 0")
        if self.rule == "utility" and not any(w > 0 for w in self.weights.values()):
            raise ValueError("weights: rule 'utility' needs a positive weight on an objective")
        return self


class RegisterSpec(_Strict):
    # The registered model the candidates join; several studies (hyperopt, ax, a retrain)
    # can feed one model's rollout. None: the study's name.
    model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    max_candidates: int = Field(default=3, ge=1)  # of the Pareto set, or the top trials
    convert_onnx: bool = True
    # Retire the challengers earlier studies registered once this one adds a challenger
    # (tasks/supersede.py); a retrain sets it: its candidates learned from the new data.
    supersede_challengers: bool = False
    choice: ChoiceSpec = Field(default_factory=ChoiceSpec)  # the best trade-off to staging


class DriftSpec(_Strict):
    """When the retrain flow calls the recent window drifted from the champion's training data.

    p-values alone flag everything at large n, so each test needs an effect size as well.
    """

    psi_numeric: float = Field(default=0.2, gt=0)  # population stability index, 10 quantile bins
    psi_categorical: float = Field(default=0.2, gt=0)
    psi_bins: int = Field(default=10, ge=2, le=100)
    ks_alpha: float = Field(default=0.01, gt=0, lt=1)
    ks_min_statistic: float = Field(default=0.1, gt=0, le=1)  # effect-size guard on the KS test
    chi2_alpha: float = Field(default=0.01, gt=0, lt=1)
    chi2_min_cramers_v: float = Field(default=0.1, gt=0, le=1)  # effect-size guard on chi-square
    metric_margin: float = Field(default=0.02, ge=0)  # champion's metric worse than hold-out by
    min_rows: int = Field(default=200, ge=10)  # fewer recent rows: not enough to judge
    recent_days: float = Field(default=7.0, gt=0)  # window checked when no range is given
    max_reference_rows: int = Field(default=50_000, ge=100)  # sample kept with the champion
    features: list[str] | None = None  # None: every feature of the training set


def _multi_objective(optimizer: str) -> bool:
    from tasks.optimizers import get_backend

    return get_backend(optimizer).supports_multi_objective()


def _default_objectives() -> dict[str, Direction]:
    return {"roc_auc": "maximize"}


class StudySpec(_Strict):
    """A study: the ``optimize`` flow's parameter (Prefect renders it as a form)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskType = "binary"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    objectives: dict[str, Direction] = Field(default_factory=_default_objectives)
    # A registered backend (tasks.optimizers.register_optimizer or the entry-point group).
    optimizer: str = "hyperopt"
    optimizer_options: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    q: int = Field(default=2, ge=1, le=64)
    seed: int = 0
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)
    registration: RegisterSpec = Field(default_factory=RegisterSpec)
    # Points enqueued before the optimizer's own suggestions (the retrain's warm start).
    warm_start: list[dict[str, Any]] = Field(default_factory=list)
    # Evaluate the family's library defaults first, so tuning is never worse than no tuning
    # on the study's own evaluation, and the result says by how much it won.
    defaults_first: bool = True
    drift: DriftSpec = Field(default_factory=DriftSpec)
    # feature_selection -> hpo -> compression (tasks/stages.py); None: HPO alone, as before
    stages: StagesSpec | None = None  # tasks/spec_stages.py

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from tasks.optimizers import ConfigurationError, get_backend

        try:
            get_backend(name)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _check_pruning(self) -> StudySpec:
        # asha/hyperband need a fidelity the family has (tasks/pruners.py says which).
        from tasks.pruners import schedule_for

        try:
            schedule_for(self)
        except ValueError as exc:
            raise ValueError(f"budget.pruning: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_objectives(self) -> StudySpec:
        if not self.objectives:
            raise ValueError("objectives: name at least one metric, e.g. {roc_auc: maximize}")
        supported = metrics_for(self.task)
        for metric in self.objectives:
            if metric not in supported:
                raise ValueError(
                    f"objectives: {metric!r} is not measured for task {self.task!r}; "
                    f"choose from {sorted(supported)}"
                )
        if len(self.objectives) > 1 and not _multi_objective(self.optimizer):
            raise ValueError(
                f"objectives: {self.optimizer} optimizes a single objective, got "
                f"{list(self.objectives)}; use optimizer 'ax' for a Pareto front, or keep one "
                "objective and bound the others with gates (gates.latency_p95_ms, "
                "gates.max_model_bytes)"
            )
        unknown = sorted(set(self.registration.choice.weights) - set(self.objectives))
        if unknown:
            raise ValueError(f"registration.choice.weights: {unknown} are not objectives")
        if self.gates.performance is not None and self.gates.performance.metric not in supported:
            raise ValueError(
                f"gates.performance.metric: {self.gates.performance.metric!r} is not measured "
                f"for task {self.task!r}; choose from {sorted(supported)}"
            )
        return self

    @property
    def model_name(self) -> str:
        """The registered model's name in MLflow (``registration.model_name`` or ``name``)."""
        return self.registration.model_name or self.name

    @property
    def primary_objective(self) -> tuple[str, Direction]:
        """The first objective: what 'best' means for single-objective summaries."""
        name, direction = next(iter(self.objectives.items()))
        return name, direction

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudySpec:
        """Load and validate a spec; errors name the field, e.g. ``model.space.lr.type``."""
        path = Path(path)
        if not path.exists():
            raise SpecError(f"spec file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a spec is a YAML mapping with at least 'name'")
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: dict[str, Any], *, source: str = "spec") -> StudySpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                for err in exc.errors()
            ]
            raise SpecError(f"{source} is not a valid study spec:\n" + "\n".join(lines)) from exc
