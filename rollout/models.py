"""Loaded model versions: signature columns, feature checks, sklearn/ONNX predictors, loading.

MLflow, sklearn and onnxruntime are imported inside the loader: importing this module is cheap.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import TAG_ONNX_URI, TAG_SERVING_FLAVOUR
from rollout.errors import FeatureError, excerpt, listing
from rollout.schemas import ModelRef

MLFLOW_LOCK = threading.Lock()  # mlflow's tracking/registry URIs are process globals

# Signature column types -> the JSON values they accept.
_NUMERIC = {"double", "float", "long", "integer"}
_INTEGRAL = {"long", "integer"}
# What every serving flavour can carry: ONNX runs in float32, and 10**400 overflows a float.
_FLOAT_LIMIT = 3.4e38
_INT_LIMIT = {"long": 2**63, "integer": 2**31}


def arm_name(version: str | int) -> str:
    """Return the arm name of a model version (``v3``)."""
    return f"v{version}"


def version_of(arm: str) -> str:
    """Return the model version an arm name stands for (``v3`` -> ``3``; ``3`` -> ``3``)."""
    text = arm[1:] if arm.startswith("v") else arm
    if not text.isdigit():
        raise ValueError(f"an arm is a model version like 'v3' or '3', got {arm!r}")
    return text


@dataclass(frozen=True)
class Column:
    """One input column of a model's signature."""

    name: str
    type: str  # mlflow DataType name: double, float, long, integer, boolean, string, ...
    required: bool = True


def check_features(
    features: Mapping[str, Any],
    columns: Sequence[Column],
    *,
    required: Sequence[Column] | None = None,
) -> None:
    """Raise ``FeatureError`` naming every missing, unexpected or wrongly typed feature.

    ``columns`` are the features any arm reads; ``required`` (default: all of them) those
    a row must carry.
    """
    expected = {c.name for c in columns}
    needed = columns if required is None else required
    missing = [c.name for c in needed if c.required and c.name not in features]
    extra = sorted(set(features) - expected)
    wrong = []
    for c in columns:
        if c.name not in features:
            continue
        value = features[c.name]
        if not _type_ok(value, c.type):
            wrong.append(
                f"{c.name} (expected {_expected(c.type)}, got {type(value).__name__} "
                f"{excerpt(value, 40)})"
            )
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing features: {listing(missing)}")
        if extra:
            parts.append(f"unexpected features: {listing(extra)}")
        if wrong:
            parts.append(f"wrongly typed features: {'; '.join(wrong[:10])}")
        raise FeatureError(
            "; ".join(parts), missing=missing[:50], unexpected=extra[:50], wrong_type=wrong[:50]
        )


