"""The set-up every command shares (``banditflow.runtime``), as the CLI's callback."""

from __future__ import annotations

import typer

from banditflow.cli import app

# The service logs to its own output (uvicorn's, `up` keeps it in run/rollout.log).
OWN_OUTPUT = {"serve"}


@app.callback()
def prepare(ctx: typer.Context) -> None:
    """Optimize models with Prefect + Hyperopt/Ax, register them in MLflow, roll them out."""
    from banditflow.runtime import prepare_process
    from tasks.settings import default_home

    prepare_process(default_home(), library_output_to_file=ctx.invoked_subcommand not in OWN_OUTPUT)
