"""Drift of the recent window against the champion's training data: per feature and on the metric.

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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy import stats

from contract import (
    EVENT_DRIFT_DETECTED,
    TAG_DRIFTED,
    TAG_KIND,
    TAG_MODEL_VERSION,
    TAG_STUDY,
    model_resource_id,
)
from tasks.metrics import sign
from tasks.spec import DriftSpec

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings

# Empty bins would make PSI infinite: floor each share at this.
_PSI_EPSILON = 1e-4


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
    """The champion's metric on recent labelled rows against its hold-out value."""

    metric: str
    direction: Literal["minimize", "maximize"]
    holdout: float
    recent: float
    margin: float
    degraded: bool


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

    def rows(self) -> list[dict[str, Any]]:
        """Return the report as table rows (one per feature), rounded for display."""
        return [
            {
                "feature": f.feature,
                "kind": f.kind,
                "psi": round(f.psi, 4),
                "test": f.test,
                "statistic": round(f.statistic, 4),
                "p_value": float(f"{f.p_value:.3g}"),
                "effect_size": round(f.effect_size, 4),
                "drifted": f.drifted,
                "reason": f.reason,
            }
            for f in self.features
        ]

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

    def to_markdown(self) -> str:
        """Return a markdown summary and table (the Prefect artifact's body)."""
        verdict = "**drift detected**" if self.drifted else "no drift"
        lines = [
            f"# Drift report: {verdict}",
            "",
            f"Reference rows: {self.n_reference}; recent rows: {self.n_current}; "
            f"window: {self.window.get('start')} to {self.window.get('end')}.",
            "",
        ]
        if self.metric is not None:
            m = self.metric
            lines += [
                f"Champion {m.metric}: hold-out {m.holdout:.4f}, recent {m.recent:.4f} "
                f"(margin {m.margin}) -> {'degraded' if m.degraded else 'ok'}",
                "",
            ]
        lines += [
            "| feature | kind | PSI | test | statistic | p-value | effect | drifted |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['feature']} | {r['kind']} | {r['psi']} | {r['test']} | {r['statistic']} "
                f"| {r['p_value']} | {r['effect_size']} | {'yes' if r['drifted'] else ''} |"
            )
        return "\n".join(lines)


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
    worse_by = sign(direction) * (recent - holdout)
    return MetricDrift(metric, direction, holdout, recent, margin, bool(worse_by > margin))


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


# --- reporting -------------------------------------------------------------------------
def plot_feature(name: str, reference: pd.Series, current: pd.Series, out_dir: Path) -> Path:
    """Draw the reference and recent distributions of one feature into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if _is_numeric(reference) and _is_numeric(current):
        both = np.r_[reference.dropna().to_numpy(float), current.dropna().to_numpy(float)]
        bins = np.histogram_bin_edges(both, bins=30).tolist()
        ax.hist(reference.dropna(), bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(current.dropna(), bins=bins, density=True, alpha=0.5, label="recent")
    else:
        shares = pd.DataFrame(
            {
                "reference": reference.astype(str).value_counts(normalize=True),
                "recent": current.astype(str).value_counts(normalize=True),
            }
        ).fillna(0)
        shares.plot.bar(ax=ax)
    ax.set_title(f"{name}: reference vs recent")
    ax.legend()
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"drift_{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_report_to_mlflow(
    report: DriftReport,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    study: str,
    settings: PipelineSettings,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the report (metrics, JSON, a plot per drifted feature) as an MLflow run; return it."""
    import tempfile

    from tasks.tracking import configure_mlflow, ensure_experiment

    client = configure_mlflow(settings)
    experiment_id = ensure_experiment(f"{study}-drift", settings)
    run = client.create_run(
        experiment_id,
        run_name="drift-check",
        tags={TAG_STUDY: study, TAG_KIND: "drift", **(tags or {})},
    )
    run_id = run.info.run_id
    from mlflow.entities import Metric, Param

    now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    metrics = [Metric(f"psi.{f.feature}", f.psi, now, 0) for f in report.features]
    metrics += [Metric(f"effect.{f.feature}", f.effect_size, now, 0) for f in report.features]
    metrics.append(Metric("drifted_features", float(len(report.drifted_features)), now, 0))
    if report.metric is not None:
        metrics.append(Metric(f"recent.{report.metric.metric}", report.metric.recent, now, 0))
    params = [
        Param("n_reference", str(report.n_reference)),
        Param("n_current", str(report.n_current)),
        Param("window_start", str(report.window.get("start"))),
        Param("window_end", str(report.window.get("end"))),
    ]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_tag(run_id, TAG_DRIFTED, str(report.drifted).lower())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "drift_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        (folder / "drift_report.md").write_text(report.to_markdown())
        client.log_artifact(run_id, str(folder / "drift_report.json"))
        client.log_artifact(run_id, str(folder / "drift_report.md"))
        for name in report.drifted_features:
            png = plot_feature(name, reference[name], current[name], folder / "plots")
            client.log_artifact(run_id, str(png), artifact_path="plots")
    client.set_terminated(run_id)
    return run_id


def artifact_key(study: str) -> str:
    """Return the Prefect artifact key of a study's drift report (lowercase, digits, dashes)."""
    slug = "".join(c if c.isalnum() else "-" for c in study.lower()).strip("-")
    return f"drift-report-{slug}"


def publish_report(report: DriftReport, *, study: str, mlflow_run_id: str | None) -> None:
    """Create the Prefect artifacts of a report: a table and a markdown summary."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(study)
    where = f"\n\nMLflow run `{mlflow_run_id}` holds the plots." if mlflow_run_id else ""
    create_table_artifact(
        key=key,
        table=report.rows(),
        description=f"Drift of {study}: {', '.join(report.drifted_features) or 'none'}",
    )
    create_markdown_artifact(key=f"{key}-summary", markdown=report.to_markdown() + where)


def emit_drift_detected(report: DriftReport, *, model: str, version: str | None) -> None:
    """Emit ``banditflow.drift.detected`` for the model whose inputs drifted."""
    from prefect.events import emit_event

    emit_event(
        event=EVENT_DRIFT_DETECTED,
        resource={
            "prefect.resource.id": model_resource_id(model, version),
            "prefect.resource.name": model,  # the retrain trigger's `model` parameter
        },
        payload={
            "drifted_features": report.drifted_features,
            "metric_degraded": bool(report.metric and report.metric.degraded),
            "window": report.window,
            "n_current": report.n_current,
        },
    )


@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift_task(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: DriftSpec,
    *,
    study: str,
    model_version: str | None,
    settings: PipelineSettings,
    metric: MetricDrift | None = None,
    window: dict[str, str | None] | None = None,
) -> DriftReport:
    """Detect drift, log the report to MLflow and Prefect, and emit the event when drifted."""
    report = detect_drift(reference, current, spec, metric=metric, window=window)
    run_id = log_report_to_mlflow(
        report,
        reference,
        current,
        study=study,
        settings=settings,
        tags={TAG_MODEL_VERSION: str(model_version)},
    )
    publish_report(report, study=study, mlflow_run_id=run_id)
    if report.drifted:
        emit_drift_detected(report, model=study, version=model_version)
    return report
