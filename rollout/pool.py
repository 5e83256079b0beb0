"""The model pool: the champion and every ``challenger-N`` loaded from the MLflow registry.

The pool polls the registered model's aliases; when they change it loads what is new and
swaps one immutable snapshot in a single assignment, so a request in flight finishes on the
snapshot it started with and no request is dropped. A version that fails to load or to
predict is out of rotation (its traffic goes to the champion) and says why.
MLflow, sklearn and onnxruntime are imported inside the loader: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from contract import (
    CHAMPION,
    TAG_ONNX_URI,
    TAG_SERVING_FLAVOUR,
    is_challenger_alias,
)
from rollout.errors import FeatureError

_log = logging.getLogger(__name__)
_MLFLOW_LOCK = threading.Lock()  # mlflow's tracking/registry URIs are process globals

# Signature column types -> the JSON values they accept.
_NUMERIC = {"double", "float", "long", "integer"}
_INTEGRAL = {"long", "integer"}


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
            wrong.append(f"{c.name} (expected {c.type}, got {type(value).__name__} {value!r})")
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing features: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected features: {', '.join(extra)}")
        if wrong:
            parts.append(f"wrongly typed features: {'; '.join(wrong)}")
        raise FeatureError("; ".join(parts), missing=missing, unexpected=extra, wrong_type=wrong)


def _type_ok(value: Any, kind: str) -> bool:
    if value is None:
        return kind in _NUMERIC and kind not in _INTEGRAL  # a missing number: imputed as NaN
    if kind in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind in _INTEGRAL:
            return isinstance(value, int) or float(value).is_integer()
        return math.isfinite(value) if isinstance(value, float) else True
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
        with _MLFLOW_LOCK:
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


@dataclass(frozen=True)
class ArmEntry:
    """One arm of the pool: a model version, its role, and whether it can serve."""

    arm: str
    version: str
    role: str  # champion | challenger-N | shadow
    model: ServingModel | None = None
    error: str | None = None  # why it is out of rotation (load/predict failure, guardrail)

    @property
    def serving(self) -> bool:
        return self.model is not None and self.error is None


@dataclass(frozen=True)
class PoolSnapshot:
    """An immutable view of the pool; requests read one and never see it change."""

    arms: dict[str, ArmEntry] = field(default_factory=dict)
    champion: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    registry_error: str | None = None

    @property
    def rotation(self) -> list[str]:
        """Arms that take live traffic: the champion and challengers that can serve."""
        return sorted(a for a, e in self.arms.items() if e.serving and e.role != "shadow")

    @property
    def shadows(self) -> list[str]:
        return sorted(a for a, e in self.arms.items() if e.serving and e.role == "shadow")

    @property
    def fingerprint(self) -> str:
        """Identify the arm set in rotation (sticky units keep their arm while it holds)."""
        return hashlib.sha256(",".join(self.rotation).encode()).hexdigest()[:16]

    def champion_model(self) -> ServingModel | None:
        entry = self.arms.get(self.champion or "")
        return entry.model if entry is not None and entry.serving else None

    @cached_property
    def input_columns(self) -> list[Column]:
        """Every feature an arm in rotation (or in shadow) reads: what a request may carry.

        Arms may read different features (a challenger trained with one more, a baseline
        with fewer); clients send one row with all of them and each model takes its own.
        """
        columns: dict[str, Column] = {}
        for arm in (*self.rotation, *self.shadows):
            model = self.arms[arm].model
            for column in model.columns if model is not None else ():
                columns.setdefault(column.name, column)
        return list(columns.values())

    def check_row(self, features: Mapping[str, Any], champion: ServingModel) -> None:
        """Raise ``FeatureError`` for a row the champion cannot score or no arm knows."""
        check_features(features, self.input_columns or champion.columns, required=champion.columns)


Loader = Callable[[str, str], ServingModel]


class ModelPool:
    """Loads the champion and challengers of one registered model and keeps them current."""

    def __init__(
        self,
        *,
        model_name: str,
        tracking_uri: str,
        registry_uri: str,
        cache_dir: Path,
        loader: Loader | None = None,
    ) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.cache_dir = cache_dir
        self._loader = loader or self._load_from_registry
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self.snapshot = PoolSnapshot()
        self.pulled: dict[str, str] = {}  # arm -> reason, from guardrails/failures/the store
        self.shadow_versions: list[str] = []
        self.load_failures = 0

    def _load_from_registry(self, name: str, version: str) -> ServingModel:
        return load_version(self.tracking_uri, self.registry_uri, name, version, self.cache_dir)

    def read_aliases(self) -> dict[str, str]:
        from mlflow import MlflowClient

        with _MLFLOW_LOCK:
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
            model = client.get_registered_model(self.model_name)
            return {str(k): str(v) for k, v in (model.aliases or {}).items()}

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read aliases, load new versions, and swap the snapshot; return True if changed."""
        with self._lock:
            old = self.snapshot
            try:
                aliases = self.read_aliases()
            except Exception as exc:  # registry down or model missing: keep serving what we have
                message = f"cannot read aliases of {self.model_name!r}: {type(exc).__name__}: {exc}"
                if old.registry_error != message:
                    _log.warning(message)
                    self.snapshot = replace(old, registry_error=message)
                return False
            roles: dict[str, tuple[str, str]] = {}  # arm -> (version, role)
            champion_version = aliases.get(CHAMPION)
            for alias, version in sorted(aliases.items()):
                if is_challenger_alias(alias):
                    roles[arm_name(version)] = (version, alias)
            if champion_version is not None:
                roles[arm_name(champion_version)] = (champion_version, CHAMPION)
            for version in self.shadow_versions:
                roles.setdefault(arm_name(version), (version, "shadow"))
            if (
                not force
                and aliases == old.aliases
                and {a: (e.version, e.role) for a, e in old.arms.items()} == roles
                and all(self._expected_error(a, old.arms[a]) == old.arms[a].error for a in roles)
                and old.registry_error is None
            ):
                return False
            arms: dict[str, ArmEntry] = {}
            model: ServingModel | None
            for arm, (version, role) in roles.items():
                previous = old.arms.get(arm)
                if previous is not None and previous.model is not None and not force:
                    model, error = previous.model, None
                else:
                    model, error = self._try_load(version)
                reason = error or self.pulled.get(arm)
                arms[arm] = ArmEntry(arm=arm, version=version, role=role, model=model, error=reason)
            champion = arm_name(champion_version) if champion_version is not None else None
            self.snapshot = PoolSnapshot(arms=arms, champion=champion, aliases=aliases)
            return True

    def _expected_error(self, arm: str, entry: ArmEntry) -> str | None:
        if entry.model is None:
            return entry.error
        return self.pulled.get(arm)

    def _try_load(self, version: str) -> tuple[ServingModel | None, str | None]:
        try:
            return self._loader(self.model_name, version), None
        except Exception as exc:
            self.load_failures += 1
            _log.exception("model %s version %s failed to load", self.model_name, version)
            return None, f"failed to load: {type(exc).__name__}: {exc}"[:500]

    def set_pulled(self, pulled: Mapping[str, str]) -> None:
        """Take these arms out of rotation (reason per arm); others go back in."""
        with self._lock:
            self.pulled = dict(pulled)
            old = self.snapshot
            arms = {}
            for arm, entry in old.arms.items():
                if entry.model is None:
                    arms[arm] = entry
                else:
                    arms[arm] = replace(entry, error=self.pulled.get(arm))
            if arms != old.arms:
                self.snapshot = replace(old, arms=arms)

    def pull(self, arm: str, reason: str) -> bool:
        """Take one arm out of rotation now; return False if it already was."""
        if arm in self.pulled:
            return False
        self.set_pulled({**self.pulled, arm: reason})
        return True
