"""Feature tasks: apply the Feast repository, build training sets, look up online values.

Each function is plain (testable without Prefect) and has a Prefect task beside it
(``build_training_set_task`` ...); ingestion (materialize, push, its event) is in
``tasks/ingest.py``. Feast is imported inside the functions: it takes about
10 s to import, and flows that never touch features should not pay for it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)

PROJECT = "banditflow"
DEFAULT_FEATURE_SERVICE = "conversion_model_v1"
ENTITY_KEY = "customer_id"
TIMESTAMP = "event_timestamp"
ACTIVITY_VIEW = "customer_activity"
ACTIVITY_PUSH_SOURCE = "activity_push"
REQUIRED_DATA = ("customers.parquet", "activity.parquet")
# Measured in benchmarks/features.py (see feature_store.yaml): DuckDB joined 60k and 200k
# label rows about 25x faster than the file (Dask) store, which also drops rows.
OfflineStoreType = Literal["duckdb", "file"]
DEFAULT_OFFLINE_STORE: OfflineStoreType = "duckdb"


# --- errors ----------------------------------------------------------------------------
class FeatureError(Exception):
    """Something about features is wrong; the message says what to do."""


class DataNotGeneratedError(FeatureError, FileNotFoundError):
    """The data folder has no generated parquet files."""


class RepositoryNotAppliedError(FeatureError):
    """The Feast registry is empty: the repository was never applied."""


class UnknownFeatureServiceError(FeatureError, LookupError):
    """A feature service name the registry does not know."""


class LabelsError(FeatureError, ValueError):
    """Label or entity rows lack what a join needs."""


class NotMaterializedError(FeatureError, LookupError):
    """Entities have no feature values in the online store."""


class FeatureStoreError(FeatureError):
    """Feast itself failed; the message keeps Feast's reason."""


# --- the store -------------------------------------------------------------------------
_STORES: dict[tuple[str, ...], FeatureStore] = {}
_STORES_LOCK = threading.Lock()
_ENV_LOCK = threading.Lock()


def repo_config(
    settings: PipelineSettings, offline_store: OfflineStoreType = DEFAULT_OFFLINE_STORE
):
    """Build the RepoConfig of feature_repo/feature_store.yaml with absolute paths."""
    from feast import RepoConfig
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig

    offline = DuckDBOfflineStoreConfig() if offline_store == "duckdb" else DaskOfflineStoreConfig()
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=RegistryConfig(registry_type="file", path=str(settings.feast_dir / "registry.db")),
        online_store=_online_store(settings, SqliteOnlineStoreConfig),
        offline_store=offline,
        repo_path=settings.feature_repo,
        entity_key_serialization_version=3,
    )


def _online_store(settings: PipelineSettings, sqlite_config: Any) -> Any:
    """Return the online store: ``feature_store_yaml``'s section when set, else SQLite."""
    if settings.feature_store_yaml is None:
        return sqlite_config(path=str(settings.feast_dir / "online_store.db"))
    import yaml

    section = yaml.safe_load(Path(settings.feature_store_yaml).read_text()).get("online_store")
    if not isinstance(section, dict) or "type" not in section:
        raise FeatureError(
            f"{settings.feature_store_yaml} has no online_store section with a type: add one "
            "(e.g. type: redis, connection_string: 127.0.0.1:6379) or unset "
            "BANDITFLOW_FEATURE_STORE_YAML"
        )
    return section


def get_store(
    settings: PipelineSettings | None = None,
    *,
    offline_store: OfflineStoreType = DEFAULT_OFFLINE_STORE,
) -> FeatureStore:
    """Return the Feast store of these settings (one per data folder, reused)."""
    settings = settings or get_settings()
    key: tuple[str, ...] = (str(settings.home), str(settings.feature_repo), offline_store)
    key += (str(settings.feature_store_yaml),)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            from feast import FeatureStore

            settings.feast_dir.mkdir(parents=True, exist_ok=True)
            store = FeatureStore(config=repo_config(settings, offline_store))
            _STORES[key] = store
        return store


def require_data(settings: PipelineSettings) -> None:
    missing = [name for name in REQUIRED_DATA if not (settings.data_dir / name).exists()]
    if missing:
        raise DataNotGeneratedError(
            f"{', '.join(missing)} not found in {settings.data_dir}: "
            "run `banditflow generate` first (or point BANDITFLOW_HOME at a generated folder)"
        )


