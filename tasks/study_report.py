"""A study's report: plots logged to the parent run and a Prefect table of the top trials."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tasks.study_result import StudyResult, TrialRecord, loss_sign, pareto_front

if TYPE_CHECKING:
    from mlflow import MlflowClient


def artifact_key(text: str) -> str:
    """Return a Prefect artifact key: lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "study"


def log_plots(client: MlflowClient, result: StudyResult, records: Sequence[TrialRecord]) -> None:
    """Log the optimization history (and the Pareto front of the first two objectives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, direction = next(iter(result.objectives.items()))
    done = [r for r in records if r.status == "completed" and metric in r.values]
    if not done:
        return
    sign = loss_sign(direction)
    xs = [int(r.trial_id) for r in done]
    ys = [r.values[metric] for r in done]
    running: list[float] = []
    for y in ys:
        running.append(y if not running or sign * y < sign * running[-1] else running[-1])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(xs, ys, s=18, label="completed trial")
    ax.step(xs, running, where="post", color="C3", label=f"best so far ({direction})")
    if result.defaults is not None and metric in result.defaults.values:
        ax.axhline(result.defaults.values[metric], color="0.4", ls="--", label="library defaults")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{result.study_name}: optimization history")
    ax.legend()
    client.log_figure(result.parent_run_id, fig, "plots/optimization_history.png")
    plt.close(fig)
    if len(result.objectives) >= 2:
        plot_pareto(client, result, done)


def plot_pareto(client: MlflowClient, result: StudyResult, done: Sequence[TrialRecord]) -> None:
    """Log the trials and the front over the first two objectives."""
    import matplotlib.pyplot as plt

    (m1, _), (m2, _) = list(result.objectives.items())[:2]
    pts = [r for r in done if m1 in r.values and m2 in r.values]
    front = {r.trial_id for r in pareto_front(pts, dict(list(result.objectives.items())[:2]))}
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter([r.values[m1] for r in pts], [r.values[m2] for r in pts], s=18, color="0.6")
    pf = sorted((r for r in pts if r.trial_id in front), key=lambda r: r.values[m1])
    ax.plot([r.values[m1] for r in pf], [r.values[m2] for r in pf], "o-", color="C3")
    ax.set_xlabel(m1)
    ax.set_ylabel(m2)
    ax.legend(["trial", "Pareto front"])
    client.log_figure(result.parent_run_id, fig, "plots/pareto_front.png")
    plt.close(fig)


def table_artifact(result: StudyResult) -> None:
    """Publish the top trials (or the Pareto set) as a Prefect table, inside a flow run."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:  # outside a flow run there is nowhere to attach it
        return
    rows = []
    shown = list(result.pareto or result.top)
    if result.defaults is not None and result.defaults not in shown:
        shown.append(result.defaults)
    for r in shown:
        row: dict[str, Any] = {"trial": r.trial_id, "role": r.role, "status": r.status}
        row |= {k: round(r.values[k], 6) for k in result.objectives if k in r.values}
        row |= dict(r.params)
        rows.append(row)
    gain = "" if result.tuning_gain is None else f"; tuning won {result.tuning_gain:+.4g}"
    create_table_artifact(
        table=rows,
        key=artifact_key(f"{result.study_name}-top-trials"),
        description=f"Top trials of study {result.study_name} ({result.stop_reason}{gain})",
    )
