"""Study data: the training rows the optimizer sees and the hold-out test rows it never does.

``load_study_data`` reads labelled rows (a Feast feature service joined point-in-time, or a
CSV/parquet file), cleans the feature columns (categoricals become strings, missing ones
``"missing"``, so the pipelines convert to ONNX), and splits off the test part: the latest
``evaluation.test_fraction`` of rows when the data is time-stamped, a seeded stratified
split otherwise. The gates use the test part; the optimizer only ever gets the training part.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.models import FeatureType, infer_feature_types

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings
    from tasks.spec import StudySpec

MISSING_CATEGORY = "missing"
# Columns that identify a row, never features (the generator's ground truth included).
ID_COLUMNS = ("customer_id", "session_id", "p_true")


class DataError(ValueError):
    """The study's data cannot be loaded as asked; the message says what to change."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file is missing (for the demo data: run ``banditflow generate``)."""


@dataclass
class StudyData:
    """Training and hold-out test rows, with the feature columns' types and timestamps."""

    X_train: pd.DataFrame
    y_train: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    feature_types: dict[str, FeatureType]
    task: str
    target: str
    timestamps_train: pd.Series | None = None
    timestamps_test: pd.Series | None = None
    # The test rows before any column was dropped: target, timestamp and attributes that
    # are not features (the fairness gate's sensitive attribute) stay available.
    test_frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = ""
    # Prior rows (``data.history_days`` before the window): fitted with a trial's
    # ``history_weight``, never scored (tasks/models.py: fit_model).
    X_history: pd.DataFrame | None = None
    y_history: pd.Series | None = None
    # Of the training rows, how many are served outcomes (``data.outcomes``), not labels.
    outcome_rows: int = 0

    @property
    def history_rows(self) -> int:
        return 0 if self.X_history is None else len(self.X_history)

    @property
    def history(self) -> tuple[pd.DataFrame, pd.Series] | None:
        """The prior rows as ``(X, y)`` for ``tasks.models.fit_model``; None without any."""
        if self.X_history is None or self.y_history is None:
            return None
        return self.X_history, self.y_history

    @property
    def feature_columns(self) -> list[str]:
        return list(self.feature_types)

    @property
    def time_ordered(self) -> bool:
        """Whether the rows are sorted by time (the training part, oldest first)."""
        return self.timestamps_train is not None

    def summary(self) -> dict[str, Any]:
        """Return a small description to log next to a study."""
        return {
            "source": self.source,
            "rows_train": len(self.X_train),
            "rows_test": len(self.X_test),
            "features": len(self.feature_types),
            "time_ordered": self.time_ordered,
            **({"rows_history": self.history_rows} if self.X_history is not None else {}),
            **({"rows_outcomes": self.outcome_rows} if self.outcome_rows else {}),
        }


def load_study_data(spec: StudySpec, settings: PipelineSettings | None = None) -> StudyData:
    """Load the spec's labelled rows and split off the hold-out test part."""
    from tasks.settings import get_settings

    settings = settings or get_settings()
    data = spec.data
    outcomes = Path(data.outcomes or "")  # data.served_only: its rows are the label rows
    served = _read_table(outcomes, what="data.outcomes") if data.served_only else None
    if data.source == "feast":
        frame, source = _load_feast(spec, settings, labels=served, source=str(data.outcomes))
    elif served is not None:
        frame, source = served, str(data.outcomes)
    else:
        frame, source = _read_table(Path(data.path or ""), what="data.path"), str(data.path)
    loaded = split_study_data(frame, spec, source=source)
    if served is not None:
        loaded = replace(loaded, outcome_rows=len(loaded.y_train))
    if data.history_days is not None:
        loaded = with_history(loaded, spec, settings)
    if data.outcomes and served is None:
        loaded = with_outcomes(loaded, spec, settings)
    return loaded


