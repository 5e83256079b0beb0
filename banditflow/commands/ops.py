"""``banditflow up`` / ``down`` / ``status`` (``make up`` ...): the local stack from the shell.

The supervisor itself is ``banditflow.stack`` (``start_stack``, ``attach``); these commands
only read options, call it and print where each part answers.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from banditflow.cli import app

DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "rollout": 8000}


def _settings() -> Any:
    from tasks.settings import get_settings

    return get_settings().ensure_dirs()


def _port(option: int | None, name: str) -> int:
    """Return the option, else ``BANDITFLOW_<NAME>_PORT``, else the default (0: any free)."""
    env = os.environ.get(f"BANDITFLOW_{name.upper()}_PORT")
    return option if option is not None else int(env) if env else DEFAULT_PORTS[name]


def served_model(rollout_url: str) -> str:
    """Say which registered model the service serves, and its champion (from ``/arms``)."""
    import httpx

    try:
        arms = httpx.get(f"{rollout_url}/arms", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"(could not read {rollout_url}/arms: {exc})"
    champion = next((a for a in arms.get("arms", []) if a.get("role") == "champion"), None)
    name = arms.get("model_name", "?")
    decisions = "on" if arms.get("auto_decisions") else "off"
    if champion is None:
        return (
            f"model {name!r}: no champion yet (register one: `banditflow register {name} ...`; "
            f"BANDITFLOW_MODEL_NAME names another model); automatic decisions {decisions}"
        )
    version = champion.get("model", {}).get("version", "?")
    return f"model {name!r}, champion v{version}; automatic decisions {decisions}"


@app.command()
def up(
    profile: Annotated[
        str,
        typer.Option(
            envvar="BANDITFLOW_PROFILE",
            help="local (SQLite, one of each) or scaled (PostgreSQL, Redis, Dask, 2 replicas).",
        ),
    ] = "local",
    prefect_port: Annotated[
        int | None, typer.Option(help="Prefect server port (0: any free).")
    ] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow UI port (0: any free).")] = None,
    rollout_port: Annotated[
        int | None, typer.Option(help="Rollout service port (0: any free).")
    ] = None,
    rollout: Annotated[bool, typer.Option(help="Start the rollout service too.")] = True,
    deploy: Annotated[bool, typer.Option(help="Deploy prefect.yaml's deployments.")] = True,
    auto_decisions: Annotated[
        bool, typer.Option(help="The service promotes and rolls back by itself.")
    ] = True,
    worker_poll_seconds: Annotated[
        float | None, typer.Option(help="How often the worker polls (Prefect's default: 10 s).")
    ] = None,
) -> None:
    """Start the Prefect server, work pool + worker, MLflow UI and rollout service on 127.0.0.1."""
    from banditflow.stack import StackError, start_stack, token_file

    settings = _settings()
    ports = {
        "prefect": _port(prefect_port, "prefect"),
        "mlflow": _port(mlflow_port, "mlflow"),
        "rollout": _port(rollout_port, "rollout"),
    }
    try:
        stack = start_stack(
            settings,
            profile=profile,
            ports=ports,
            with_rollout=rollout,
            deploy=deploy,
            auto_decisions=auto_decisions,
            worker_poll_seconds=worker_poll_seconds,
            echo=typer.echo,
        )
    except StackError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(
        f"\nup, profile {profile} (pids and ports in {settings.home / 'run' / 'stack.json'}):"
    )
    typer.echo(f"  Prefect UI         {stack.prefect_ui_url}")
    if stack.mlflow_ui_url:
        typer.echo(f"  MLflow UI          {stack.mlflow_ui_url}")
    if stack.rollout_url:
        typer.echo(f"  rollout dashboard  {stack.rollout_url}/dashboard")
        typer.echo(f"  serving            {served_model(stack.rollout_url)}")
        typer.echo(f"  admin token        in {token_file(stack.home)}")
    if stack.profile == "scaled":
        _echo_scaled(stack)
    typer.echo("stop it with `make down`; see it with `make status`.")


def _echo_scaled(stack: Any) -> None:
    env = stack.client_env
    replicas = ", ".join(c.url for n, c in stack.components.items() if n.startswith("rollout-"))
    typer.echo(f"  replicas           {replicas} (HAProxy in front: {stack.rollout_url})")
    typer.echo(f"  Dask scheduler     {env.get('BANDITFLOW_DASK_ADDRESS')}")
    typer.echo(f"  Feast online store {env.get('BANDITFLOW_FEATURE_STORE_YAML')} (Redis)")
    typer.echo("  (`banditflow` commands in this data folder use these by themselves)")


@app.command()
def down() -> None:
    """Stop exactly the processes `banditflow up` started (recorded in the data folder)."""
    from banditflow.supervisor import stack_file, stop_recorded

    home = _settings().home
    if not stack_file(home).exists():
        typer.echo(f"nothing recorded in {stack_file(home)}: nothing to stop")
        return
    stop_recorded(home, echo=typer.echo)


@app.command()
def status() -> None:
    """Say what `banditflow up` started, whether it runs, and where."""
    from banditflow.supervisor import describe

    rows = describe(_settings().home)
    if not rows:
        typer.echo("not running (`make up` starts the stack)")
        return
    for row in rows:
        state = "healthy" if row["healthy"] else "running" if row["running"] else "STOPPED"
        typer.echo(
            f"{row['name']:<14} {state:<8} pid {row['pid']:<7} {row['url']:<28} {row['log']}"
        )
    if not all(r["running"] for r in rows):
        raise typer.Exit(code=1)
