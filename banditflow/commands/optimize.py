"""The ``optimize`` command: run a study spec through the Prefect flow, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from banditflow.cli import app

RUNNER_HELP = "Where trials run: threads | processes (warm pool) | dask (default: the setting)."


@app.command()
def optimize(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="The study spec.")],
    trials: Annotated[
        int | None, typer.Option("--trials", help="Override budget.max_trials.")
    ] = None,
    q: Annotated[int | None, typer.Option("--q", help="Trials in flight at once.")] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="hyperopt | ax | random.")
    ] = None,
    runner: Annotated[str | None, typer.Option("--runner", help=RUNNER_HELP)] = None,
) -> None:
    """Optimize a model family as the spec says; print the best trial (or the Pareto set)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tasks.spec import SpecError, StudySpec

    console = Console()
    if runner is not None and runner not in ("threads", "processes", "dask", "prefect-processes"):
        console.print(f"[red]error:[/] --runner must be threads, processes or dask, got {runner!r}")
        raise typer.Exit(code=2)
    try:
        spec = StudySpec.from_yaml(spec_path)
        raw = spec.model_dump(mode="json")
        if trials is not None:
            raw["budget"]["max_trials"] = trials
        if q is not None:
            raw["q"] = q
        if optimizer is not None:
            raw["optimizer"] = optimizer
        spec = StudySpec.parse(raw, source=str(spec_path))
    except SpecError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from None

    from flows.optimize import optimize as optimize_flow
    from tasks.study import add_progress_listener

    metric, direction = spec.primary_objective
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{spec.name} trials", total=spec.budget.max_trials, best="-")

        def on_tell(event: dict[str, Any]) -> None:
            best = event["best"]
            shown = f"{metric}={best:.4g} ({direction})" if best is not None else "-"
            progress.update(bar, completed=event["finished"], best=shown)

        remove = add_progress_listener(on_tell)
        try:
            result = optimize_flow(spec, runner=runner)
        finally:
            remove()
    summary = (
        f"{result.n_completed} completed, {result.n_pruned} pruned, {result.n_failed} failed "
        f"in {result.wall_seconds:.1f} s ({result.stop_reason})"
    )
    console.print(summary)
    shown = [result.best] if result.best else result.pareto
    title = "best trial" if result.best else f"Pareto set ({len(result.pareto)} trials)"
    console.print(
        f"[bold]{title}[/] (MLflow experiment {result.experiment_id}, run {result.parent_run_id})"
    )
    for record in shown:
        values = ", ".join(
            f"{k}={record.values[k]:.4g}" for k in spec.objectives if k in record.values
        )
        console.print(f"  trial {record.trial_id}: {values}  params={record.params}")
    if not shown:
        console.print("[yellow]no trial completed: see the failed trials' reasons in MLflow[/]")
        raise typer.Exit(code=1)
