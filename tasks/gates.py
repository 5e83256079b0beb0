"""Validation gates: what a registered candidate must prove on the hold-out before it gets traffic.

A gate is a :class:`Gate` subclass registered by name (:func:`register_gate`): it reads its
settings from one key of the spec's ``gates`` section and answers
``check(candidate, champion) -> GateResult``. The built-ins live in ``tasks.gate_checks``
(performance, fairness, latency, size); a gate added from user code needs no edit here.

Gates judge the flavour that will serve (:class:`tasks.onnx.ServingFlavour`): its
predictions, its single-row latency and its bytes, the ONNX model when ONNX will serve.
A :class:`GateReport` holds every result; :func:`record_gate_report` writes it to the
version's run as artifacts (JSON, Markdown, HTML: ``tasks.gate_report``) and as tags.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from contract import (
    GATE_ARTIFACT_DIR,
    TAG_GATE_FAILURES,
    TAG_GATE_PREFIX,
    TAG_GATES,
    TAG_HOLDOUT_PREFIX,
)
from tasks.gate_report import GateReport, GateResult
from tasks.metrics import metrics_for, predictions, score, score_model
from tasks.spec import GatesSpec, TaskType
from tasks.timing import model_predictor, serialized_bytes, single_row_latency_ms

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.onnx import ServingFlavour


class GateError(ValueError):
    """A gate cannot be evaluated as declared (missing attribute, unsupported task, ...)."""


@dataclass(frozen=True)
class Holdout:
    """The rows the gates judge on: features, labels and (optionally) the sensitive attribute."""

    X: pd.DataFrame
    y: np.ndarray
    sensitive: pd.Series | None = None
    # The same rows with every column the data had (tasks.data's test_frame): a champion
    # from another study may use features this study dropped.
    raw: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise GateError(f"hold-out X has {len(self.X)} rows but y has {len(self.y)}")
        if self.sensitive is not None and len(self.sensitive) != len(self.X):
            raise GateError(
                f"hold-out sensitive attribute has {len(self.sensitive)} rows, X has {len(self.X)}"
            )


@dataclass
class GateCandidate:
    """A model as the gates see it: its serving flavour on the hold-out, measured once."""

    model: Any
    holdout: Holdout
    task: TaskType
    serving: ServingFlavour | None = None
    latency_calls: int = 200
    X: pd.DataFrame | None = None  # the hold-out in the model's own columns (None: absent)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.X is None:
            self.X = self.holdout.X

    @property
    def flavour(self) -> str:
        return self.serving.name if self.serving is not None else "sklearn"

    @property
    def classes(self) -> np.ndarray | None:
        return None if self.task == "regression" else np.asarray(self.model.classes_)

    def outputs(self) -> np.ndarray:
        """What the serving flavour returns on the hold-out rows (cached)."""
        if "outputs" not in self._cache:
            if self.X is None:
                raise GateError("the hold-out lacks this model's input columns")
            predict = self.serving.predict if self.serving else None
            out = predict(self.X) if predict else predictions(self.model, self.X, self.task)
            self._cache["outputs"] = out
        return np.asarray(self._cache["outputs"])

    def score(self, metric: str) -> float:
        return score(metric, self.holdout.y, self.outputs(), classes=self.classes, task=self.task)

    def latency_ms(self) -> float:
        """p95 single-row CPU milliseconds of the serving flavour (tasks.timing)."""
        if self.serving is not None and self.serving.latency_ms is not None:
            return self.serving.latency_ms
        if "latency" not in self._cache:
            assert self.X is not None
            predict = (
                self.serving.predict if self.serving else model_predictor(self.model, self.task)
            )
            self._cache["latency"] = single_row_latency_ms(
                predict, self.X, calls=self.latency_calls
            )
        return float(self._cache["latency"])

    def size_bytes(self) -> int:
        """Bytes of the artifact that serves (the ONNX file, or the pickled pipeline)."""
        if self.serving is not None:
            return self.serving.size_bytes
        return serialized_bytes(self.model)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute once per candidate what several gates share (fairlearn's frame)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


class Gate:
    """A check a candidate must pass; subclasses set ``name`` and ``spec_key``.

    ``spec_key`` is the key of the spec's ``gates`` section that turns the gate on (its value,
    not None, is ``self.config``); several gates may share one key (the two fairness ones).
    """

    name: ClassVar[str]
    spec_key: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    def validate(self, task: TaskType) -> None:
        """Raise :class:`GateError` before anything is measured if the gate cannot run."""

    def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
        raise NotImplementedError


_GATES: dict[str, type[Gate]] = {}


def register_gate(cls: type[Gate], *, replace: bool = False) -> type[Gate]:
    """Register a gate class under ``cls.name`` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not name or not getattr(cls, "spec_key", None):
        raise GateError(f"gate class {cls.__name__} needs a 'name' and a 'spec_key'")
    if name in _GATES and _GATES[name] is not cls and not replace:
        raise GateError(f"gate {name!r} is already registered; pass replace=True to override")
    _GATES[name] = cls
    return cls