@contextmanager
def _home_env(home: Path) -> Iterator[None]:
    """Point ``BANDITFLOW_HOME`` at ``home`` while the definitions are imported."""
    with _ENV_LOCK:
        before = os.environ.get("BANDITFLOW_HOME")
        os.environ["BANDITFLOW_HOME"] = str(home)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("BANDITFLOW_HOME", None)
            else:
                os.environ["BANDITFLOW_HOME"] = before


def load_definitions(settings: PipelineSettings) -> list[Any]:
    """Import the repository's definition modules for ``settings.home``; return their objects."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource, PushSource
    from feast.repo_operations import get_repo_files

    repo = settings.feature_repo.resolve()
    if not (repo / "feature_store.yaml").exists():
        raise FeatureError(f"{repo} is not a Feast repository (no feature_store.yaml)")
    objects: list[Any] = []

    def add(obj: Any) -> None:
        if not any(obj is seen for seen in objects):
            objects.append(obj)

    for n, path in enumerate(get_repo_files(repo)):
        # A fresh module each time: the paths inside depend on BANDITFLOW_HOME at import.
        spec = importlib.util.spec_from_file_location(f"_banditflow_repo_{n}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise FeatureError(f"cannot import feature definitions from {path}")
        module = importlib.util.module_from_spec(spec)
        with _home_env(settings.home):
            spec.loader.exec_module(module)
        for value in vars(module).values():
            if isinstance(value, Entity | FeatureView | FeatureService | DataSource):
                add(value)
            if isinstance(value, PushSource) and value.batch_source is not None:
                add(value.batch_source)
    return objects


def apply_repository(settings: PipelineSettings | None = None) -> list[str]:
    """Register the repository's objects in the registry and create the online tables."""
    settings = (settings or get_settings()).ensure_dirs()
    require_data(settings)
    objects = load_definitions(settings)
    store = get_store(settings)
    try:
        store.apply(objects)
    except Exception as exc:
        raise FeatureStoreError(f"feast apply failed for {settings.feature_repo}: {exc}") from exc
    return [f"{type(obj).__name__}:{obj.name}" for obj in objects]


def _service(store: FeatureStore, name: str) -> FeatureService:
    known = sorted(fs.name for fs in store.list_feature_services())
    if not known:
        raise RepositoryNotAppliedError(
            f"the Feast registry at {store.config.registry.path} has no feature services: "
            "run `banditflow features apply` first"
        )
    if name not in known:
        raise UnknownFeatureServiceError(
            f"unknown feature service {name!r}; known: {', '.join(known)}"
        )
    return store.get_feature_service(name)


def feature_names(service: FeatureService) -> list[str]:
    """Return the feature names a service serves, in the service's order."""
    return [f.name for proj in service.feature_view_projections for f in proj.features]


def as_utc(values: Any) -> pd.Series:
    stamps = pd.to_datetime(values)
    if getattr(stamps.dt, "tz", None) is None:
        return stamps.dt.tz_localize(UTC)
    return stamps.dt.tz_convert(UTC)


# --- offline: training sets ------------------------------------------------------------
def load_labels(settings: PipelineSettings | None = None) -> pd.DataFrame:
    """Read the generated label rows (``sessions.parquet``)."""
    settings = settings or get_settings()
    path = settings.data_dir / "sessions.parquet"
    if not path.exists():
        raise DataNotGeneratedError(f"{path} not found: run `banditflow generate` first")
    return pd.read_parquet(path)


def _check_labels(labels: pd.DataFrame, target: str) -> None:
    missing = [c for c in (ENTITY_KEY, TIMESTAMP, target) if c not in labels.columns]
    if missing:
        raise LabelsError(
            f"label rows need the columns {ENTITY_KEY!r}, {TIMESTAMP!r} and the target "
            f"{target!r}; missing: {missing} (got {list(labels.columns)})"
        )
    if labels.empty:
        raise LabelsError("no label rows: pass at least one row")
    if labels[ENTITY_KEY].isna().any() or labels[TIMESTAMP].isna().any():
        raise LabelsError(f"label rows have empty {ENTITY_KEY!r} or {TIMESTAMP!r} values")


