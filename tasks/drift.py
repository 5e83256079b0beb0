"""Drift of the recent window against a serving model's training data: per feature and on labels.

The reference window is the data the champion was trained on, re-derived from its study
spec (``data.start``/``data.end``) the first time it is needed and then kept as a parquet
sample beside the champion (``<home>/drift/<model>/v<version>.parquet``), so every later
check compares against the same rows even when the offline store moves on.

Numeric features: population stability index (quantile bins of the reference) and a
two-sample Kolmogorov-Smirnov test. Categorical ones: PSI over the categories and a
chi-square test. A test only flags a feature when its p-value is small *and* its effect
size (KS statistic, Cramér's V) is large enough: at tens of thousands of rows p-values
alone flag everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from contract import EVENT_DRIFT_DETECTED, model_resource_id
from tasks.metrics import sign
from tasks.spec import DriftSpec

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings

# Empty bins would make PSI infinite: floor each share at this.
_PSI_EPSILON = 1e-4
# The champion's calibration on recent labels: a p-value and a relative gap, both needed.
CALIBRATION_ALPHA = 0.01
CALIBRATION_MIN_RELATIVE_GAP = 0.15


class DriftError(ValueError):
    """Drift cannot be computed from these inputs; the message says what is missing."""


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift statistics and verdict."""

    feature: str
    kind: Literal["numeric", "categorical"]
    psi: float
    test: Literal["ks", "chi2"]
    statistic: float  # KS D, or chi-square
    p_value: float
    effect_size: float  # KS D, or Cramér's V
    drifted: bool
    reason: str


@dataclass(frozen=True)
class MetricDrift:
    """The champion on recent labelled rows: its metric against its hold-out value, and
    (binary tasks) its calibration: the conversions it predicts against those observed."""

    metric: str
    direction: Literal["minimize", "maximize"]
    holdout: float
    recent: float
    margin: float
    degraded: bool
    predicted_rate: float | None = None  # mean predicted probability on the recent rows
    observed_rate: float | None = None  # share of positives among the recent rows
    calibration_p: float | None = None  # two-sided p of observed vs predicted positives
    reason: str = ""


@dataclass
class DriftReport:
    """Per-feature drift, the metric check (when labels exist), and the windows compared."""

    features: list[FeatureDrift]
    n_reference: int
    n_current: int
    metric: MetricDrift | None = None
    window: dict[str, str | None] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features) or bool(self.metric and self.metric.degraded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "window": self.window,
            "metric": asdict(self.metric) if self.metric else None,
            "features": [asdict(f) for f in self.features],
        }


# --- statistics ------------------------------------------------------------------------
def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Return the population stability index over the reference's quantile bins."""
    reference = reference[~np.isnan(reference)]
    current = current[~np.isnan(current)]
    if reference.size == 0 or current.size == 0:
        raise DriftError("PSI needs non-missing values in both windows")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # a constant reference: one bin for it, one for everything else
        ref_share = np.array([1.0, 0.0])
        same = np.isclose(current, edges[0])
        cur_share = np.array([same.mean(), 1.0 - same.mean()])
    else:
        # Open outer edges: recent values beyond the reference range land in the end bins.
        inner = edges[1:-1]
        ref_share = (
            np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(edges) - 1)
            / reference.size
        )
        cur_share = (
            np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(edges) - 1)
            / current.size
        )
    return _psi(ref_share, cur_share)


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    """Return the population stability index over the categories of both windows."""
    ref_share = reference.astype(str).value_counts(normalize=True)
    cur_share = current.astype(str).value_counts(normalize=True)
    cats = ref_share.index.union(cur_share.index)
    return _psi(
        ref_share.reindex(cats, fill_value=0).to_numpy(),
        cur_share.reindex(cats, fill_value=0).to_numpy(),
    )


def _psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    ref = np.clip(ref_share, _PSI_EPSILON, None)
    cur = np.clip(cur_share, _PSI_EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def chi_square(reference: pd.Series, current: pd.Series) -> tuple[float, float, float]:
    """Return (chi-square, p-value, Cramér's V) of the category counts in the two windows."""
    table = pd.crosstab(
        np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)],
        np.r_[reference.astype(str).to_numpy(), current.astype(str).to_numpy()],
    )
    if table.shape[1] < 2:
        return 0.0, 1.0, 0.0
    chi2, p_value, _, _ = stats.chi2_contingency(table.to_numpy())
    n = table.to_numpy().sum()
    cramers_v = math.sqrt(chi2 / (n * (min(table.shape) - 1)))
    return float(chi2), float(p_value), float(cramers_v)


