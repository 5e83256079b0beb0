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


def warm_report_imports() -> None:
    """Import what the end's plots need (matplotlib, permutation importance), ahead of time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.inspection  # noqa: F401


def log_plots(client: MlflowClient, result: StudyResult, records: Sequence[TrialRecord]) -> None:
    """Log the optimization history (and the Pareto front of the first two objectives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.study_plots import log_study_plots

    log_study_plots(client, result, records)  # metric columns, importance, coordinates, slices
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


def pareto_figure(result: StudyResult, records: Sequence[TrialRecord]) -> Any:
    """Return a figure of every pair of objectives: the trials, the Pareto set in colour.

    The set is non-dominated over all the objectives together, so with three a member may
    look dominated in one pair's projection.
    """
    from itertools import combinations

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.objectives)
    pts = [r for r in records if r.status == "completed" and all(k in r.values for k in names)]
    front = {r.trial_id for r in pareto_front(pts, result.objectives)}
    pairs = list(combinations(names, 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    for ax, (m1, m2) in zip(axes[0], pairs, strict=True):
        rest = [r for r in pts if r.trial_id not in front]
        best = [r for r in pts if r.trial_id in front]
        ax.scatter([r.values[m1] for r in rest], [r.values[m2] for r in rest], s=16, c="0.65")
        ax.scatter([r.values[m1] for r in best], [r.values[m2] for r in best], s=28, c="C3")
        ax.set_xlabel(f"{m1} ({result.objectives[m1]})")
        ax.set_ylabel(f"{m2} ({result.objectives[m2]})")
    axes[0][0].legend(["trial", f"Pareto set ({len(front)})"])
    fig.suptitle(f"{result.study_name}: {len(pts)} completed trials")
    fig.tight_layout()
    return fig


def plot_pareto(client: MlflowClient, result: StudyResult, done: Sequence[TrialRecord]) -> None:
    """Log the Pareto figure (every pair of objectives) to the study's parent run."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(result, done)
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
