"""Feature ingestion: materialize new offline rows, push fresh ones, and say so in an event.

Every update that brings rows emits ``banditflow.features.updated`` (resource: the feature
view), the event prefect.yaml's drift-check trigger listens to; an update that sends none
says why (``event_skip_reason``). The store, errors and look-ups are in ``tasks/features.py``.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from contract import EVENT_FEATURES_UPDATED, feature_view_resource_id
from tasks.features import (
    ACTIVITY_PUSH_SOURCE,
    ACTIVITY_VIEW,
    ENTITY_KEY,
    TIMESTAMP,
    FeatureError,
    FeatureStoreError,
    LabelsError,
    RepositoryNotAppliedError,
    as_utc,
    get_store,
    require_data,
)
from tasks.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    from prefect.events import Event

log = logging.getLogger(__name__)


def _source_window(path: str, start: datetime | None, end: datetime) -> tuple[datetime, int, int]:
    """Return the earliest timestamp (if start is None), source rows and entities in a window."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[ENTITY_KEY, TIMESTAMP])
    stamps = table.column(TIMESTAMP)
    if start is None:
        earliest = pc.min(stamps).as_py()
        start = earliest if earliest is not None else end
    assert start is not None
    mask = pc.and_(
        pc.greater_equal(stamps, pa_scalar(start)), pc.less_equal(stamps, pa_scalar(end))
    )
    window = table.filter(mask)
    entities = len(pc.unique(window.column(ENTITY_KEY)))
    return start, window.num_rows, entities


def pa_scalar(moment: datetime) -> Any:
    """Return a UTC nanosecond timestamp scalar for pyarrow comparisons."""
    import pyarrow as pa

    return pa.scalar(pd.Timestamp(moment).tz_convert(UTC).value, pa.timestamp("ns", tz="UTC"))


def materialize_incremental(
    end: datetime | None = None, *, settings: PipelineSettings | None = None
) -> list[dict[str, Any]]:
    """Load each view's offline rows since its last materialization into the online store.

    A view never materialized starts at its source's earliest row (Feast's own
    incremental default, now - TTL, would miss history older than the TTL). Emits
    ``banditflow.features.updated`` per view that received rows.
    """
    from feast import FileSource

    settings = settings or get_settings()
    require_data(settings)
    store = get_store(settings)
    store.refresh_registry()
    views = store.list_feature_views()
    if not views:
        raise RepositoryNotAppliedError(
            "the Feast registry has no feature views: run `banditflow features apply` first"
        )
    end = _utc(end or datetime.now(UTC))
    updates = []
    for view in views:
        source = view.batch_source
        if not isinstance(source, FileSource):
            raise FeatureError(f"view {view.name!r} does not read a parquet FileSource")
        last = view.most_recent_end_time
        start, source_rows, entities = _source_window(
            source.path, _utc(last) if last else None, end
        )
        if start >= end:
            continue
        try:
            store.materialize(start_date=start, end_date=end, feature_views=[view.name])
        except Exception as exc:
            raise FeatureStoreError(f"materializing {view.name!r} failed: {exc}") from exc
        update = _update(view.name, start, end, entities)
        update["source_rows"] = source_rows
        updates.append(update)
    return updates


def _update(view: str, start: Any, end: Any, rows: int) -> dict[str, Any]:
    """Describe one view's update and emit its event: ``event_id`` set, or ``no_event`` why."""
    update: dict[str, Any] = {
        "feature_view": view,
        "start": pd.Timestamp(start).isoformat(),
        "end": pd.Timestamp(end).isoformat(),
        "rows": int(rows),
        "event": None,
        "event_id": None,
        "no_event": event_skip_reason(rows),
    }
    if update["no_event"] is None:
        event = emit_features_updated(view, start, end, rows)
        if event is None:
            update["no_event"] = f"sending it failed (see the log of {__name__})"
        else:
            update["event"], update["event_id"] = EVENT_FEATURES_UPDATED, str(event.id)
    return update


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def push_activity(
    rows: pd.DataFrame,
    *,
    settings: PipelineSettings | None = None,
    to: Literal["online", "online_and_offline"] = "online",
) -> int:
    """Push fresh activity rows (see :func:`push_activity_update`); return the rows pushed."""
    return int(push_activity_update(rows, settings=settings, to=to)["rows"])


