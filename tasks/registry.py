"""Candidates into the MLflow Model Registry: refit, log, register (once), and hand out aliases.

A study's best trial -- or its Pareto set, up to ``registration.max_candidates`` -- is refit
on the full training part and logged as an MLflow model (signature, input example,
cloudpickle), registered under the spec's name and tagged with its study, trial, parameters'
hash and metrics. The same trial registered again finds its version by those tags instead
of creating a second one. Aliases and the champion's history go through
:mod:`contract`, the same helpers the rollout service uses.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from contract import (
    CHAMPION,
    TAG_FAMILY,
    TAG_GATE_FAILURES,
    TAG_GATES,
    TAG_METRIC_PREFIX,
    TAG_PARAMS_HASH,
    TAG_STUDY,
    TAG_TRIAL,
    add_challenger,
    aliases_of,
    promote,
    record_event,
    was_rejected,
)
from tasks.metrics import sign as loss_sign
from tasks.spec import StudySpec, TaskType

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

MODEL_ARTIFACT = "model"


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no trial to register, unknown model, ...)."""


class TrialLike(Protocol):
    """What registration needs of a study's trial (``tasks.study.TrialRecord`` has it)."""

    @property
    def trial_id(self) -> Any: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def values(self) -> dict[str, float]: ...


@dataclass
class Candidate:
    """A trial's pipeline refit on the full training part, ready to log."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, float]
    model: Any
    family: str = ""

    @property
    def params_hash(self) -> str:
        return params_hash(self.params)


@dataclass
class RegisteredVersion:
    """A candidate's model version, and whether this call created it."""

    name: str
    version: str
    run_id: str
    trial_id: str
    created: bool
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def params_hash(params: Mapping[str, Any]) -> str:
    """Return a stable short hash of a parameter set (key order and numpy types ignored)."""
    text = json.dumps(dict(params), sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pip_requirements() -> list[str]:
    """Return the pins a served pipeline needs; passing them skips MLflow's slow inference."""
    pins = []
    for dist in ("scikit-learn", "numpy", "pandas", "scipy", "cloudpickle"):
        try:
            pins.append(f"{dist}=={package_version(dist)}")
        except PackageNotFoundError:  # pragma: no cover - all are mlflow/sklearn dependencies
            pins.append(dist)
    return pins


# --- which trials, refit ------------------------------------------------------------------
def select_trials(
    spec: StudySpec,
    best: TrialLike | None,
    pareto: Sequence[TrialLike] = (),
    top: Sequence[TrialLike] = (),
) -> list[TrialLike]:
    """Return the trials to register, best first, at most ``registration.max_candidates``.

    Several objectives: the Pareto set, ordered by the primary objective. One objective:
    the top trials by it (the best alone when the study gives no ranking).
    """
    limit = spec.registration.max_candidates
    metric, direction = spec.primary_objective
    sign = loss_sign(direction)

    def key(trial: TrialLike) -> float:
        value = trial.values.get(metric)
        return math.inf if value is None or math.isnan(value) else sign * value

    if len(spec.objectives) > 1 and pareto:
        return sorted(pareto, key=key)[:limit]
    ranked = sorted(top, key=key)[:limit] if top else []
    if best is not None and all(str(t.trial_id) != str(best.trial_id) for t in ranked):
        ranked = [best, *ranked][:limit]
    if not ranked:
        raise RegistryError(
            f"study {spec.name!r} has no completed trial to register: run the optimize flow "
            "first, or check why its trials failed"
        )
    return ranked


def refit_candidate(
    spec: StudySpec,
    trial: TrialLike,
    X_train: pd.DataFrame,
    y_train: Any,
    feature_types: Mapping[str, Any] | None = None,
    history: tuple[pd.DataFrame, Any] | None = None,
) -> Candidate:
    """Build the trial's pipeline and fit it on the full training part (and prior rows)."""
    from tasks.models import build_model, fit_model, merge_params

    params = merge_params(spec.model.fixed, trial.params)
    model = build_model(
        spec.model.family,
        params,
        task=spec.task,
        feature_types=feature_types,
        X=X_train,
        seed=spec.seed,
    )
    fit_model(model, X_train, y_train, params, history)
    metrics = {k: float(v) for k, v in (trial.values or {}).items() if v is not None}
    return Candidate(str(trial.trial_id), dict(trial.params), metrics, model, spec.model.family)


# --- registration -------------------------------------------------------------------------
def find_version(
    client: MlflowClient, name: str, *, study: str, trial_id: str, params_digest: str
) -> ModelVersion | None:
    """Return the version already registered for this study's trial and parameters, if any."""
    from mlflow.exceptions import MlflowException

    query = (
        f"name = '{_quote(name)}' and tags.`{TAG_STUDY}` = '{_quote(study)}' "
        f"and tags.`{TAG_TRIAL}` = '{_quote(trial_id)}' "
        f"and tags.`{TAG_PARAMS_HASH}` = '{params_digest}'"
    )
    try:
        found = client.search_model_versions(query)
    except MlflowException:  # the registered model does not exist yet
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def register_candidate(
    client: MlflowClient,
    name: str,
    candidate: Candidate,
    *,
    study: str,
    experiment_id: str,
    input_example: pd.DataFrame,
    task: TaskType,
    parent_run_id: str | None = None,
) -> RegisteredVersion:
    """Log and register ``candidate`` under ``name`` (``register_trial`` looks for it first)."""
    import mlflow
    from mlflow.models import infer_signature

    from tasks.tracking import input_example as signature_example

    example = signature_example(input_example)
    output = (
        candidate.model.predict(example)
        if task == "regression"
        else candidate.model.predict_proba(example)
    )
    finite = {k: v for k, v in candidate.metrics.items() if math.isfinite(v)}
    tags = {
        TAG_STUDY: study,
        TAG_TRIAL: candidate.trial_id,
        TAG_PARAMS_HASH: candidate.params_hash,
        TAG_FAMILY: candidate.family,
        **{f"{TAG_METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in finite.items()},
    }
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"candidate-trial-{candidate.trial_id}",
        parent_run_id=parent_run_id,
        tags=tags,
    ) as run:
        mlflow.log_params({k: _plain(v) for k, v in candidate.params.items()})
        if finite:
            mlflow.log_metrics(finite)
        info = mlflow.sklearn.log_model(
            candidate.model,
            name=MODEL_ARTIFACT,
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format="cloudpickle",
        )
        # The version is created with its tags in one call: a version without them could
        # not be found again, and a re-run would register the trial a second time.
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    return RegisteredVersion(
        name, str(mv.version), run.info.run_id, candidate.trial_id, created=True, tags=tags
    )


def _existing(name: str, mv: ModelVersion, trial_id: str) -> RegisteredVersion:
    """Return the version found for a trial as a ``RegisteredVersion`` (not created now)."""
    return RegisteredVersion(
        name, str(mv.version), str(mv.run_id), trial_id, created=False, tags=dict(mv.tags or {})
    )


def register_trial(
    client: MlflowClient,
    spec: StudySpec,
    trial: TrialLike,
    X_train: pd.DataFrame,
    y_train: Any,
    *,
    study: str,
    experiment_id: str,
    feature_types: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    history: tuple[pd.DataFrame, Any] | None = None,
) -> tuple[RegisteredVersion, Any | None]:
    """Refit and register one trial, or find its version; return it and the fresh model.

    The model is None when the version already existed (nothing was refit).
    """
    existing = find_version(
        client,
        spec.name,
        study=study,
        trial_id=str(trial.trial_id),
        params_digest=params_hash(trial.params),
    )
    if existing is not None:
        return _existing(spec.name, existing, str(trial.trial_id)), None
    candidate = refit_candidate(spec, trial, X_train, y_train, feature_types, history)
    registered = register_candidate(
        client,
        spec.name,
        candidate,
        study=study,
        experiment_id=experiment_id,
        input_example=X_train,
        task=spec.task,
        parent_run_id=parent_run_id,
    )
    return registered, candidate.model


def load_version_model(name: str, version: str | int) -> Any:
    """Load a registered version's sklearn pipeline (as the rollout service does)."""
    import mlflow

    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def champion(client: MlflowClient, name: str) -> tuple[str, Any] | None:
    """Return ``(version, model)`` of the current champion, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = aliases_of(client, name)
    except MlflowException:
        return None
    version = aliases.get(CHAMPION)
    if version is None:
        return None
    return version, load_version_model(name, version)


# --- aliases ------------------------------------------------------------------------------
@dataclass
class GatedVersion:
    """A registered version with its gate verdict and hold-out score (for ranking)."""

    version: str
    passed: bool
    score: float | None = None
    failures: list[str] = field(default_factory=list)


def assign_aliases(
    client: MlflowClient,
    name: str,
    gated: Sequence[GatedVersion],
    *,
    study: str,
    direction: str = "maximize",
) -> dict[str, str | None]:
    """Crown a first champion if there is none, give other passers ``challenger-N``.

    The best passing version (by hold-out score) becomes champion when the model has none;
    every other passing version gets the next free challenger alias; a failing one gets no
    alias, and its history records which gates it failed. Returns ``{version: alias|None}``.
    """
    sign = loss_sign(direction)

    def rank(g: GatedVersion) -> tuple[float, int]:
        score = g.score if g.score is not None and math.isfinite(g.score) else None
        return (math.inf if score is None else sign * score, int(g.version))

    result: dict[str, str | None] = {}
    aliases = aliases_of(client, name)
    held = {v: a for a, v in aliases.items()}
    passing = sorted((g for g in gated if g.passed), key=rank)
    if CHAMPION not in aliases and passing:
        first = passing.pop(0)
        promote(
            client,
            name,
            first.version,
            f"first champion: best passing candidate of study {study} "
            f"(hold-out score {_score_text(first.score)})",
        )
        result[first.version] = CHAMPION
    for g in passing:
        if g.version in held:  # a re-run: it already has its place
            result[g.version] = held[g.version]
            continue
        result[g.version] = add_challenger(
            client,
            name,
            g.version,
            f"passed every gate (study {study}, hold-out score {_score_text(g.score)})",
        )
    for g in gated:
        if g.passed:
            continue
        result[g.version] = None
        tags = client.get_model_version(name, g.version).tags or {}
        if tags.get(TAG_GATES) == "failed" and not was_rejected(tags):
            failures = tags.get(TAG_GATE_FAILURES) or ",".join(g.failures)
            record_event(client, name, g.version, "rejected", f"failed gates: {failures}")
    return result


def _score_text(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.6g}"


def _quote(text: str) -> str:
    return str(text).replace("'", "\\'")


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python ones (JSON, MLflow params)."""
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