def unregister_gate(name: str) -> None:
    _GATES.pop(name, None)


def registered_gates() -> dict[str, type[Gate]]:
    """Return ``{gate name: class}`` in registration (and report) order."""
    import tasks.gate_checks  # noqa: F401 - registers the built-ins

    return dict(_GATES)


def gate_spec_keys() -> set[str]:
    """Return the keys of the spec's ``gates`` section that some registered gate reads."""
    return {cls.spec_key for cls in registered_gates().values()}


def configured_gates(gates: GatesSpec | Mapping[str, Any]) -> list[Gate]:
    """Instantiate every registered gate whose spec key is set (not None) in ``gates``."""
    if isinstance(gates, GatesSpec):  # the typed sub-models, and any extra gate's settings
        values = {k: getattr(gates, k) for k in type(gates).model_fields}
        values |= dict(gates.model_extra or {})
    else:
        values = dict(gates)
    unknown = set(values) - gate_spec_keys()
    if unknown:
        raise GateError(f"no gate reads gates.{sorted(unknown)}; known: {sorted(gate_spec_keys())}")
    return [
        cls(values[cls.spec_key])
        for cls in registered_gates().values()
        if values.get(cls.spec_key) is not None
    ]


# --- running the gates ---------------------------------------------------------------------
def score_metric(metric: str, model: Any, X: pd.DataFrame, y: np.ndarray, task: TaskType) -> float:
    """Return ``metric`` of a fitted sklearn model on ``(X, y)`` (the spec's metric names)."""
    supported = metrics_for(task)
    if metric not in supported:
        raise GateError(
            f"metric {metric!r} is not defined for task {task!r}; use {sorted(supported)}"
        )
    if metric == "latency_ms":
        return single_row_latency_ms(model_predictor(model, task), X)
    if metric == "model_bytes":
        return float(serialized_bytes(model))
    return score_model(metric, model, X, y, task)


def run_gates(
    gates: GatesSpec,
    model: Any,
    holdout: Holdout,
    *,
    task: TaskType,
    champion: Any | None = None,
    latency_calls: int = 200,
    serving: ServingFlavour | None = None,
) -> GateReport:
    """Run every gate the spec turns on for one candidate; ``champion`` is the model to beat.

    ``serving`` is the flavour that will serve (``tasks.onnx.serving_flavour``); without
    it the sklearn model itself is judged.
    """
    checks = configured_gates(gates)
    problems = []
    for gate in checks:  # fail before the slow measurements, saying every problem at once
        try:
            gate.validate(task)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise GateError("; ".join(problems))
    candidate = GateCandidate(model, holdout, task, serving, latency_calls)
    rival = None
    if champion is not None:
        rival = GateCandidate(champion, holdout, task, None, latency_calls)
        rival.X = champion_inputs(champion, holdout)
    results = [gate.check(candidate, rival) for gate in checks]
    groups = next((r.details for r in results if r.details), {})
    perf = getattr(gates, "performance", None)
    metric = perf.metric if perf is not None else None
    value = next((r.value for r in results if r.name == "performance"), None)
    return GateReport(results, groups, metric, value, candidate.flavour)


def champion_inputs(champion: Any, holdout: Holdout) -> pd.DataFrame | None:
    """Return the hold-out rows in the champion's own input columns, or None if absent."""
    names = getattr(champion, "feature_names_in_", None)
    if names is None:
        return holdout.X
    names = [str(n) for n in names]
    if all(n in holdout.X.columns for n in names):
        return holdout.X[names]
    if holdout.raw is not None and all(n in holdout.raw.columns for n in names):
        from tasks.data import clean_features

        return clean_features(holdout.raw[names].reset_index(drop=True))
    return None


