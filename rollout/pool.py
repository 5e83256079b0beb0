"""The model pool: the champion and every ``challenger-N`` loaded from the MLflow registry.

The pool polls the registered model's aliases; when they change it loads what is new and
swaps one immutable snapshot in a single assignment, so a request in flight finishes on the
snapshot it started with and no request is dropped. A version that fails to load or to
predict is out of rotation (its traffic goes to the champion) and says why.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from tenacity import Retrying, stop_after_attempt, wait_exponential

from contract import CHAMPION, STAGING, is_challenger_alias
from rollout.models import (
    MLFLOW_LOCK,
    Column,
    RowCheck,
    ServingModel,
    arm_name,
    check_features,
    load_version,
    onnx_predictor,
    sklearn_predictor,
    version_of,
)

__all__ = [
    "SHADOW",
    "ArmEntry",
    "Column",
    "ModelPool",
    "PoolSnapshot",
    "RowCheck",
    "ServingModel",
    "arm_name",
    "check_features",
    "load_version",
    "onnx_predictor",
    "sklearn_predictor",
    "version_of",
]

_log = logging.getLogger(__name__)
SHADOW = "shadow"  # the role of a shadow arm (runtime config in the store, not an alias)


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

    # Cached: a snapshot never changes (a change is a new snapshot), and requests read these.
    @cached_property
    def rotation(self) -> list[str]:
        """Arms that take live traffic: the champion and challengers that can serve."""
        return sorted(a for a, e in self.arms.items() if e.serving and e.role != SHADOW)

    @cached_property
    def shadows(self) -> list[str]:
        return sorted(a for a, e in self.arms.items() if e.serving and e.role == SHADOW)

    @cached_property
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
        checks: dict[int, RowCheck] = self.__dict__.setdefault("_row_checks", {})
        check = checks.get(id(champion))
        if check is None:  # one table of names, kinds and ranges per (snapshot, anchor)
            columns = self.input_columns or champion.columns
            check = checks[id(champion)] = RowCheck(columns, required=champion.columns)
        check(features)


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
        clock: Callable[[], float] = time.monotonic,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        load_attempts: int = 3,
    ) -> None:
        self.model_name = model_name
        self.clock = clock
        # A version that failed to load is tried again at the next refresh after a delay that
        # doubles per failure (retry_base_s, 2x, 4x, ... up to retry_max_s); each try makes
        # load_attempts quick attempts (tenacity) for a blip of the artifact store.
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.load_attempts = load_attempts
        self._retry: dict[str, tuple[float, int]] = {}  # version -> (due at, failures so far)
        self._errors: dict[str, str] = {}  # version -> why its last load failed
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

        with MLFLOW_LOCK:
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
                message = f"cannot read aliases of {self.model_name!r} ({type(exc).__name__})"
                if old.registry_error != message:
                    _log.warning("%s: %s", message, exc)
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
                roles.setdefault(arm_name(version), (version, SHADOW))
            if STAGING in aliases:  # the best trade-off shadows until made a challenger
                roles.setdefault(arm_name(aliases[STAGING]), (aliases[STAGING], SHADOW))
            if (
                not force
                and aliases == old.aliases
                and {a: (e.version, e.role) for a, e in old.arms.items()} == roles
                and all(self._expected_error(a, old.arms[a]) == old.arms[a].error for a in roles)
                and old.registry_error is None
                and not self._retry_due(old)
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

    def _retry_due(self, snap: PoolSnapshot) -> bool:
        """Whether an arm that failed to load is due for another try."""
        now = self.clock()
        return any(
            e.model is None and self._retry.get(e.version, (0.0, 0))[0] <= now
            for e in snap.arms.values()
        )

    def _try_load(self, version: str) -> tuple[ServingModel | None, str | None]:
        due, failures = self._retry.get(version, (0.0, 0))
        if failures and self.clock() < due:
            return None, self._load_error(version)
        retrying = Retrying(
            stop=stop_after_attempt(self.load_attempts),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )
        try:
            model = retrying(self._loader, self.model_name, version)
        except Exception as exc:
            self.load_failures += 1
            delay = min(self.retry_base_s * 2**failures, self.retry_max_s)
            self._retry[version] = (self.clock() + delay, failures + 1)
            self._errors[version] = (
                f"failed to load ({type(exc).__name__}); retrying in {delay:g} s"
            )
            _log.exception("model %s version %s failed to load", self.model_name, version)
            return None, self._load_error(version)
        self._retry.pop(version, None)
        self._errors.pop(version, None)
        return model, None

    def _load_error(self, version: str) -> str:
        return self._errors.get(version, "failed to load")

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