def with_history(loaded: StudyData, spec: StudySpec, settings: PipelineSettings) -> StudyData:
    """Add the labels of the ``history_days`` before ``data.start`` as prior rows.

    Loaded exactly as the window is (the same source, point-in-time join and cleaning), all
    of them: they are fitted, never scored. A period with too few labels gives no prior
    rows, and the study learns from its window alone.
    """
    import dataclasses
    from datetime import timedelta

    data = spec.data
    assert data.start is not None and data.history_days is not None  # the spec checks it
    prior = spec.model_copy(
        update={
            "data": data.model_copy(
                update={
                    "start": data.start - timedelta(days=data.history_days),
                    "end": data.start,
                    "history_days": None,
                    "outcomes": None,  # the prior is the old world's labels
                    "served_only": False,
                }
            )
        }
    )
    try:
        rows = load_study_data(prior, settings)
    except DataError:
        empty = {"X_history": loaded.X_train.iloc[:0], "y_history": loaded.y_train.iloc[:0]}
        return dataclasses.replace(loaded, **empty)
    return attach_history(loaded, rows)


def attach_history(loaded: StudyData, rows: StudyData) -> StudyData:
    """Return ``loaded`` with every row of ``rows`` (training and hold-out) as prior rows."""
    import dataclasses

    columns = loaded.feature_columns
    X = pd.concat([rows.X_train, rows.X_test], ignore_index=True)
    y = pd.concat([rows.y_train, rows.y_test], ignore_index=True)
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise DataError(f"the history rows lack the window's feature columns {missing}")
    return dataclasses.replace(loaded, X_history=clean_features(X[columns]), y_history=y)


def with_outcomes(loaded: StudyData, spec: StudySpec, settings: PipelineSettings) -> StudyData:
    """Add the window's served outcomes (``data.outcomes``) to the training rows.

    An application knows within hours whether an offer it made converted, while labelled
    sessions arrive a day later and are a tenth as many (the demo's world). Those outcomes
    are joined exactly as labels are and fitted, and cross-validation scores them too (they
    are the visits the decision acts on); the hold-out stays the labels' own latest rows,
    since outcomes exist only where a model chose to offer. The drift checks load their
    windows from the champion's spec, which has no outcomes. No outcome in the window
    leaves ``loaded`` as it was.
    """
    import dataclasses

    data = spec.data
    assert data.outcomes is not None  # load_study_data calls it only then
    rows = _read_table(Path(data.outcomes), what="data.outcomes")
    ts_col = data.timestamp_column if data.timestamp_column in rows.columns else None
    if ts_col is not None:
        rows[ts_col] = pd.to_datetime(rows[ts_col], utc=True)
        rows = _window(rows, ts_col, spec)
    if rows.empty:
        return loaded
    if data.source == "feast":
        only = spec.model_copy(update={"data": data.model_copy(update={"max_rows": None})})
        rows, _ = _load_feast(only, settings, labels=rows, source=str(data.outcomes))
    rows = rows[rows[data.target].notna()].reset_index(drop=True)
    missing = [c for c in [*loaded.feature_columns, data.target] if c not in rows.columns]
    if missing:
        raise DataError(f"data.outcomes ({data.outcomes}) lacks the columns {missing}")
    y = _check_outcomes(rows[data.target], loaded.y_train, spec.task, str(data.outcomes))
    X = pd.concat([loaded.X_train, clean_features(rows[loaded.feature_columns])], ignore_index=True)
    y = pd.concat([loaded.y_train, y], ignore_index=True)
    stamps = loaded.timestamps_train
    if stamps is not None and ts_col is not None:
        stamps = pd.concat([stamps, rows[ts_col]], ignore_index=True)
        order = np.argsort(stamps.to_numpy(), kind="stable")  # oldest first, as the window
        X, y, stamps = (part.iloc[order].reset_index(drop=True) for part in (X, y, stamps))
    return dataclasses.replace(
        loaded, X_train=X, y_train=y, timestamps_train=stamps, outcome_rows=len(rows)
    )


def labels_only(spec: StudySpec) -> StudySpec:
    """Return ``spec`` without its served outcomes: the population its labels sample.

    What a drift check compares (a version's reference sample, a recent window) must be
    sampled alike; outcomes are only the rows some model chose to offer.
    """
    if spec.data.outcomes is None:
        return spec
    update = {"outcomes": None, "served_only": False}
    return spec.model_copy(update={"data": spec.data.model_copy(update=update)})


