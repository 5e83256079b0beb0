"""The register steps as tasks: load the study, register, gate, convert, alias, then tell the world.

``flows/register.py`` chains them. Every step is idempotent: a trial already registered
keeps its version, a version already gated keeps its verdict and alias, a flavour already
decided is not re-decided. The flow's result (also the ``banditflow.candidates.registered``
event's payload) is ``{"model", "study", "versions": [{version, trial_id, passed, failures,
alias, serving_flavour, gates, ...}], "registered": {version: alias or None}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contract import (
    EVENT_CANDIDATES_REGISTERED,
    STAGING,
    TAG_FAMILY,
    TAG_GATE_PREFIX,
    TAG_METRIC_PREFIX,
    TAG_ONNX_FALLBACK,
    TAG_PREFIX,
    TAG_SERVING_FLAVOUR,
    model_resource_id,
)
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec
from tasks.tracking import configure_mlflow

if TYPE_CHECKING:
    from tasks.gates import Holdout
    from tasks.registry import RegisteredVersion, TrialLike
    from tasks.staging import Choice


@dataclass
class VersionState:
    """One candidate version as it moves through the steps."""

    registered: RegisteredVersion
    model: Any | None = None  # the refit pipeline; None when the version existed already
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    score: float | None = None
    alias: str | None = None
    flavour: str | None = None
    error: str | None = None  # a step that errored on this version (the run fails at the end)

    @property
    def version(self) -> str:
        return self.registered.version

    def loaded_model(self) -> Any:
        if self.model is None:
            from tasks.registry import load_version_model

            self.model = load_version_model(self.registered.name, self.version)
        return self.model


@dataclass
class RegistrationPlan:
    """What the register flow works on: the spec (named as the model), trials, data."""

    spec: StudySpec
    study: str
    trials: list[TrialLike]
    data: Any
    parent_run_id: str | None
    staged: Choice | None = None  # the trial the choice rule sends to staging


@task(name="load-study", cache_policy=NO_CACHE)
def plan_registration(
    study: str, spec: StudySpec | None, model_name: str | None, settings: PipelineSettings
) -> RegistrationPlan:
    """Load the study's result, spec and data, and pick the trials to register.

    The registered model: ``model_name``, else the spec's ``registration.model_name``,
    else the study's own name. The spec carries it as its name from here on.
    """
    from tasks.data import load_study_data
    from tasks.registry import select_trials
    from tasks.stages import with_compression_choice
    from tasks.staging import choose_for, with_choice
    from tasks.study import load_study_result

    result = load_study_result(study, settings)
    spec = spec or load_study_spec(result.parent_run_id, settings)
    data = load_study_data(spec, settings)
    trials = select_trials(spec, result.best, result.pareto, result.top)
    choice = choose_for(spec, result.pareto)
    trials = with_choice(trials, result.pareto, choice)
    trials, choice = with_compression_choice(trials, choice, result.parent_run_id, settings)
    target = model_name or spec.registration.model_name or spec.name
    if target != spec.name:
        spec = spec.model_copy(update={"name": target})
    return RegistrationPlan(spec, study, trials, data, result.parent_run_id, choice)


@task(name="register-candidates", cache_policy=NO_CACHE)
def register_candidates(
    spec: StudySpec,
    study: str,
    trials: list[TrialLike],
    data: Any,
    settings: PipelineSettings,
    parent_run_id: str | None = None,
) -> list[VersionState]:
    """Refit and register each trial (or find its version)."""
    from tasks.registry import register_trial
    from tasks.tracking import ensure_experiment

    client = configure_mlflow(settings)
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = ensure_experiment(spec.name, settings)
    states = []
    for trial in trials:
        registered, model = register_trial(
            client,
            spec,
            trial,
            data.X_train,
            data.y_train,
            study=study,
            experiment_id=experiment_id,
            feature_types=getattr(data, "feature_types", None),
            parent_run_id=parent_run_id,
            history=getattr(data, "history", None),
        )
        states.append(VersionState(registered, model))
    return states


@task(name="run-gates", cache_policy=NO_CACHE)
def gate_candidates(
    spec: StudySpec,
    states: list[VersionState],
    holdout: Holdout,
    settings: PipelineSettings,
    feature_types: Mapping[str, str] | None = None,
) -> list[VersionState]:
    """Decide each new version's serving flavour and gate it; record flavour and reports."""
    from tasks.gates import gate_and_record, recorded_verdict
    from tasks.quantized import quantized_serving
    from tasks.registry import champion

    client = configure_mlflow(settings)
    metric = spec.gates.performance.metric if spec.gates.performance else None
    current = champion(client, spec.name)
    for state in states:
        tags = client.get_model_version(spec.name, state.version).tags or {}
        passed, failures, score = recorded_verdict(tags, metric)
        if passed is None:
            try:
                report = gate_and_record(
                    client,
                    spec.name,
                    state.version,
                    state.registered.run_id,
                    state.loaded_model(),
                    gates=spec.gates,
                    holdout=holdout,
                    task=spec.task,
                    # A version is not judged against itself (a re-run after a crash).
                    champion=None if current is None or current[0] == state.version else current[1],
                    latency_calls=spec.evaluation.latency_calls,
                    convert_onnx=spec.registration.convert_onnx,
                    feature_types=feature_types,
                    serving=quantized_serving(client, spec, state, holdout, feature_types),
                )
            except Exception as exc:  # noqa: BLE001 - recorded; the flow fails after the rest
                state.passed, state.failures = False, ["error"]
                state.error = f"run-gates: {type(exc).__name__}: {str(exc)[:300]}"
                continue
            passed, failures, score = report.passed, report.failures, report.metric_value
        state.passed, state.failures, state.score = passed, failures, score
    return states


