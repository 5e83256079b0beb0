"""Where a feature view changed: each daily snapshot of it against the day before's.

Labels arrive after the sessions they describe (a day, in the demo's world), so a drift
check of labelled rows sees a change a day after it began, and a retrain placed by labels
waits one more day for enough of them. Measured in the closed loop (seed 0, quick world):
the day after the onset cost 0.15 of the run's reference reward while the retrain waited
for the onset day's labels, although the outcomes of the 3,000 offers served that day
were known at its end. The view's own rows come first: the application pushes a snapshot
of every entity each day. Consecutive snapshots sample one population (every customer),
unlike labelled rows (sessions, weighted by engagement) or served outcomes (the visits a
model chose to make an offer to), so they are compared with each other directly: a step
change of the world is the one day whose snapshot moved away from the day before's. The
change is placed there (``tasks/retrain_window.py``), and a retrain that has no label of
it yet learns from the served outcomes since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings

# Fewer entities are no snapshot (a push of a few rows). The PSI of two samples of one
# distribution is about (bins - 1)(1/n + 1/m) by chance: 0.036 at 10 bins and 500 rows
# each, a fifth of the default threshold 0.2.
MIN_SNAPSHOT_ROWS = 500


def drifted_features(
    reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str], drift: Any
) -> list[str]:
    """Return the features whose PSI from ``reference`` to ``current`` reaches the spec's
    threshold (``drift.psi_numeric`` / ``drift.psi_categorical``); a feature that cannot be
    compared (no values on one side) is skipped."""
    from tasks.drift import DriftError, psi_categorical, psi_numeric

    moved = []
    for feature in features:
        ref, cur = reference[feature], current[feature]
        try:
            if pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref):
                psi = psi_numeric(
                    ref.to_numpy(np.float64), cur.to_numpy(np.float64), drift.psi_bins
                )
                threshold = drift.psi_numeric
            else:
                psi, threshold = psi_categorical(ref, cur), drift.psi_categorical
        except DriftError:
            continue
        if psi >= threshold:
            moved.append(feature)
    return moved


@dataclass(frozen=True)
class ViewChange:
    """The newest day a view's snapshot moved from the day before's (None: none did)."""

    start: datetime | None
    features: list[str] = field(default_factory=list)
    detail: str = ""


def snapshot_change(
    rows: pd.DataFrame, features: Sequence[str], drift: Any, *, timestamp: str, view: str = ""
) -> ViewChange:
    """Return the newest snapshot day of ``rows`` that drifted from the snapshot before it.

    ``rows`` are a view's rows over a few days; a snapshot is one day's rows (by
    ``timestamp``, floored to the day). Days with fewer than ``MIN_SNAPSHOT_ROWS`` rows
    (a push of a few entities) are no snapshot and are skipped.
    """
    names = [f for f in features if f in rows.columns]
    if not names or rows.empty:
        return ViewChange(None, detail=f"{view or 'the view'}: no feature to compare")
    days = pd.to_datetime(rows[timestamp], utc=True).dt.floor("D")
    counts = days.value_counts()
    snapshots = sorted(d for d, n in counts.items() if n >= MIN_SNAPSHOT_ROWS)
    for before, day in reversed(list(zip(snapshots, snapshots[1:], strict=False))):
        moved = drifted_features(
            rows[(days == before).to_numpy()], rows[(days == day).to_numpy()], names, drift
        )
        if moved:
            start = pd.Timestamp(day).to_pydatetime()
            detail = f"{view}: {', '.join(moved)} moved on {start:%Y-%m-%d} from the day before"
            return ViewChange(start, moved, detail.lstrip(": "))
    return ViewChange(None, detail=f"{view or 'the view'}: no snapshot moved from the one before")


def view_change(
    settings: PipelineSettings,
    drift: Any,
    end: datetime,
    days: float,
    *,
    exclude: Sequence[str] = (),
) -> ViewChange:
    """Return the newest change of any feature view over the ``days`` up to ``end``.

    Compares each view's features but ``exclude`` (the columns no serving arm uses),
    read from its parquet source (the rows the application pushed, as ``tasks/ingest.py``
    writes them) from the day before the period on; a view whose source is no parquet
    file is skipped.
    """
    import pyarrow.dataset as ds
    from feast import FileSource

    from tasks.features import get_store
    from tasks.ingest import pa_scalar

    lo = end - timedelta(days=days + 1)
    found = ViewChange(None, detail="no feature view holds a feature to compare")
    for fv in get_store(settings).list_feature_views():
        source = fv.batch_source
        names = [f.name for f in fv.features if f.name not in set(exclude)]
        if not isinstance(source, FileSource) or not source.path or not names:
            continue
        ts = source.timestamp_field or "event_timestamp"
        when = (ds.field(ts) >= pa_scalar(lo)) & (ds.field(ts) <= pa_scalar(end))
        table = ds.dataset(source.path, format="parquet")
        rows = table.to_table(columns=[ts, *names], filter=when).to_pandas()
        change = snapshot_change(rows, names, drift, timestamp=ts, view=fv.name)
        if found.start is None or (change.start is not None and change.start > found.start):
            found = change
    return found
