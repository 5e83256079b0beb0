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
        int | None,
        typer.Option(
            "--trials",
            help="Run N more trials: on a resumed study, N after those it already has "
            "(budget.max_trials becomes done + N); on a new one, N in all.",
        ),
    ] = None,
    q: Annotated[int | None, typer.Option("--q", help="Trials in flight at once.")] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="hyperopt | ax | random.")
    ] = None,
    runner: Annotated[str | None, typer.Option("--runner", help=RUNNER_HELP)] = None,
) -> None:
    """Optimize a model family as the spec says; print the best trial (or the Pareto set)."""
    from rich.console import Console

    from tasks.spec import SpecError
    from tasks.study import StudyStateError

    console = Console()
    if runner is not None and runner not in ("threads", "processes", "dask", "prefect-processes"):
        console.print(f"[red]error:[/] --runner must be threads, processes or dask, got {runner!r}")
        raise typer.Exit(code=2)
    try:
        spec, done = _spec_with_overrides(spec_path, trials, q, optimizer)
    except (SpecError, StudyStateError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from None

    from banditflow.commands.progress import StudyProgress
    from flows.optimize import optimize as optimize_flow
    from tasks.study import add_progress_listener

    total = spec.budget.max_trials
    if done:
        more = f"{trials} more" if trials is not None else f"up to {max(total - done, 0)} more"
        console.print(
            f"resuming study {spec.name!r}: {done} trials so far, {more} (budget {total})"
        )
    metric, direction = spec.primary_objective
    bar = StudyProgress(console, spec.name, total, done, metric, direction)
    remove = add_progress_listener(bar.on_event, phases=True)
    try:
        with bar.running():
            result = optimize_flow(spec, runner=runner)
    finally:
        remove()
    shown = _print_result(console, result, spec)
    if not shown:
        console.print("[yellow]no trial completed: see the failed trials' reasons in MLflow[/]")
        raise typer.Exit(code=1)


def _spec_with_overrides(
    spec_path: Path, trials: int | None, q: int | None, optimizer: str | None
) -> tuple[Any, int]:
    """Return the spec with the command line's overrides, and how many trials are done."""
    from tasks.spec import SpecError, StudySpec
    from tasks.study import check_resume, trials_so_far

    spec = StudySpec.from_yaml(spec_path)
    raw = spec.model_dump(mode="json")
    done = trials_so_far(spec.name)
    if trials is not None:
        if trials < 1:
            raise SpecError(f"--trials must be at least 1, got {trials}")
        raw["budget"]["max_trials"] = done + trials
    if q is not None:
        raw["q"] = q
    if optimizer is not None:
        raw["optimizer"] = optimizer
    spec = StudySpec.parse(raw, source=str(spec_path))
    check_resume(spec)  # before Prefect starts: a changed spec is refused in a second
    return spec, done


def _print_result(console: Any, result: Any, spec: Any) -> list[Any]:
    """Print the counts, what tuning won over the defaults, and the best trial(s)."""
    metric = spec.primary_objective[0]
    summary = (
        f"{result.n_completed} completed, {result.n_pruned} pruned, {result.n_failed} failed "
        f"in {result.wall_seconds:.1f} s ({result.stop_reason})"
    )
    console.print(summary)
    if result.tuning_gain is not None and result.defaults is not None:
        base = result.defaults.values.get(metric)
        console.print(
            f"tuning won {result.tuning_gain:+.4g} {metric} over the library defaults "
            f"(trial {result.defaults.trial_id}: {metric}={base:.4g})"
        )
    shown = [result.best] if result.best else result.pareto
    title = "best trial" if result.best else f"Pareto set ({len(result.pareto)} trials)"
    console.print(
        f"[bold]{title}[/] (MLflow experiment {result.experiment_id}, study run "
        f"{result.parent_run_id})"
    )
    for record in shown:
        values = ", ".join(
            f"{k}={record.values[k]:.4g}" for k in spec.objectives if k in record.values
        )
        run = f" (run {record.run_id})" if record.run_id else ""
        console.print(f"  trial {record.trial_id}{run}: {values}  params={record.params}")
    return list(shown)