@task(name="assign-aliases", cache_policy=NO_CACHE)
def assign_candidate_aliases(
    spec: StudySpec,
    study: str,
    states: list[VersionState],
    settings: PipelineSettings,
    staged: Choice | None = None,
) -> list[VersionState]:
    """First champion if none, ``challenger-N`` for the other passers, nothing for failures.

    The ``staged`` trial (the best trade-off, tasks/staging.py) gets ``staging`` instead.
    """
    from tasks.registry import GatedVersion, assign_aliases
    from tasks.staging import hold_back, set_staging

    client = configure_mlflow(settings)
    direction: str = "maximize"
    if spec.gates.performance is not None:
        from tasks.metrics import direction_of

        direction = direction_of(spec.gates.performance.metric, spec.task)
    gated: list[GatedVersion] = [
        GatedVersion(s.version, bool(s.passed), s.score, s.failures) for s in states
    ]
    trial = staged.trial_id if staged else None
    version = next((s.version for s in states if s.registered.trial_id == trial), None)
    live, stage = hold_back(client, spec.name, gated, version)
    aliases = assign_aliases(client, spec.name, live, study=study, direction=direction)
    if stage is not None and staged is not None:
        set_staging(client, spec.name, stage, f"{staged.reason} (study {study})")
        aliases[stage] = STAGING
    for state in states:
        state.alias = aliases.get(state.version)
    return states


@task(name="convert-onnx", cache_policy=NO_CACHE)
def convert_candidates(
    spec: StudySpec, states: list[VersionState], holdout: Holdout, settings: PipelineSettings
) -> list[VersionState]:
    """Give each passing version without one its serving flavour (the gates decide it first).

    A version gated before the gates tagged flavours (an older registry) gets it here.
    """
    from tasks.onnx import OnnxOutcome, convert_and_check, record_serving_flavour

    client = configure_mlflow(settings)
    for state in states:
        if not state.passed:
            continue
        tags = client.get_model_version(spec.name, state.version).tags or {}
        if TAG_SERVING_FLAVOUR in tags:
            state.flavour = tags[TAG_SERVING_FLAVOUR]
            continue
        if spec.registration.convert_onnx:
            outcome, onnx_bytes = convert_and_check(
                state.loaded_model(),
                holdout.X,
                task=spec.task,
                timing_calls=spec.evaluation.latency_calls,
            )
        else:
            reason = "registration.convert_onnx is off in the spec"
            outcome, onnx_bytes = OnnxOutcome("sklearn", reason, converted=False), None
        record_serving_flavour(
            client, spec.name, state.version, state.registered.run_id, outcome, onnx_bytes
        )
        state.flavour = outcome.flavour
        if spec.registration.convert_onnx and not outcome.converted:  # a failed step
            state.error = f"convert-onnx: {outcome.reason} (serves as sklearn)"
    return states


@task(name="describe-candidates", cache_policy=NO_CACHE)
def describe_candidates(
    spec: StudySpec, study: str, states: list[VersionState], settings: PipelineSettings
) -> list[VersionState]:
    """Write each version's human summary (gates, scores, flavour) as its description."""
    client = configure_mlflow(settings)
    for state in states:
        tags = client.get_model_version(spec.name, state.version).tags or {}
        text = version_description(spec, study, state, tags)
        client.update_model_version(spec.name, state.version, description=text)
    return states


