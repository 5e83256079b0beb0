"""Convert a candidate's sklearn pipeline to ONNX, prove it agrees, and keep it only if faster.

The ONNX contract (what the rollout service relies on when it serves ``serving_flavour=onnx``):

- **Inputs**: one input per column the pipeline was fit on (its ``feature_names_in_``, in
  that order), named exactly like the column, shaped ``[N, 1]``.
  A numeric column (``feature_types`` "numeric": numbers, booleans as 0/1) is
  ``tensor(float)`` (float32); a categorical one is ``tensor(string)``. Read the names and
  types from ``InferenceSession.get_inputs()`` and build the feeds with :func:`onnx_feeds`'
  rules: ``frame[[col]].to_numpy(np.float32)`` or ``frame[[col]].astype(str).to_numpy()``.
  Missing numeric values are ``NaN`` (the pipeline's imputer is part of the graph).
- **Outputs** (classifiers, converted with ``zipmap=False``): ``label`` -- shape ``[N]``,
  the predicted class, same dtype as the training labels (int64 or string) -- and
  ``probabilities`` -- float32 ``[N, n_classes]``, columns in the order of sklearn's
  ``classes_``. Regressors: ``variable``, float32 ``[N, 1]``.
- Run it with ``onnxruntime.InferenceSession(path, sess_options)`` with
  ``intra_op_num_threads=1`` (the rollout serves one row at a time; threads only add overhead).
- The file is an artifact of the model version's run; the version's tag
  ``banditflow.onnx_uri`` holds an artifact URI that ``mlflow.artifacts.download_artifacts``
  fetches. When conversion fails, disagrees or is not faster, the tag
  ``banditflow.onnx_fallback_reason`` says why and ``banditflow.serving_flavour`` is ``sklearn``.

Agreement is checked on the hold-out: probabilities within ``atol`` (1e-4) and identical
labels, except on rows where sklearn's own top two probabilities are within ``atol`` of each
other (a tie: float32 rounding may break it either way; such rows are counted and reported).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract import TAG_ONNX_FALLBACK, TAG_ONNX_URI, TAG_SERVING_FLAVOUR
from tasks.spec import TaskType
from tasks.timing import model_predictor, single_row_latency_ms

if TYPE_CHECKING:
    from mlflow import MlflowClient

ONNX_ARTIFACT_PATH = "onnx/model.onnx"
DEFAULT_ATOL = 1e-4


class OnnxConversionError(RuntimeError):
    """skl2onnx could not convert the pipeline (an unsupported step or option)."""


@dataclass(frozen=True)
class OnnxOutcome:
    """What converting and checking one candidate found; ``flavour`` is what serves it."""

    flavour: str  # "onnx" | "sklearn"
    reason: str  # why sklearn stays, or "" when onnx serves
    converted: bool
    max_probability_diff: float | None = None
    label_mismatches: int | None = None
    ties: int | None = None
    rows_checked: int = 0
    # Single-row p95 CPU milliseconds (tasks.timing.single_row_latency_ms), each flavour.
    sklearn_ms_p95: float | None = None
    onnx_ms_p95: float | None = None
    onnx_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_types(
    frame: pd.DataFrame, feature_types: Mapping[str, str] | None = None
) -> list[tuple[str, Any]]:
    """Return skl2onnx's ``initial_types``: one ``[None, 1]`` input per column.

    ``feature_types`` (``{column: "numeric" | "categorical"}``, as the pipeline was built
    with) decides each input's type; columns it does not name are typed like
    ``tasks.models.infer_feature_types`` does (numbers and booleans numeric).
    """
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from tasks.models import infer_feature_types

    types = infer_feature_types(frame) | dict(feature_types or {})
    return [
        (
            str(col),
            FloatTensorType([None, 1])
            if types[str(col)] == "numeric"
            else StringTensorType([None, 1]),
        )
        for col in frame.columns
    ]


def model_inputs(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of ``frame`` the fitted pipeline was trained on, in its order."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return frame
    absent = [str(n) for n in names if n not in frame.columns]
    if absent:
        raise OnnxConversionError(f"the hold-out lacks the model's input columns {absent}")
    return frame[[str(n) for n in names]]


def onnx_feeds(
    frame: pd.DataFrame, input_names_types: list[tuple[str, str]]
) -> dict[str, np.ndarray]:
    """Build the session's feeds from a frame, given ``[(input name, onnx type), ...]``."""
    feeds = {}
    for name, onnx_type in input_names_types:
        column = frame[name]  # a Series: a tenth of the cost of a one-column frame per row
        if onnx_type == "tensor(string)":
            feeds[name] = column.astype(str).to_numpy().reshape(-1, 1)
        else:
            feeds[name] = column.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
    return feeds