def build_training_set(
    labels: pd.DataFrame,
    feature_service: str = DEFAULT_FEATURE_SERVICE,
    *,
    target: str = "converted",
    settings: PipelineSettings | None = None,
    offline_store: OfflineStoreType = DEFAULT_OFFLINE_STORE,
) -> pd.DataFrame:
    """Join each label row with the feature values as of its timestamp (point in time).

    Returns ``customer_id, event_timestamp, <target>, <features...>`` in the labels' order;
    other label columns (``session_id``, ``p_true``, ...) are dropped.
    """
    settings = settings or get_settings()
    _check_labels(labels, target)
    require_data(settings)
    store = get_store(settings, offline_store=offline_store)
    service = _service(store, feature_service)

    entity = pd.DataFrame(
        {
            ENTITY_KEY: labels[ENTITY_KEY].to_numpy(np.int64),
            # Feast's stores keep microseconds and refuse to cut a finer timestamp (a
            # served visit's clock reads nanoseconds): floor it, as they would store it.
            TIMESTAMP: as_utc(labels[TIMESTAMP])
            .astype("datetime64[ns, UTC]")
            .dt.floor("us")
            .reset_index(drop=True),
            target: labels[target].to_numpy(),
        }
    )
    # The features depend on (entity, time) only: join each pair once, then spread the
    # result back by pair number (a take, cheaper than a merge on 1M rows). The file
    # (Dask) store also drops label rows that repeat a pair.
    pair = entity.groupby([ENTITY_KEY, TIMESTAMP], sort=False).ngroup().to_numpy()
    first = ~pd.Series(pair).duplicated().to_numpy()
    keys = entity.loc[first, [ENTITY_KEY, TIMESTAMP]].assign(_pair=pair[first])
    names = feature_names(service)
    try:
        job = store.get_historical_features(
            entity_df=keys, features=service, full_feature_names=False
        )
        joined = job.to_df()
    except FeatureError:
        raise
    except Exception as exc:
        raise FeatureStoreError(
            f"Feast could not build the training set for {feature_service!r}: {exc}"
        ) from exc
    joined = joined.sort_values("_pair", kind="stable")
    if not np.array_equal(joined["_pair"].to_numpy(), np.arange(len(keys))):
        raise FeatureStoreError(
            f"Feast returned {len(joined)} rows for {len(keys)} (entity, time) pairs: the "
            f"{offline_store!r} offline store dropped label rows (the file store drops rows "
            "lacking a view's values); use the 'duckdb' offline store"
        )
    features = joined[names].iloc[pair].reset_index(drop=True)
    return pd.concat([entity[[ENTITY_KEY, TIMESTAMP, target]], features], axis=1)


# --- online: look up -----------------------------------------------------------------
def get_online_features(
    entity_rows: Sequence[dict[str, Any]],
    feature_service: str = DEFAULT_FEATURE_SERVICE,
    *,
    settings: PipelineSettings | None = None,
) -> pd.DataFrame:
    """Return the online feature values of entities, one row per entity row."""
    if not entity_rows:
        raise LabelsError(f"no entity rows: pass [{{{ENTITY_KEY!r}: ...}}, ...]")
    bad = [row for row in entity_rows if row.get(ENTITY_KEY) is None]
    if bad:
        raise LabelsError(f"entity rows need a {ENTITY_KEY!r} key; these lack it: {bad[:3]}")
    settings = settings or get_settings()
    store = get_store(settings)
    service = _service(store, feature_service)
    keys = [{ENTITY_KEY: int(row[ENTITY_KEY])} for row in entity_rows]
    try:
        frame = store.get_online_features(features=service, entity_rows=keys).to_df()
    except Exception as exc:
        raise FeatureStoreError(f"online lookup for {feature_service!r} failed: {exc}") from exc
    names = feature_names(service)
    empty = frame[names].isna().all(axis=1)
    if empty.any():
        ids = frame.loc[empty, ENTITY_KEY].tolist()
        raise NotMaterializedError(
            f"no online features for {ENTITY_KEY} {ids[:10]}"
            f"{' ...' if len(ids) > 10 else ''}: run `banditflow features materialize` "
            "(or push their activity) first, or check the ids exist"
        )
    return frame[[ENTITY_KEY, *names]]


# --- Prefect tasks ---------------------------------------------------------------------
# No input caching: hashing a million-row label frame costs more than the join.
apply_repository_task = task(name="apply-feature-repository", cache_policy=NO_CACHE)(
    apply_repository
)
build_training_set_task = task(name="build-training-set", cache_policy=NO_CACHE)(build_training_set)
get_online_features_task = task(name="get-online-features", cache_policy=NO_CACHE)(
    get_online_features
)
