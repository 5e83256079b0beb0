"""Drift detection on generated data: knob off flags nothing, knob on flags exactly its features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.datagen import DRIFTED_FEATURES, FEATURES, GeneratorConfig, generate, labelled_sessions
from tasks.drift import (
    DriftError,
    artifact_key,
    detect_drift,
    keep_reference,
    log_report_to_mlflow,
    metric_drift,
    psi_categorical,
    psi_numeric,
    reference_path,
)
from tasks.spec import DriftSpec

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=60)


def windows(seed: int, tmp_path: Path, *, drift: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (reference: days 0-60, recent: days 75-90) of generated, joined sessions."""
    config = GeneratorConfig(
        seed=seed,
        n_customers=1_500,
        rows=24_000,
        start=START,
        days=90,
        drift_at=DRIFT_AT if drift else None,
        drift_strength=1.0,
    )
    folder = tmp_path / f"seed{seed}-{drift}"
    generate(config, folder)
    frame = labelled_sessions(folder)
    stamp = frame["event_timestamp"]
    reference = frame[stamp < pd.Timestamp(DRIFT_AT)]
    recent = frame[stamp >= pd.Timestamp(DRIFT_AT + timedelta(days=15))]
    return reference[list(FEATURES)], recent[list(FEATURES)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_feature_is_flagged_when_the_drift_knob_is_off(seed: int, tmp_path: Path) -> None:
    reference, recent = windows(seed, tmp_path, drift=False)
    report = detect_drift(reference, recent, DriftSpec())
    assert report.drifted_features == [], report.to_markdown()
    assert not report.drifted


@pytest.mark.parametrize("seed", [0, 1])
def test_exactly_the_drifted_features_are_flagged_when_the_knob_is_on(
    seed: int, tmp_path: Path
) -> None:
    reference, recent = windows(seed, tmp_path, drift=True)
    report = detect_drift(reference, recent, DriftSpec())
    assert sorted(report.drifted_features) == sorted(DRIFTED_FEATURES), report.to_markdown()
    kinds = {f.feature: f.kind for f in report.features}
    assert kinds["age_band"] == "categorical" and kinds["cart_adds_7d"] == "numeric"


def test_psi_is_zero_for_identical_samples_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=20_000)
    assert psi_numeric(base, base.copy()) == pytest.approx(0.0, abs=1e-12)
    small = psi_numeric(base, rng.normal(0.1, 1.0, 20_000))
    large = psi_numeric(base, rng.normal(1.0, 1.0, 20_000))
    assert small < 0.05 < 0.2 < large
    cats = pd.Series(rng.choice(["a", "b", "c"], 5_000, p=[0.5, 0.3, 0.2]))
    moved = pd.Series(rng.choice(["a", "b", "c", "d"], 5_000, p=[0.2, 0.3, 0.2, 0.3]))
    assert psi_categorical(cats, cats) == pytest.approx(0.0, abs=1e-12)
    assert psi_categorical(cats, moved) > 0.2


def test_large_samples_need_an_effect_size_not_just_a_small_p_value() -> None:
    # A shift of 0.03 sd at n=200k gives KS p << 0.01; the effect-size guard keeps it unflagged.
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(size=200_000)})
    cur = pd.DataFrame({"x": rng.normal(0.03, 1.0, 200_000)})
    (x,) = detect_drift(ref, cur, DriftSpec()).features
    assert x.p_value < 0.01 and not x.drifted


def test_metric_degradation_respects_the_direction_and_margin() -> None:
    assert metric_drift("roc_auc", "maximize", 0.80, 0.75, 0.02).degraded
    assert not metric_drift("roc_auc", "maximize", 0.80, 0.79, 0.02).degraded
    assert metric_drift("log_loss", "minimize", 0.30, 0.35, 0.02).degraded
    assert not metric_drift("log_loss", "minimize", 0.30, 0.25, 0.02).degraded


def test_too_few_recent_rows_is_a_clear_error() -> None:
    frame = pd.DataFrame({"x": np.arange(1_000.0)})
    with pytest.raises(DriftError, match="min_rows"):
        detect_drift(frame, frame.head(50), DriftSpec())
    with pytest.raises(DriftError, match="not in both windows"):
        detect_drift(frame, frame, DriftSpec(), features=["y"])


def test_report_is_logged_to_mlflow_with_a_plot_per_drifted_feature(settings) -> None:
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"a": rng.normal(size=2_000), "b": rng.choice(["x", "y"], 2_000)})
    cur = pd.DataFrame({"a": rng.normal(1.5, 1.0, 2_000), "b": rng.choice(["x", "y"], 2_000)})
    report = detect_drift(ref, cur, DriftSpec(), window={"start": "s", "end": "e"})
    assert report.drifted_features == ["a"]
    run_id = log_report_to_mlflow(report, ref, cur, study="demo", settings=settings)

    from tasks.tracking import configure_mlflow

    client = configure_mlflow(settings)
    files = {f.path for f in client.list_artifacts(run_id)}
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert {"drift_report.json", "drift_report.md"} <= files
    assert plots == {"plots/drift_a.png"}
    assert client.get_run(run_id).data.metrics["psi.a"] == pytest.approx(report.features[0].psi)
    assert artifact_key("Demo_Study.v2") == "drift-report-demo-study-v2"


def test_reference_sample_is_kept_beside_the_champion(settings) -> None:
    frame = pd.DataFrame({"x": np.arange(500.0)})
    path = keep_reference(frame, settings, "demo", "3", max_rows=100)
    assert path == reference_path(settings, "demo", 3)
    assert len(pd.read_parquet(path)) == 100