def to_onnx(
    model: Any, sample: pd.DataFrame, feature_types: Mapping[str, str] | None = None
) -> bytes:
    """Convert a fitted sklearn pipeline (columns as in ``sample``) to a serialized ONNX model."""
    from skl2onnx import convert_sklearn

    _patch_skl2onnx_tree_flags()
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    try:
        proto = convert_sklearn(
            model, initial_types=input_types(sample, feature_types), options=options
        )
    except Exception as exc:  # skl2onnx raises many kinds; all mean "cannot convert"
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise OnnxConversionError(f"{type(exc).__name__}: {message}") from exc
    return bytes(proto.SerializeToString())


def load_session(onnx_model: bytes | str | Path) -> Any:
    """Open an onnxruntime session the way the rollout service does: CPU, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def session_predict(session: Any, frame: pd.DataFrame) -> list[np.ndarray]:
    """Run the session on a frame; return its outputs in order (label, probabilities)."""
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    return list(session.run(None, onnx_feeds(frame, inputs)))


def onnx_latency_ms(session: Any, frame: pd.DataFrame, *, calls: int = 200) -> float:
    """The one single-row measurement (p95 CPU) of a session, feeds built before the clock.

    The rollout service builds the feeds from JSON, which costs next to nothing; building
    them from a one-row DataFrame costs ~20x the model, so that is left out of the timing.
    """
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    return single_row_latency_ms(
        lambda feeds: session.run(None, feeds),
        frame,
        calls=calls,
        prepare=lambda row: onnx_feeds(row, inputs),
    )


def onnx_predictor(session: Any) -> Callable[[pd.DataFrame], list[np.ndarray]]:
    """Return the call serving makes on an ONNX session (feeds built from a frame)."""
    inputs = [(i.name, i.type) for i in session.get_inputs()]

    def predict(frame: pd.DataFrame) -> list[np.ndarray]:
        return list(session.run(None, onnx_feeds(frame, inputs)))

    return predict


def check_agreement(
    model: Any, session: Any, holdout: pd.DataFrame, *, task: TaskType, atol: float = DEFAULT_ATOL
) -> tuple[dict[str, Any], str]:
    """Compare the session's outputs with the sklearn model's; return (figures, "" or why not)."""
    outputs = session_predict(session, holdout)
    if task == "regression":
        expected = np.asarray(model.predict(holdout), dtype=float)
        got = np.asarray(outputs[0], dtype=float).reshape(-1)
        diff = float(np.max(np.abs(expected - got))) if len(got) else 0.0
        # Regression has no probabilities: hold the prediction to the same tolerance, relative.
        scale = max(1.0, float(np.max(np.abs(expected))) if len(expected) else 1.0)
        agreement = {"max_probability_diff": diff, "label_mismatches": 0, "ties": 0}
        if diff > atol * scale:
            return agreement, f"predictions differ by up to {diff:.3g} (> {atol} x {scale:.3g})"
        return agreement, ""
    expected_proba = np.asarray(model.predict_proba(holdout), dtype=float)
    labels, proba = _classifier_outputs(session, outputs)
    diff = float(np.max(np.abs(expected_proba - proba))) if len(proba) else 0.0
    expected_labels = np.asarray(model.predict(holdout))
    ordered = np.sort(expected_proba, axis=1)
    ties = (ordered[:, -1] - ordered[:, -2]) <= atol if ordered.shape[1] > 1 else None
    mismatched = expected_labels.astype(str) != np.asarray(labels).astype(str)
    if ties is not None:
        mismatched &= ~ties
    agreement = {
        "max_probability_diff": diff,
        "label_mismatches": int(mismatched.sum()),
        "ties": int(ties.sum()) if ties is not None else 0,
    }
    if diff > atol:
        return agreement, f"probabilities differ by up to {diff:.3g} (> {atol})"
    if mismatched.any():
        return agreement, f"{int(mismatched.sum())} labels differ from sklearn's"
    return agreement, ""


def convert_and_check(
    model: Any,
    holdout: pd.DataFrame,
    *,
    task: TaskType,
    feature_types: Mapping[str, str] | None = None,
    atol: float = DEFAULT_ATOL,
    timing_calls: int = 200,
) -> tuple[OnnxOutcome, bytes | None]:
    """Convert, check agreement on the hold-out, and time both single-row predictions.

    Return the outcome and the ONNX bytes when ONNX should serve (converts, agrees, faster).
    """
    try:
        holdout = model_inputs(model, holdout)
        onnx_bytes = to_onnx(model, holdout.head(5), feature_types)
        session = load_session(onnx_bytes)
    except OnnxConversionError as exc:
        return OnnxOutcome("sklearn", f"conversion failed: {exc}", converted=False), None
    except Exception as exc:  # onnxruntime refuses a graph it has no kernel for
        reason = f"onnxruntime cannot load the graph: {type(exc).__name__}: {str(exc)[:200]}"
        return OnnxOutcome("sklearn", reason, converted=False), None

    common = {"converted": True, "rows_checked": len(holdout), "onnx_bytes": len(onnx_bytes)}
    agreement, disagreement = check_agreement(model, session, holdout, task=task, atol=atol)
    if disagreement:
        reason = f"ONNX disagrees with sklearn on the hold-out: {disagreement}"
        return OnnxOutcome("sklearn", reason, **common, **agreement), None  # type: ignore[arg-type]

    sk_ms = single_row_latency_ms(model_predictor(model, task), holdout, calls=timing_calls)
    onnx_ms = onnx_latency_ms(session, holdout, calls=timing_calls)
    timing = {"sklearn_ms_p95": sk_ms, "onnx_ms_p95": onnx_ms}
    if onnx_ms >= sk_ms:
        reason = f"ONNX is not faster: single-row p95 {onnx_ms:.3f} ms vs sklearn {sk_ms:.3f} ms"
        outcome = OnnxOutcome("sklearn", reason, **common, **agreement, **timing)  # type: ignore[arg-type]
        return outcome, None
    outcome = OnnxOutcome("onnx", "", **common, **agreement, **timing)  # type: ignore[arg-type]
    return outcome, onnx_bytes


@dataclass
class ServingFlavour:
    """The flavour of a candidate that will serve: what the gates judge, and what it costs.

    ``predict(frame)`` returns what serving returns (class probabilities in ``classes``
    order, or regression predictions); ``size_bytes`` is the artifact that serves (the ONNX
    file, or the cloudpickled pipeline); ``latency_ms`` is the one single-row measurement
    (p95 CPU), already taken by the ONNX comparison when it ran.
    """

    name: str  # "onnx" | "sklearn"
    predict: Callable[[pd.DataFrame], np.ndarray]
    size_bytes: int
    latency_ms: float | None
    outcome: OnnxOutcome
    onnx_bytes: bytes | None = None


def serving_flavour(
    model: Any,
    holdout: pd.DataFrame,
    *,
    task: TaskType,
    convert: bool = True,
    feature_types: Mapping[str, str] | None = None,
    timing_calls: int = 200,
) -> ServingFlavour:
    """Decide the flavour that will serve ``model`` (ONNX when it converts, agrees, is faster)."""
    from tasks.metrics import predictions
    from tasks.timing import serialized_bytes

    if convert:
        outcome, onnx_bytes = convert_and_check(
            model, holdout, task=task, feature_types=feature_types, timing_calls=timing_calls
        )
    else:
        reason = "registration.convert_onnx is off in the spec"
        outcome, onnx_bytes = OnnxOutcome("sklearn", reason, converted=False), None
    if outcome.flavour == "onnx" and onnx_bytes is not None:
        session = load_session(onnx_bytes)
        columns = list(model_inputs(model, holdout).columns)
        return ServingFlavour(
            "onnx",
            _onnx_scores(session, task, columns),
            len(onnx_bytes),
            outcome.onnx_ms_p95,
            outcome,
            onnx_bytes,
        )
    return ServingFlavour(
        "sklearn",
        lambda frame: predictions(model, frame, task),
        serialized_bytes(model),
        outcome.sklearn_ms_p95,
        outcome,
    )


def _onnx_scores(
    session: Any, task: TaskType, columns: list[str]
) -> Callable[[pd.DataFrame], np.ndarray]:
    run = onnx_predictor(session)

    def predict(frame: pd.DataFrame) -> np.ndarray:
        outputs = run(frame[columns])
        if task == "regression":
            return np.asarray(outputs[0], dtype=float).reshape(-1)
        return _classifier_outputs(session, outputs)[1]

    return predict


def record_serving_flavour(
    client: MlflowClient,
    name: str,
    version: str | int,
    run_id: str,
    outcome: OnnxOutcome,
    onnx_bytes: bytes | None,
) -> dict[str, str]:
    """Log the ONNX file on the version's run (when it serves) and tag the version's flavour."""
    tags: dict[str, str] = {TAG_SERVING_FLAVOUR: outcome.flavour}
    if outcome.flavour == "onnx":
        if onnx_bytes is None:
            raise ValueError("an ONNX outcome needs the ONNX bytes to log")
        folder, _, filename = ONNX_ARTIFACT_PATH.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(onnx_bytes)
            client.log_artifact(run_id, str(path), folder)
        tags[TAG_ONNX_URI] = f"runs:/{run_id}/{ONNX_ARTIFACT_PATH}"
    else:
        tags[TAG_ONNX_FALLBACK] = outcome.reason
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value[:4900])
    if outcome.flavour == "onnx":
        # A re-run that falls back must not leave a stale reason next to the onnx flavour.
        existing = client.get_model_version(name, str(version)).tags or {}
        if TAG_ONNX_FALLBACK in existing:
            client.delete_model_version_tag(name, str(version), TAG_ONNX_FALLBACK)
    return tags


def _classifier_outputs(session: Any, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    by_name = dict(zip(names, outputs, strict=True))
    if "label" not in by_name or "probabilities" not in by_name:
        raise OnnxConversionError(f"expected outputs 'label' and 'probabilities', got {names}")
    return np.asarray(by_name["label"]).reshape(-1), np.asarray(
        by_name["probabilities"], dtype=float
    )


@functools.cache
def _patch_skl2onnx_tree_flags() -> None:
    """Make skl2onnx 1.20 convert HistGradientBoosting* again.

    It passes a Python ``bool`` as ``nodes_missing_value_tracks_true`` for leaves, which
    protobuf >= 5 rejects in an int list ("Expected an int, got a boolean"), so every
    HistGradientBoosting conversion fails. Coercing the flag to ``int`` is all it needs; the
    agreement check on the hold-out still decides whether the result serves.
    """
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    @functools.wraps(original)
    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(
            *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
        )

    tree_ensemble.add_node = add_node