def _check_outcomes(y: pd.Series, labels: pd.Series, task: str, source: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(labels.dtype):
        y = pd.to_numeric(y, errors="coerce")
        if y.isna().any():
            raise DataError(f"data.outcomes ({source}): the target has non-numeric values")
        y = y.astype(labels.dtype)
    unknown = set(y.unique()) - set(labels.unique())
    if unknown and task != "regression":  # the labels' classes, no new one
        raise DataError(
            f"data.outcomes ({source}): target values {sorted(map(str, unknown))} are not "
            f"among the labels' {sorted(map(str, labels.unique()))}"
        )
    return y.reset_index(drop=True)


def split_study_data(frame: pd.DataFrame, spec: StudySpec, *, source: str = "") -> StudyData:
    """Clean a labelled frame and split it into training and hold-out test parts."""
    data = spec.data
    if data.target not in frame.columns:
        raise DataError(
            f"target column {data.target!r} is not in the data ({source or 'frame'}); "
            f"its columns are {list(frame.columns)}: set data.target"
        )
    ts_col = data.timestamp_column if data.timestamp_column in frame.columns else None
    frame = frame[frame[data.target].notna()].reset_index(drop=True)
    if ts_col is not None:
        frame[ts_col] = pd.to_datetime(frame[ts_col], utc=True)
        frame = _window(frame, ts_col, spec)
    elif data.start or data.end:
        raise DataError("data.start/data.end need a timestamp column (data.timestamp_column)")
    if data.max_rows is not None and len(frame) > data.max_rows:
        if ts_col is not None:  # the most recent rows: what a retrain on a window wants
            frame = frame.iloc[len(frame) - data.max_rows :].reset_index(drop=True)
        else:
            frame = frame.sample(n=data.max_rows, random_state=spec.seed).sort_index()
            frame = frame.reset_index(drop=True)
    if len(frame) < 20:
        raise DataError(
            f"only {len(frame)} labelled rows after filtering ({source}); a study needs at "
            "least 20: widen data.start/data.end or raise data.max_rows"
        )

    y = _check_target(frame[data.target], spec.task, data.target)
    dropped = {data.target, *(data.drop_columns or []), *ID_COLUMNS}
    if ts_col is not None:
        dropped.add(ts_col)
    features = frame[[c for c in frame.columns if c not in dropped]]
    if features.shape[1] == 0:
        raise DataError(f"no feature columns left in {source} after dropping {sorted(dropped)}")
    X = clean_features(features)
    feature_types = infer_feature_types(X)

    n_test = max(1, int(round(len(frame) * spec.evaluation.test_fraction)))
    if ts_col is not None:
        train_idx = np.arange(len(frame) - n_test)
        test_idx = np.arange(len(frame) - n_test, len(frame))
    else:
        train_idx, test_idx = _stratified_split(y, n_test, spec)
    ts = frame[ts_col] if ts_col is not None else None
    return StudyData(
        X_train=X.iloc[train_idx].reset_index(drop=True),
        y_train=y.iloc[train_idx].reset_index(drop=True),
        X_test=X.iloc[test_idx].reset_index(drop=True),
        y_test=y.iloc[test_idx].reset_index(drop=True),
        feature_types=feature_types,
        task=spec.task,
        target=data.target,
        timestamps_train=None if ts is None else ts.iloc[train_idx].reset_index(drop=True),
        timestamps_test=None if ts is None else ts.iloc[test_idx].reset_index(drop=True),
        test_frame=frame.iloc[test_idx].reset_index(drop=True),
        source=source,
    )


def clean_features(X: pd.DataFrame) -> pd.DataFrame:
    """Make categoricals strings (missing: ``"missing"``) and booleans integers."""
    out = X.copy()
    for column, kind in infer_feature_types(out).items():
        col = out[column]
        if pd.api.types.is_bool_dtype(col.dtype):
            out[column] = col.astype(np.int64)
        elif kind == "categorical":
            out[column] = col.astype(object).where(col.notna(), MISSING_CATEGORY).astype(str)
        else:
            out[column] = col.astype(np.float64)
    return out


def _window(frame: pd.DataFrame, ts_col: str, spec: StudySpec) -> pd.DataFrame:
    start, end = spec.data.start, spec.data.end
    if start is not None:
        frame = frame[frame[ts_col] >= pd.Timestamp(start).tz_convert("UTC")]
    if end is not None:
        frame = frame[frame[ts_col] < pd.Timestamp(end).tz_convert("UTC")]
    # Stable: rows with equal timestamps keep their file order, so the split is deterministic.
    return frame.sort_values(ts_col, kind="stable").reset_index(drop=True)


def _check_target(y: pd.Series, task: str, name: str) -> pd.Series:
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y.dtype):
            raise DataError(f"task 'regression' needs a numeric target, {name!r} is {y.dtype}")
        return y.astype(np.float64)
    classes = y.nunique()
    if task == "binary" and classes != 2:
        raise DataError(
            f"task 'binary' needs exactly 2 classes in {name!r}, found {classes}: "
            "set task: multiclass or regression"
        )
    if task == "multiclass" and classes < 3:
        raise DataError(f"task 'multiclass' needs 3 or more classes in {name!r}, found {classes}")
    return y