def feature_drift(
    name: str, reference: pd.Series, current: pd.Series, spec: DriftSpec
) -> FeatureDrift:
    """Compute one feature's drift and decide with the spec's thresholds."""
    if _is_numeric(reference) and _is_numeric(current):
        ref = reference.to_numpy(dtype=float)
        cur = current.to_numpy(dtype=float)
        psi = psi_numeric(ref, cur, spec.psi_bins)
        ks = stats.ks_2samp(ref[~np.isnan(ref)], cur[~np.isnan(cur)])
        d, p = float(ks.statistic), float(ks.pvalue)
        reasons = []
        if psi >= spec.psi_numeric:
            reasons.append(f"PSI {psi:.3f} >= {spec.psi_numeric}")
        if p < spec.ks_alpha and d >= spec.ks_min_statistic:
            reasons.append(f"KS D {d:.3f} >= {spec.ks_min_statistic} (p={p:.2g})")
        return FeatureDrift(name, "numeric", psi, "ks", d, p, d, bool(reasons), "; ".join(reasons))
    psi = psi_categorical(reference, current)
    chi2, p, v = chi_square(reference, current)
    reasons = []
    if psi >= spec.psi_categorical:
        reasons.append(f"PSI {psi:.3f} >= {spec.psi_categorical}")
    if p < spec.chi2_alpha and v >= spec.chi2_min_cramers_v:
        reasons.append(f"Cramér's V {v:.3f} >= {spec.chi2_min_cramers_v} (p={p:.2g})")
    return FeatureDrift(
        name, "categorical", psi, "chi2", chi2, p, v, bool(reasons), "; ".join(reasons)
    )


def metric_drift(
    metric: str,
    direction: Literal["minimize", "maximize"],
    holdout: float,
    recent: float,
    margin: float,
) -> MetricDrift:
    """Compare the champion's recent metric with its hold-out value; worse by > margin degrades."""
    worse_by = -sign(direction) * (holdout - recent)
    degraded = bool(worse_by > margin)
    reason = (
        f"{metric} {recent:.4g} vs hold-out {holdout:.4g} (margin {margin})" if degraded else ""
    )
    return MetricDrift(metric, direction, holdout, recent, margin, degraded, reason=reason)


def calibration_gap(y: np.ndarray, proba: np.ndarray) -> tuple[float, float, float]:
    """Return (predicted rate, observed rate, two-sided p) of a binary model on labelled rows.

    Calibration in the large: under a calibrated model the number of positives has mean
    sum(p) and variance sum(p(1-p)) (a Poisson-binomial), so the z-score of the observed
    count is the test. A concept drift that moves the base rate shows here even when the
    ranking (ROC AUC) of the model still holds and no input feature moved.
    """
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    if y.size == 0 or y.size != p.size:
        raise DriftError(f"calibration needs as many labels as predictions, got {y.size}/{p.size}")
    expected, variance = float(p.sum()), float((p * (1.0 - p)).sum())
    z = (float(y.sum()) - expected) / math.sqrt(max(variance, 1e-12))
    return expected / y.size, float(y.mean()), float(2.0 * stats.norm.sf(abs(z)))