def version_description(
    spec: StudySpec, study: str, state: VersionState, tags: Mapping[str, str]
) -> str:
    """Return a version's summary for the registry's page; the tags stay the audit log."""
    verdict = "passed every gate" if state.passed else f"FAILED {', '.join(state.failures)}"
    family = tags.get(TAG_FAMILY, spec.model.family)
    lines = [f"**{verdict}** - study {study}, trial {state.registered.trial_id} ({family})", ""]
    metric = spec.gates.performance.metric if spec.gates.performance else None
    if metric and state.score is not None:
        lines.append(f"- hold-out {metric}: {state.score:.4g}")
    scores = {
        k[len(TAG_METRIC_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_METRIC_PREFIX)
    }
    if scores:
        lines.append(
            "- cross-validation: " + ", ".join(f"{k} {v}" for k, v in sorted(scores.items()))
        )
    lines += [f"- gate {name}: {value}" for name, value in sorted(gate_tags(tags).items())]
    fallback = tags.get(TAG_ONNX_FALLBACK)
    flavour = tags.get(TAG_SERVING_FLAVOUR, "-") + (f" ({fallback})" if fallback else "")
    lines += [
        f"- serves as: {flavour}",
        f"- candidate run: {state.registered.run_id}",
        "",
        f"Every step is also a `{TAG_PREFIX}*` tag of this version (the audit log).",
    ]
    return "\n".join(lines)


def gate_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Return ``{gate: "pass|fail: value=... threshold=..."}`` from a version's tags."""
    return {k[len(TAG_GATE_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_GATE_PREFIX)}


def summarize(
    spec: StudySpec, study: str, states: list[VersionState], settings: PipelineSettings
) -> dict[str, Any]:
    """Return the flow's result (also the event's payload): each version and its verdict."""
    from contract import aliases_of

    client = configure_mlflow(settings)
    held: dict[str, list[str]] = {}
    for alias, version in aliases_of(client, spec.name).items():
        held.setdefault(version, []).append(alias)
    versions = []
    for state in states:
        tags = client.get_model_version(spec.name, state.version).tags or {}
        # What the version holds now: a champion promoted before (by hand, or a re-run)
        # shows as champion, not "-".
        state.alias = ", ".join(sorted(held.get(state.version, []))) or state.alias
        versions.append(
            {
                "version": state.version,
                "trial_id": state.registered.trial_id,
                "run_id": state.registered.run_id,
                "created": state.registered.created,
                "passed": state.passed,
                "failures": state.failures,
                "score": state.score,
                "alias": state.alias,
                "serving_flavour": state.flavour,
                "onnx_fallback_reason": tags.get(TAG_ONNX_FALLBACK),
                "description": client.get_model_version(spec.name, state.version).description,
                "gates": gate_tags(tags),
                "error": state.error,  # a step that errored (the flow run fails)
            }
        )
    return {
        "model": spec.name,
        "study": study,
        "versions": versions,
        "registered": {v["version"]: v["alias"] for v in versions},  # version -> alias
    }


def emit_registered(summary: dict[str, Any]) -> None:
    """Emit ``banditflow.candidates.registered`` for the model, with the versions' verdicts."""
    from prefect.events import emit_event

    emit_event(
        event=EVENT_CANDIDATES_REGISTERED,
        resource={
            "prefect.resource.id": model_resource_id(summary["model"]),
            "prefect.resource.name": summary["model"],
        },
        related=[
            {
                "prefect.resource.id": model_resource_id(summary["model"], v["version"]),
                "prefect.resource.role": "model-version",
            }
            for v in summary["versions"]
        ],
        payload=summary,
    )


def log_summary(summary: dict[str, Any]) -> None:
    """Log one line per version: verdict, alias, serving flavour."""
    try:
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except Exception:  # called outside a run
        log = logging.getLogger(__name__)
    for v in summary["versions"]:
        log.info(
            "%s version %s (trial %s): gates %s%s, alias %s, serving %s",
            summary["model"],
            v["version"],
            v["trial_id"],
            "passed" if v["passed"] else "failed",
            f" ({', '.join(v['failures'])})" if v["failures"] else "",
            v["alias"] or "-",
            v["serving_flavour"] or "-",
        )


def load_study_spec(parent_run_id: str, settings: PipelineSettings) -> StudySpec:
    """Read the spec the optimize flow logged as ``spec.yaml`` on the study's parent run."""
    import tempfile

    import mlflow

    configure_mlflow(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=parent_run_id, artifact_path="spec.yaml", dst_path=tmp
        )
        return StudySpec.from_yaml(path)
