"""Every alias, tag, event and entry-point name that the two halves share, spelled once.

The bottom floor of the house: it imports nothing of the project (and nothing heavy), so
`tasks/`, `flows/`, `rollout/` and the CLI can all import it. DESIGN.md: "The two halves
meet only through contracts: the MLflow registry (names, aliases, tags), Prefect events,
and the rollout service's HTTP API."
"""

from __future__ import annotations

import re

# --- aliases ---------------------------------------------------------------------------
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
# The best trade-off of a study's Pareto set: served as a shadow arm (scored beside the
# champion, never answering) until it is made a challenger.
STAGING = "staging"
CHALLENGER_PREFIX = "challenger-"
_CHALLENGER_RE = re.compile(r"^challenger-(\d+)$")


def challenger_alias(n: int) -> str:
    """Return the alias of the n-th challenger (1-based)."""
    if n < 1:
        raise ValueError(f"challenger numbers start at 1, got {n=}")
    return f"{CHALLENGER_PREFIX}{n}"


def is_challenger_alias(alias: str) -> bool:
    return bool(_CHALLENGER_RE.match(alias))


def challenger_number(alias: str) -> int | None:
    """Return N of a ``challenger-N`` alias, or None for any other alias."""
    m = _CHALLENGER_RE.match(alias)
    return int(m.group(1)) if m else None


# --- version tags ----------------------------------------------------------------------
TAG_PREFIX = "banditflow."
TAG_STUDY = "banditflow.study"
TAG_TRIAL = "banditflow.trial_id"
TAG_PARAMS_HASH = "banditflow.params_hash"
TAG_METRIC_PREFIX = "banditflow.metric."  # + metric name
TAG_GATE_PREFIX = "banditflow.gate."  # + gate name: "pass: value=... threshold=..."
TAG_GATES = "banditflow.gates"  # "passed" | "failed"
TAG_GATE_FAILURES = "banditflow.gate_failures"  # comma-separated gate names
TAG_SERVING_FLAVOUR = "banditflow.serving_flavour"  # "onnx" | "sklearn"
TAG_ONNX_URI = "banditflow.onnx_uri"  # artifact URI of the ONNX file
TAG_ONNX_FALLBACK = "banditflow.onnx_fallback_reason"
TAG_ROLE = "banditflow.role"  # the alias a version holds, written at each move
TAG_EVENT_PREFIX = "banditflow.event."  # + UTC timestamp: "<action>: <reason>"
TAG_HOLDOUT_PREFIX = "banditflow.holdout."  # + metric name: the gate's hold-out score
TAG_FAMILY = "banditflow.family"  # the model family a version was built from
GATE_ARTIFACT_DIR = "gates"  # the folder of a version's run that holds its gate report

# --- run tags (MLflow tracking: study parents, trial children, drift checks) -----------
TAG_STATUS = "banditflow.status"  # a trial's outcome: ok | failed | pruned
TAG_REASON = "banditflow.reason"  # why a trial failed or was pruned
TAG_PARAMS_JSON = "banditflow.params_json"  # exact types: MLflow params are strings
TAG_STOP_REASON = "banditflow.stop_reason"  # why a study stopped
TAG_KIND = "banditflow.kind"  # what a run is: "drift" for drift checks
TAG_DRIFTED = "banditflow.drifted"  # "true" | "false" on a drift-check run
TAG_MODEL_VERSION = "banditflow.model_version"  # the version a drift check judged

# --- MLflow's own experiment tag: a classic ML experiment, not the UI's GenAI view ------
MLFLOW_EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_CLASSIC_ML = "custom_model_development"

# --- Prefect events --------------------------------------------------------------------
EVENT_FEATURES_UPDATED = "banditflow.features.updated"
EVENT_PERFORMANCE_DEGRADED = "banditflow.performance.degraded"
EVENT_DRIFT_DETECTED = "banditflow.drift.detected"
EVENT_CANDIDATES_REGISTERED = "banditflow.candidates.registered"
EVENT_ROLLOUT_PROMOTED = "banditflow.rollout.promoted"
EVENT_ROLLOUT_ROLLED_BACK = "banditflow.rollout.rolled_back"


FEATURE_VIEW_PREFIX = "banditflow.feature_view."


def feature_view_resource_id(view: str) -> str:
    """Return the Prefect event resource id of a Feast feature view."""
    return f"{FEATURE_VIEW_PREFIX}{view}"


def feature_view_of(resource_id: str) -> str:
    """Return the feature view named by a ``banditflow.feature_view.*`` resource id."""
    return resource_id.removeprefix(FEATURE_VIEW_PREFIX)


def model_resource_id(name: str, version: str | int | None = None) -> str:
    """Return the Prefect event resource id of a registered model (and version)."""
    rid = f"banditflow.model.{name}"
    return rid if version is None else f"{rid}.v{version}"


# --- entry-point groups (third-party registrations) -------------------------------------
POLICY_ENTRY_POINT_GROUP = "banditflow.policies"
MODEL_FAMILY_ENTRY_POINT_GROUP = "banditflow.model_families"
OPTIMIZER_ENTRY_POINT_GROUP = "banditflow.optimizers"

__all__ = [
    "CHAMPION",
    "PREVIOUS_CHAMPION",
    "STAGING",
    "CHALLENGER_PREFIX",
    "challenger_alias",
    "is_challenger_alias",
    "challenger_number",
    "TAG_PREFIX",
    "TAG_STUDY",
    "TAG_TRIAL",
    "TAG_PARAMS_HASH",
    "TAG_METRIC_PREFIX",
    "TAG_GATE_PREFIX",
    "TAG_GATES",
    "TAG_GATE_FAILURES",
    "TAG_SERVING_FLAVOUR",
    "TAG_ONNX_URI",
    "TAG_ONNX_FALLBACK",
    "TAG_ROLE",
    "TAG_EVENT_PREFIX",
    "TAG_HOLDOUT_PREFIX",
    "TAG_FAMILY",
    "GATE_ARTIFACT_DIR",
    "TAG_STATUS",
    "TAG_REASON",
    "TAG_PARAMS_JSON",
    "TAG_STOP_REASON",
    "TAG_KIND",
    "TAG_DRIFTED",
    "TAG_MODEL_VERSION",
    "MLFLOW_EXPERIMENT_KIND_TAG",
    "EXPERIMENT_KIND_CLASSIC_ML",
    "EVENT_FEATURES_UPDATED",
    "EVENT_PERFORMANCE_DEGRADED",
    "EVENT_DRIFT_DETECTED",
    "EVENT_CANDIDATES_REGISTERED",
    "EVENT_ROLLOUT_PROMOTED",
    "EVENT_ROLLOUT_ROLLED_BACK",
    "FEATURE_VIEW_PREFIX",
    "feature_view_resource_id",
    "feature_view_of",
    "model_resource_id",
    "POLICY_ENTRY_POINT_GROUP",
    "MODEL_FAMILY_ENTRY_POINT_GROUP",
    "OPTIMIZER_ENTRY_POINT_GROUP",
]