def _stratified_split(y: pd.Series, n_test: int, spec: StudySpec) -> tuple[Any, Any]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    stratify = None
    if spec.task != "regression" and y.value_counts().min() >= 2:
        stratify = y.to_numpy()
    train_idx, test_idx = train_test_split(
        index, test_size=n_test, random_state=spec.seed, stratify=stratify
    )
    return np.sort(train_idx), np.sort(test_idx)


def _read_table(path: Path, *, what: str) -> pd.DataFrame:
    path = path.expanduser()
    if not path.exists():
        raise DataNotFoundError(f"{what}: file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    raise DataError(f"{what}: {str(path)!r} is neither .csv nor .parquet")


def _load_feast(
    spec: StudySpec,
    settings: PipelineSettings,
    *,
    labels: pd.DataFrame | None = None,
    source: str = "",
) -> tuple[pd.DataFrame, str]:
    """Join label rows (``labels``, else the spec's) point-in-time; return (frame, source)."""
    data = spec.data
    if labels is not None:
        labels, source = labels.copy(), source or "label rows"
    elif data.labels:
        labels = _read_table(Path(data.labels), what="data.labels")
        source = data.labels
    else:
        path = settings.data_dir / "sessions.parquet"
        if not path.exists():
            raise DataNotFoundError(
                f"no label rows at {path}: run `banditflow generate` first "
                "(or set data.labels to a parquet/CSV of label rows)"
            )
        labels = pd.read_parquet(path)
        source = f"feast:{data.feature_service}"
    ts_col = data.timestamp_column or "event_timestamp"
    needed = ["customer_id", ts_col, data.target]
    missing = [c for c in needed if c not in labels.columns]
    if missing:
        raise DataError(f"label rows ({source}) lack columns {missing}; they need {needed}")
    labels = labels[needed].copy()
    labels[ts_col] = pd.to_datetime(labels[ts_col], utc=True)
    labels = _window(labels, ts_col, spec)
    if data.max_rows is not None and len(labels) > data.max_rows:
        # Cut before the join: the join is what costs (a recent window for retrains).
        labels = labels.iloc[len(labels) - data.max_rows :].reset_index(drop=True)
    if labels.empty:
        raise DataError(f"no label rows between data.start={data.start} and data.end={data.end}")
    if ts_col != "event_timestamp":
        labels = labels.rename(columns={ts_col: "event_timestamp"})
    from tasks.features import build_training_set

    frame = build_training_set(labels, data.feature_service, target=data.target, settings=settings)
    if ts_col != "event_timestamp":
        frame = frame.rename(columns={"event_timestamp": ts_col})
    return frame, source