class RowCheck:
    """``check_features`` for one set of columns, with its name sets and kinds built once.

    A valid row (the common case) costs one pass over its values; a row that fails any
    check goes through ``check_features`` itself, so the message is the same either way.
    """

    def __init__(self, columns: Sequence[Column], *, required: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.required = list(required)
        self._expected = frozenset(c.name for c in self.columns)
        self._needed = tuple(c.name for c in self.required if c.required)
        self._kinds = tuple((c.name, c.type) for c in self.columns)

    def __call__(self, features: Mapping[str, Any]) -> None:
        """Raise ``FeatureError`` naming every missing, unexpected or wrongly typed feature."""
        ok = features.keys() <= self._expected and all(n in features for n in self._needed)
        if ok:
            for name, kind in self._kinds:
                if name in features and not _type_ok(features[name], kind):
                    ok = False
                    break
        if not ok:
            check_features(features, self.columns, required=self.required)


def _expected(kind: str) -> str:
    if kind in _INTEGRAL:
        return f"{kind} in [{-_INT_LIMIT[kind]}, {_INT_LIMIT[kind] - 1}]"
    if kind in _NUMERIC:
        return f"finite {kind} within +-{_FLOAT_LIMIT:.1e}"
    return kind


def _type_ok(value: Any, kind: str) -> bool:
    """Whether the model can take ``value`` for a column of ``kind`` (type and range)."""
    if value is None:
        return kind in _NUMERIC and kind not in _INTEGRAL  # a missing number: imputed as NaN
    if kind in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if kind in _INTEGRAL:
            if isinstance(value, float) and not value.is_integer():
                return False
            return -_INT_LIMIT[kind] <= value < _INT_LIMIT[kind]
        return -_FLOAT_LIMIT <= value <= _FLOAT_LIMIT
    if kind == "boolean":
        return isinstance(value, bool) or value in (0, 1)
    if kind == "string":
        return isinstance(value, str)
    return True  # binary/datetime: left to the model


class ServingModel:
    """A loaded model version that predicts rows of features: sklearn or ONNX."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        flavour: str,
        columns: list[Column],
        predict_rows: Callable[[Sequence[Mapping[str, Any]]], tuple[list[Any], list[float | None]]],
    ) -> None:
        self.name = name
        self.version = str(version)
        self.arm = arm_name(version)
        self.flavour = flavour
        self.columns = columns
        self.ref = ModelRef(name=name, version=self.version)  # what each response names
        self._predict_rows = predict_rows

    def check(self, features: Mapping[str, Any]) -> None:
        check_features(features, self.columns)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[float | None]]:
        """Return (predictions, scores) for rows already checked against the signature."""
        return self._predict_rows(rows)


def _plain(value: Any) -> Any:
    """Turn a numpy scalar into the JSON value it stands for."""
    return value.item() if hasattr(value, "item") else value


def sklearn_predictor(
    model: Any, columns: list[Column]
) -> Callable[[Sequence[Mapping[str, Any]]], tuple[list[Any], list[float | None]]]:
    """Wrap a fitted sklearn estimator/pipeline: label + P(positive class) for classifiers."""
    import pandas as pd

    names = [c.name for c in columns]
    classes = getattr(model, "classes_", None)

    def predict_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[float | None]]:
        frame = pd.DataFrame([[row.get(n) for n in names] for row in rows], columns=names)
        if classes is not None and hasattr(model, "predict_proba"):
            proba = model.predict_proba(frame)
            best = proba.argmax(axis=1)
            labels = [_plain(classes[i]) for i in best]
            # Binary: the score is P(second class), the usual "positive"; else P(chosen).
            if proba.shape[1] == 2:
                scores = [float(p) for p in proba[:, 1]]
            else:
                scores = [float(proba[i, j]) for i, j in enumerate(best)]
            return labels, scores  # type: ignore[return-value]
        values = model.predict(frame)
        return [_plain(v) for v in values], [float(v) for v in values]

    return predict_rows


def onnx_predictor(
    session: Any, columns: list[Column]
) -> Callable[[Sequence[Mapping[str, Any]]], tuple[list[Any], list[float | None]]]:
    """Wrap an onnxruntime session that follows tasks/onnx.py's contract (one input per column)."""
    import numpy as np

    inputs = [(i.name, i.type) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def predict_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[float | None]]:
        feeds = {}
        for name, kind in inputs:
            if kind == "tensor(string)":
                feeds[name] = np.array([[str(r.get(name))] for r in rows], dtype=object)
            else:
                feeds[name] = np.array(
                    [[np.nan if r.get(name) is None else float(r[name])] for r in rows],
                    dtype=np.float32,
                )
        result = session.run(None, feeds)
        named = dict(zip(outputs, result, strict=False))
        if "probabilities" in named:
            proba = named["probabilities"]
            labels = [_plain(v) for v in named["label"]]
            if proba.shape[1] == 2:
                scores = [float(p) for p in proba[:, 1]]
            else:
                scores = [float(p.max()) for p in proba]
            return labels, scores  # type: ignore[return-value]
        values = np.asarray(result[0]).reshape(len(rows))
        return [float(v) for v in values], [float(v) for v in values]

    return predict_rows


def load_version(
    tracking_uri: str, registry_uri: str, name: str, version: str, cache_dir: Path
) -> ServingModel:
    """Download and load one model version: ONNX when its tags say so, else sklearn."""
    import mlflow
    from mlflow import MlflowClient

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=cache_dir))
    try:
        with MLFLOW_LOCK:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(registry_uri)
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
            mv = client.get_model_version(name, version)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}", dst_path=str(target)
                )
            )
            tags = dict(mv.tags or {})
            onnx_path = None
            if tags.get(TAG_SERVING_FLAVOUR) == "onnx" and tags.get(TAG_ONNX_URI):
                onnx_path = mlflow.artifacts.download_artifacts(
                    artifact_uri=tags[TAG_ONNX_URI], dst_path=str(target / "onnx")
                )
        return _load_local(name, version, local, onnx_path)
    finally:
        # Loaded into memory: the downloaded files are not needed (hot reloads would pile up).
        shutil.rmtree(target, ignore_errors=True)


def _load_local(name: str, version: str, local: Path, onnx_path: str | None) -> ServingModel:
    from mlflow.models import Model

    info = Model.load(str(local))
    columns = _signature_columns(info)
    if onnx_path is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        if not columns:
            columns = [
                Column(i.name, "string" if i.type == "tensor(string)" else "double")
                for i in session.get_inputs()
            ]
        return ServingModel(
            name=name,
            version=version,
            flavour="onnx",
            columns=columns,
            predict_rows=onnx_predictor(session, columns),
        )
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(str(local))
    if not columns:
        raise ValueError(
            f"model {name!r} version {version} has no input signature: log it with "
            "signature=infer_signature(X, y) so the service can check features"
        )
    return ServingModel(
        name=name,
        version=version,
        flavour="sklearn",
        columns=columns,
        predict_rows=sklearn_predictor(model, columns),
    )


def _signature_columns(info: Any) -> list[Column]:
    signature = getattr(info, "signature", None)
    if signature is None or signature.inputs is None:
        return []
    columns = []
    for spec in signature.inputs.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        required = getattr(spec, "required", True)
        columns.append(Column(str(spec.name), str(kind), bool(required)))
    return columns