def recent_metric_check(
    metric: str,
    direction: Literal["minimize", "maximize"],
    holdout: float,
    recent: float,
    spec: DriftSpec,
    *,
    calibration: tuple[float, float, float] | None = None,
) -> MetricDrift:
    """Judge the champion on recent labels: the metric's margin, then its calibration.

    Degraded when the metric is worse than its hold-out value by more than
    ``drift.metric_margin``, or when the observed positive rate is off the predicted one
    with p < ``CALIBRATION_ALPHA`` and by at least ``CALIBRATION_MIN_RELATIVE_GAP`` of it
    (the effect-size guard: at large n, p-values alone flag everything).
    """
    base = metric_drift(metric, direction, holdout, recent, spec.metric_margin)
    if calibration is None:
        return base
    predicted, observed, p = calibration
    gap = abs(observed - predicted) / max(predicted, 1e-12)
    off = p < CALIBRATION_ALPHA and gap >= CALIBRATION_MIN_RELATIVE_GAP
    reasons = [base.reason] if base.degraded else []
    if off:
        reasons.append(f"observed rate {observed:.4g} vs predicted {predicted:.4g} (p={p:.2g})")
    return replace(
        base,
        degraded=base.degraded or off,
        predicted_rate=predicted,
        observed_rate=observed,
        calibration_p=p,
        reason="; ".join(reasons),
    )


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: DriftSpec,
    *,
    features: list[str] | None = None,
    metric: MetricDrift | None = None,
    window: dict[str, str | None] | None = None,
) -> DriftReport:
    """Compare every feature of ``current`` with ``reference`` and return the report.

    ``features`` defaults to ``spec.features``, else every column the two frames share.
    Raises ``DriftError`` when the recent window has fewer than ``spec.min_rows`` rows.
    """
    names = features or spec.features or [c for c in reference.columns if c in current.columns]
    missing = [n for n in names if n not in reference.columns or n not in current.columns]
    if missing:
        raise DriftError(f"features {missing} are not in both windows; check drift.features")
    if len(current) < spec.min_rows:
        raise DriftError(
            f"the recent window has {len(current)} rows, fewer than drift.min_rows="
            f"{spec.min_rows}: widen the window or lower drift.min_rows"
        )
    if len(reference) < spec.min_rows:
        raise DriftError(
            f"the reference window has {len(reference)} rows, fewer than drift.min_rows="
            f"{spec.min_rows}"
        )
    results = [feature_drift(n, reference[n], current[n], spec) for n in names]
    return DriftReport(results, len(reference), len(current), metric, dict(window or {}))


# --- reference kept with the champion --------------------------------------------------
def reference_path(settings: PipelineSettings, model: str, version: str | int) -> Path:
    """Return where the reference sample of a model version is kept."""
    return settings.home / "drift" / model / f"v{version}.parquet"


def keep_reference(
    frame: pd.DataFrame,
    settings: PipelineSettings,
    model: str,
    version: str | int,
    *,
    max_rows: int,
    seed: int = 0,
) -> Path:
    """Write a (sampled) reference window for a model version and return its path."""
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed)
    path = reference_path(settings, model, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.reset_index(drop=True).to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


# --- reporting: the report's key and event (the MLflow run and plots: tasks/drift_report.py)
def artifact_key(study: str) -> str:
    """Return the Prefect artifact key of a study's drift report (lowercase, digits, dashes)."""
    slug = "".join(c if c.isalnum() else "-" for c in study.lower()).strip("-")
    return f"drift-report-{slug}"


def drift_payload(
    report: DriftReport,
    *,
    model: str,
    version: str | None,
    arms: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the ``banditflow.drift.detected`` payload: what drifted, for which model, when.

    ``start``/``end`` (also under ``window``) are the recent window the retrain learns from;
    ``arms`` maps each serving version checked to its alias and drifted features.
    """
    return {
        "model": model,
        "version": version,
        "drifted_features": report.drifted_features,
        "metric_degraded": bool(report.metric and report.metric.degraded),
        "metric_reason": report.metric.reason if report.metric else "",
        "start": report.window.get("start"),
        "end": report.window.get("end"),
        "window": report.window,
        "n_current": report.n_current,
        "arms": arms or {},
    }


def emit_drift_detected(
    report: DriftReport,
    *,
    model: str,
    version: str | None,
    arms: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Emit ``banditflow.drift.detected`` for the model whose inputs (or labels) drifted."""
    from prefect.events import emit_event

    emit_event(
        event=EVENT_DRIFT_DETECTED,
        resource={
            "prefect.resource.id": model_resource_id(model, version),
            "prefect.resource.name": model,
        },
        payload=drift_payload(report, model=model, version=version, arms=arms),
    )
    # Sent before the run finishes, not at its process's exit: whoever watches the run end
    # (the demo's lock-step wait, an operator) then finds the event its trigger answers.
    from tasks.ingest import flush_events

    flush_events()