# --- the registry side -------------------------------------------------------------------
def record_gate_report(
    client: MlflowClient, name: str, version: str | int, run_id: str, report: GateReport
) -> dict[str, str]:
    """Log the report on the version's run (JSON, Markdown, HTML) and as version tags."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "gate_report.json").write_text(report.to_json())
        (folder / "gate_report.md").write_text(report.to_markdown())
        (folder / "gate_report.html").write_text(report.to_html())
        client.log_artifacts(run_id, str(folder), GATE_ARTIFACT_DIR)
    tags = report.version_tags()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    # The run carries the verdict and the measured values too, so the experiment's runs
    # table shows them next to the trial metrics.
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    values = [
        Metric(f"gate.{r.name}", float(r.value), stamp, 0)
        for r in report.results
        if math.isfinite(r.value)
    ]
    client.log_batch(run_id, metrics=values, tags=[])
    client.set_tag(run_id, TAG_GATES, tags[TAG_GATES])
    return tags


def gate_and_record(
    client: MlflowClient,
    name: str,
    version: str | int,
    run_id: str,
    model: Any,
    *,
    gates: GatesSpec,
    holdout: Holdout,
    task: TaskType,
    champion: Any | None = None,
    latency_calls: int = 200,
    convert_onnx: bool = True,
    feature_types: Mapping[str, str] | None = None,
    serving: Any | None = None,
) -> GateReport:
    """Decide the serving flavour, gate that flavour, and write both back to the registry.

    The flavour (ONNX when it converts, agrees with sklearn and is faster) is tagged first,
    so the gates' verdict and the flavour that serves always belong together. ``serving``:
    a flavour decided elsewhere (a quantized choice, tasks/quantized.py) instead.
    """
    from tasks.onnx import record_serving_flavour, serving_flavour

    serving = serving or serving_flavour(
        model,
        holdout.X,
        task=task,
        convert=convert_onnx,
        feature_types=feature_types,
        timing_calls=latency_calls,
    )
    record_serving_flavour(client, name, version, run_id, serving.outcome, serving.onnx_bytes)
    report = run_gates(
        gates,
        model,
        holdout,
        task=task,
        champion=champion,
        latency_calls=latency_calls,
        serving=serving,
    )
    record_gate_report(client, name, version, run_id, report)
    if report.metric is not None and report.metric_value is not None:
        client.set_model_version_tag(
            name, str(version), TAG_HOLDOUT_PREFIX + report.metric, f"{report.metric_value:.6g}"
        )
    return report


def holdout_from(data: Any, gates: GatesSpec) -> Holdout:
    """Build the gates' hold-out from ``tasks.data.StudyData`` (sensitive attribute included)."""
    sensitive = None
    task = getattr(data, "task", "binary")
    if gates.fairness is not None and task != "binary":  # before anything is registered
        raise GateError(
            f"the fairness gate needs a binary task, the study's task is {task!r}: "
            "remove gates.fairness from the spec"
        )
    if gates.fairness is not None:
        attr = gates.fairness.sensitive_attribute
        frame = getattr(data, "test_frame", None)
        if frame is not None and attr in frame.columns:
            sensitive = frame[attr].reset_index(drop=True)
        elif attr in data.X_test.columns:
            sensitive = data.X_test[attr].reset_index(drop=True)
        else:
            raise GateError(
                f"gates.fairness.sensitive_attribute {attr!r} is not a column of the study's "
                "hold-out rows: name one of its columns, or remove gates.fairness"
            )
    raw = getattr(data, "test_frame", None)
    if raw is not None and len(raw) != len(data.X_test):
        raw = None
    return Holdout(data.X_test, np.asarray(data.y_test), sensitive, raw)


def recorded_verdict(
    tags: dict[str, str], metric: str | None
) -> tuple[bool | None, list[str], float | None]:
    """Read a version's earlier verdict: ``(passed, or None if never gated; failures; score)``."""
    verdict = tags.get(TAG_GATES)
    if verdict is None:
        return None, [], None
    failures = [f for f in (tags.get(TAG_GATE_FAILURES) or "").split(",") if f]
    raw = tags.get(TAG_HOLDOUT_PREFIX + metric) if metric else None
    return verdict == "passed", failures, None if raw is None else float(raw)


def report_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """Return ``{gate name: tag text}`` of a version's gate tags (for tables and events)."""
    return {
        key[len(TAG_GATE_PREFIX) :]: value
        for key, value in tags.items()
        if key.startswith(TAG_GATE_PREFIX)
    }
