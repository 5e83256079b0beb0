"""The demo's report: one self-contained HTML page plus the same figures as PNG files."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract import TAG_GATE_PREFIX, TAG_GATES, TAG_SERVING_FLAVOUR, TAG_STUDY
from tasks.metrics import sign

RECOVERY_TOLERANCE = 0.02  # "within 2 % of the reference's reward rate"
# The achievable reference: the best policy given the observable features.
FEATURE_ORACLE = "feature oracle (best given the features)"
# The feature oracle from the day after the drift onset, the stale champion on that day.
DAY_LATE = "feature oracle from the day after the onset"


@dataclass
class ReportData:
    """Everything the report shows, gathered by the demo."""

    served: pd.DataFrame  # stream rows joined with what the service answered, by seq
    baselines: dict[str, np.ndarray]  # system name -> reward per served row (same order)
    drift_seq: int | None  # first visit after the drift
    events: list[tuple[int, str]] = field(default_factory=list)  # (seq, label) to mark
    studies: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> trial, value, ...
    study_objectives: dict[str, tuple[str, str]] = field(default_factory=dict)
    gates: pd.DataFrame | None = None  # one row per version: gate results
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    window: int = 2_000  # visits in the rolling windows
    # The baseline that "vs" columns and recovery are measured against.
    reference: str = FEATURE_ORACLE
    timeline: pd.DataFrame | None = None  # day, wall_s, kind, what (Prefect + registry)
    facts: dict[str, Any] = field(default_factory=dict)  # extra facts for summary.json

    @property
    def drift_seq_index(self) -> int | None:
        """Return the position in ``served`` of the first visit after the drift."""
        if self.drift_seq is None:
            return None
        return int(np.searchsorted(self.served["seq"].to_numpy(), self.drift_seq))


def recovery(
    live: np.ndarray, oracle: np.ndarray, start: int, window: int
) -> tuple[int | None, float, float]:
    """Return (visits from ``start`` until the live rolling reward rate is within 2 % of the
    oracle's, live rate after that point, oracle rate after that point)."""
    live_after, oracle_after = live[start:], oracle[start:]
    if len(live_after) < window:
        return None, float(np.mean(live_after) if len(live_after) else np.nan), float("nan")
    kernel = np.ones(window) / window
    live_roll = np.convolve(live_after, kernel, mode="valid")
    oracle_roll = np.convolve(oracle_after, kernel, mode="valid")
    close = live_roll >= (1 - RECOVERY_TOLERANCE) * oracle_roll
    if not close.any():
        return None, float(live_after.mean()), float(oracle_after.mean())
    first = int(np.argmax(close))
    return (
        first + window,
        float(live_after[first:].mean()),
        float(oracle_after[first:].mean()),
    )


def summary_table(data: ReportData) -> pd.DataFrame:
    """Return the benchmark table: each system's reward over the run and after the drift,
    and as a share of the reference's (the feature oracle) over the same visits."""
    rows = []
    systems = {"live system": data.served["reward"].to_numpy(), **data.baselines}
    reference = data.baselines.get(data.reference)
    drift = data.drift_seq_index
    for name, rewards in systems.items():
        row: dict[str, Any] = {
            "system": name,
            "visits": len(rewards),
            "total reward": float(rewards.sum()),
            "reward / visit": float(rewards.mean()) if len(rewards) else float("nan"),
        }
        if reference is not None:
            row["vs reference"] = ratio(rewards, reference)
        if drift is not None:
            after = rewards[drift:]
            row["reward / visit after drift"] = float(after.mean()) if len(after) else float("nan")
            if reference is not None:
                row["vs reference after drift"] = ratio(after, reference[drift:])
        rows.append(row)
    return pd.DataFrame(rows)


def ratio(rewards: np.ndarray, reference: np.ndarray) -> float:
    """Return total reward / the reference's total on the same visits (NaN if it earns <= 0)."""
    total = float(np.sum(reference))
    return float(np.sum(rewards)) / total if total > 0 else float("nan")


def _figure_png(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _mark(ax: Any, data: ReportData) -> None:
    if data.drift_seq_index is not None:
        ax.axvline(data.drift_seq_index, color="crimson", linestyle="--", label="drift")
    for seq, label in data.events:
        index = int(np.searchsorted(data.served["seq"].to_numpy(), seq))
        ax.axvline(index, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            label,
            (index, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
            color="dimgrey",
        )


def figures(data: ReportData) -> dict[str, bytes]:
    """Render the report's figures; returns file name -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(np.cumsum(data.served["reward"].to_numpy()), label="live system", linewidth=2)
    for name, rewards in data.baselines.items():
        ax.plot(np.cumsum(rewards), label=name, linewidth=1.2)
    _mark(ax, data)
    ax.set(xlabel="visit", ylabel="cumulative reward", title="Cumulative reward on the same visits")
    ax.legend(loc="upper left", fontsize=8)
    out["cumulative_reward.png"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    versions = data.served["version"].astype(str)
    window = max(50, min(data.window, len(versions) // 5 or 1))
    for version in sorted(versions.unique(), key=lambda v: int(v) if v.isdigit() else v):
        share = (versions == version).astype(float).rolling(window, min_periods=1).mean()
        ax.plot(share.to_numpy(), label=f"version {version}")
    _mark(ax, data)
    ax.set(
        xlabel="visit",
        ylabel=f"traffic share (last {window} visits)",
        ylim=(0, 1.05),
        title="Traffic share per arm",
    )
    ax.legend(loc="center left", fontsize=8)
    out["traffic_share.png"] = _figure_png(fig)
    plt.close(fig)

    for name, trials in data.studies.items():
        if trials.empty:
            continue
        metric, direction = data.study_objectives.get(name, ("value", "maximize"))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        values = trials["value"].to_numpy(dtype=float)
        best = sign(direction) * np.fmin.accumulate(sign(direction) * values)
        ax.scatter(np.arange(1, len(values) + 1), values, s=14, label="trial")
        ax.plot(np.arange(1, len(values) + 1), best, color="darkorange", label="best so far")
        ax.set(xlabel="trial", ylabel=metric, title=f"Study {name}")
        ax.legend(fontsize=8)
        out[f"study_{name}.png"] = _figure_png(fig)
        plt.close(fig)
    return out


def _json_safe(value: Any) -> Any:
    """Replace NaN with None, so summary.json is strict JSON."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(
        index=False, float_format=lambda v: f"{v:,.4f}", border=0, classes="table", na_rep=""
    )


def _sections(
    data: ReportData,
    images: dict[str, bytes],
    summary: pd.DataFrame,
    rec: tuple[int | None, float, float],
) -> list[str]:
    """Return the report page's sections as HTML fragments, in order."""

    def img(name: str, alt: str) -> str:
        encoded = base64.b64encode(images[name]).decode()
        src = f"data:image/png;base64,{encoded}"
        return f'<figure><img alt="{html.escape(alt)}" src="{src}"></figure>'

    sections = [
        "<h2>Reward</h2>",
        _table_html(summary),
        f"<p>Drift at visit {data.drift_seq_index}; the live system came within "
        f"{RECOVERY_TOLERANCE:.0%} of the {html.escape(data.reference)}'s rolling reward rate "
        + (f"{rec[0]:,} visits later." if rec[0] is not None else "— not within this run.")
        + "</p>",
        img("cumulative_reward.png", "cumulative reward"),
        "<h2>Traffic share per arm</h2>",
        img("traffic_share.png", "traffic share"),
        "<h2>Decisions</h2><ul>"
        + "".join(f"<li>visit {s:,}: {html.escape(label)}</li>" for s, label in data.events)
        + "</ul>",
        "<h2>Optimization history</h2>",
        *(img(f"study_{n}.png", f"study {n}") for n in data.studies if f"study_{n}.png" in images),
    ]
    if data.timeline is not None and not data.timeline.empty:
        sections += [
            "<h2>Timeline (Prefect's and the registry's records)</h2>",
            "<p>Simulated day (-1: before the live days) and wall seconds since the start.</p>",
            _table_html(data.timeline),
        ]
    if data.gates is not None and not data.gates.empty:
        sections += ["<h2>Gate reports</h2>", _table_html(data.gates)]
    if data.steps:
        steps = pd.DataFrame(data.steps, columns=["step", "seconds"])
        sections += ["<h2>Demo steps</h2>", _table_html(steps)]
    return sections


def write_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write ``index.html`` (figures embedded), the PNGs and ``summary.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = figures(data)
    for name, png in images.items():
        (out / name).write_bytes(png)
    summary = summary_table(data)
    reference = data.baselines.get(data.reference)
    rec: tuple[int | None, float, float] = (None, float("nan"), float("nan"))
    if reference is not None and data.drift_seq_index is not None:
        live = data.served["reward"].to_numpy()
        rec = recovery(live, reference, data.drift_seq_index, data.window)
    facts = {
        "visits": len(data.served),
        "reference": data.reference,
        "drift_at_visit": data.drift_seq_index,
        "recovered_after_visits": rec[0],
        "live_rate_after_recovery": rec[1],
        "reference_rate_after_recovery": rec[2],
        "events": [{"seq": s, "label": label} for s, label in data.events],
        "systems": summary.to_dict(orient="records"),
        "steps": [{"step": s, "seconds": round(t, 1)} for s, t in data.steps],
        **data.facts,
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(facts), indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary.to_markdown(index=False, floatfmt=".4f") + "\n")

    sections = _sections(data, images, summary, rec)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>banditflow demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
.table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
.table td, .table th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>banditflow: the loop, closed</h1>
{"".join(sections)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    return index


def gate_table(versions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return one row per model version with its aliases and gate results (from tags)."""
    rows = []
    for v in versions:
        tags = v.get("tags", {})
        row = {"version": v["version"], "aliases": ", ".join(v.get("aliases", []))}
        row["study"] = tags.get(TAG_STUDY, "")
        row["gates"] = tags.get(TAG_GATES, "")
        for key, value in sorted(tags.items()):
            if key.startswith(TAG_GATE_PREFIX) and key != TAG_GATES:
                row[key.removeprefix(TAG_GATE_PREFIX)] = value
        row["flavour"] = tags.get(TAG_SERVING_FLAVOUR, "")
        rows.append(row)
    return pd.DataFrame(rows)