def push_activity_update(
    rows: pd.DataFrame,
    *,
    settings: PipelineSettings | None = None,
    to: Literal["online", "online_and_offline"] = "online",
) -> dict[str, Any]:
    """Push fresh activity rows through ``activity_push`` (online store; optionally the file).

    ``online_and_offline`` also appends the rows to the view's parquet source, with its
    column types, by rewriting the file (so online by default). Feast's own offline push
    (``PushMode.ONLINE_AND_OFFLINE``) is not used: with the DuckDB offline store in Feast
    0.67 it rewrote every timestamp in the file as a string, breaking later joins.
    Emits ``banditflow.features.updated`` for ``customer_activity``; returns the update
    (view, time range, rows, and the event sent or why none was).
    """
    from feast.data_source import PushMode

    settings = settings or get_settings()
    store = get_store(settings)
    view = next((v for v in store.list_feature_views() if v.name == ACTIVITY_VIEW), None)
    if view is None:
        raise RepositoryNotAppliedError(
            f"feature view {ACTIVITY_VIEW!r} is not registered: run `banditflow features apply`"
        )
    needed = [ENTITY_KEY, TIMESTAMP, *(f.name for f in view.features)]
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise LabelsError(f"activity rows to push lack the columns {missing}")
    if rows.empty:
        raise LabelsError("no activity rows to push")
    frame = rows.reset_index(drop=True)  # a filtered frame's index is not a column to push
    frame[TIMESTAMP] = as_utc(frame[TIMESTAMP])
    if "created_timestamp" not in frame.columns:
        frame["created_timestamp"] = pd.Timestamp.now(tz=UTC)
    try:
        store.push(ACTIVITY_PUSH_SOURCE, frame, to=PushMode.ONLINE)
    except Exception as exc:
        raise FeatureStoreError(f"pushing to {ACTIVITY_PUSH_SOURCE!r} failed: {exc}") from exc
    if to == "online_and_offline":
        from feast import FileSource

        source = view.batch_source
        if not isinstance(source, FileSource):
            raise FeatureError(f"view {ACTIVITY_VIEW!r} does not read a parquet FileSource")
        _append_to_source(source.path, frame)
    return _update(ACTIVITY_VIEW, frame[TIMESTAMP].min(), frame[TIMESTAMP].max(), len(frame))


def _append_to_source(path: str, rows: pd.DataFrame) -> None:
    """Append rows to a parquet source, cast to the file's own column types, atomically."""
    existing = pd.read_parquet(path)
    missing = [c for c in existing.columns if c not in rows.columns]
    if missing:
        raise LabelsError(f"rows to append to {path} lack its columns {missing}")
    appended = rows[list(existing.columns)].astype(existing.dtypes.to_dict())
    combined = pd.concat([existing, appended], ignore_index=True)
    tmp = f"{path}.tmp"
    combined.to_parquet(tmp, index=False)
    os.replace(tmp, path)


# --- events ----------------------------------------------------------------------------
def event_skip_reason(rows: int) -> str | None:
    """Return why an update of ``rows`` rows sends no event, or None when it sends one."""
    from prefect.settings import PREFECT_API_URL

    if rows <= 0:
        return "no new rows"
    if not PREFECT_API_URL.value():
        return (
            "no Prefect API: start the stack (`make up`) for this data folder, "
            "or set PREFECT_API_URL"
        )
    return None


def emit_features_updated(view: str, start: Any, end: Any, rows: int) -> Event | None:
    """Emit ``banditflow.features.updated`` for a view; a no-op without a Prefect API.

    Without ``PREFECT_API_URL`` Prefect's events worker would start a throwaway
    ephemeral server (~13 s) that no trigger listens to, so nothing is sent then.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.info("no PREFECT_API_URL: %s for %s not sent", EVENT_FEATURES_UPDATED, view)
        return None
    from prefect.events import emit_event

    try:
        return emit_event(
            event=EVENT_FEATURES_UPDATED,
            resource={"prefect.resource.id": feature_view_resource_id(view)},
            payload={
                "feature_view": view,
                "start": pd.Timestamp(start).isoformat(),
                "end": pd.Timestamp(end).isoformat(),
                "rows": int(rows),
            },
        )
    except Exception as exc:  # an event must never fail the update it reports
        log.warning("could not emit %s for %s: %s", EVENT_FEATURES_UPDATED, view, exc)
        return None


def flush_events(timeout: float = 10.0) -> None:
    """Send queued events before a short-lived process (the CLI) exits."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)


# --- Prefect tasks ---------------------------------------------------------------------
# materialize/push are side effects that must run every time: no caching.
materialize_incremental_task = task(name="materialize-features", cache_policy=NO_CACHE)(
    materialize_incremental
)
push_activity_task = task(name="push-activity", cache_policy=NO_CACHE)(push_activity)
