"""A drift report, recorded: an MLflow run (metrics, JSON, a plot per drifted feature) and
Prefect artifacts (a table and a markdown summary). The statistics are in tasks/drift.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract import TAG_DRIFTED, TAG_KIND, TAG_MODEL_VERSION, TAG_STUDY
from tasks.drift import DriftReport, _is_numeric, artifact_key

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings


def report_rows(report: DriftReport) -> list[dict[str, Any]]:
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
        for f in report.features
    ]


def report_markdown(report: DriftReport) -> str:
    """Return a markdown summary and table (the Prefect artifact's body)."""
    verdict = "**drift detected**" if report.drifted else "no drift"
    lines = [
        f"# Drift report: {verdict}",
        "",
        f"Reference rows: {report.n_reference}; recent rows: {report.n_current}; "
        f"window: {report.window.get('start')} to {report.window.get('end')}.",
        "",
    ]
    if report.metric is not None:
        m = report.metric
        lines += [
            f"Champion {m.metric}: hold-out {m.holdout:.4f}, recent {m.recent:.4f} "
            f"(margin {m.margin}) -> {'degraded' if m.degraded else 'ok'}",
            "",
        ]
        if m.predicted_rate is not None:
            lines += [
                f"Calibration: predicted rate {m.predicted_rate:.4f}, observed "
                f"{m.observed_rate:.4f} (p={m.calibration_p:.2g}). {m.reason}",
                "",
            ]
    lines += [
        "| feature | kind | PSI | test | statistic | p-value | effect | drifted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report_rows(report):
        lines.append(
            f"| {r['feature']} | {r['kind']} | {r['psi']} | {r['test']} | {r['statistic']} "
            f"| {r['p_value']} | {r['effect_size']} | {'yes' if r['drifted'] else ''} |"
        )
    return "\n".join(lines)


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
        (folder / "drift_report.md").write_text(report_markdown(report))
        client.log_artifact(run_id, str(folder / "drift_report.json"))
        client.log_artifact(run_id, str(folder / "drift_report.md"))
        for name in report.drifted_features:
            png = plot_feature(name, reference[name], current[name], folder / "plots")
            client.log_artifact(run_id, str(png), artifact_path="plots")
    client.set_terminated(run_id)
    return run_id


def publish_report(report: DriftReport, *, study: str, mlflow_run_id: str | None) -> None:
    """Create the Prefect artifacts of a report: a table and a markdown summary."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(study)
    where = f"\n\nMLflow run `{mlflow_run_id}` holds the plots." if mlflow_run_id else ""
    create_table_artifact(
        key=key,
        table=report_rows(report),
        description=f"Drift of {study}: {', '.join(report.drifted_features) or 'none'}",
    )
    create_markdown_artifact(key=f"{key}-summary", markdown=report_markdown(report) + where)


def record_report(
    report: DriftReport,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    study: str,
    model_version: str | None,
    settings: PipelineSettings,
) -> str:
    """Log a report to MLflow and Prefect (the drift check of one serving version)."""
    run_id = log_report_to_mlflow(
        report,
        reference,
        current,
        study=study,
        settings=settings,
        tags={TAG_MODEL_VERSION: str(model_version)},
    )
    publish_report(report, study=study, mlflow_run_id=run_id)
    return run_id
