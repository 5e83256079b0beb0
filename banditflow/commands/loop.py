"""``banditflow demo`` and ``banditflow simulate``: the closed loop, shown."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from banditflow.cli import app


@app.command()
def demo(
    quick: bool = typer.Option(False, help="Small world, few trials, 8 live days (CI's size)."),
    fresh: bool = typer.Option(
        False, help="Empty the data folder first (an earlier demo's studies would resume)."
    ),
    seed: int = typer.Option(0, help="Seed of the world: data, visits, outcomes."),
    drift: bool = typer.Option(True, help="Turn the drift knob on (off: a stationary world)."),
    lock_step: bool = typer.Option(
        True, help="Wait at each simulated day's end for the work its events started."
    ),
    rate: float = typer.Option(
        0.0, min=0.0, help="Simulated seconds per wall second to keep pace with (0: no pace)."
    ),
) -> None:
    """Drive the world on a simulated clock; the deployed system closes the loop."""
    from dataclasses import replace

    from banditflow.demo import DemoError, DemoPlan, run_demo

    plan = DemoPlan.quick() if quick else DemoPlan()
    plan = replace(plan, lock_step=lock_step, rate=rate or None)
    world = {"seed": seed} | ({} if drift else {"drift_day": None})
    try:
        run_demo(plan, fresh=fresh, **world)
    except DemoError as exc:
        typer.secho(
            f"demo failed: {exc}\n(everything the libraries printed is in the data folder's "
            "demo.log; the stack's logs are in run/)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from exc


@app.command()
def simulate(
    url: str = typer.Option("http://127.0.0.1:8000", help="The rollout service."),
    visits: int = typer.Option(10_000, min=1, help="Customer visits to send."),
    start: datetime = typer.Option(..., help="Simulated time of the first visit (UTC)."),
    end: datetime = typer.Option(..., help="Simulated time of the last visit (UTC)."),
    offer_cost: float = typer.Option(0.08, help="Offer shown when score >= cost."),
    reward: str = typer.Option(
        "auto",
        help="Reward sent: net (converted - cost), converted (1/0), or auto (what the "
        "service's policy takes, read from /arms).",
    ),
    rate: float = typer.Option(0.0, help="Requests per second (0: as fast as served)."),
    concurrency: int = typer.Option(8, min=1),
    batch: int = typer.Option(1, min=1, help="Rows per /predict call."),
    delay: float = typer.Option(
        3_600.0, min=0.0, help="Mean feedback delay in simulated seconds (exponential)."
    ),
    loss: float = typer.Option(0.05, help="Share of outcomes never reported."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("simulation.parquet"), help="Where to write what was sent."),
) -> None:
    """Send simulated customers to /predict and their true outcomes to /feedback."""
    import asyncio

    from banditflow.simulate import (
        SimulationError,
        TrafficOptions,
        build_stream,
        run_traffic,
        served_stream,
    )
    from tasks.settings import get_settings

    if reward not in ("auto", "net", "converted"):
        raise typer.BadParameter(f"--reward must be auto, net or converted, got {reward!r}")
    net: Any = "net" if reward == "auto" else reward  # checked just above
    options = TrafficOptions(offer_cost, delay, loss, concurrency, batch, rate or None, net)
    options = _reward_for_service(url, options, reward)
    try:
        stream = build_stream(
            get_settings().data_dir, n=visits, start=start, end=end, seed=seed, options=options
        )
        records, watcher = asyncio.run(run_traffic(url, stream, options=options, until=end))
    except SimulationError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    served = served_stream(stream, records)
    served.to_parquet(out, index=False)
    shares = served["version"].value_counts(normalize=True).sort_index()
    typer.echo(
        f"{len(served):,} visits, reward/visit {served['reward'].mean():.4f}, traffic "
        + ", ".join(f"v{v} {s:.0%}" for v, s in shares.items())
        + f"; champion {' -> '.join(v for _, v in watcher.champions)}; wrote {out}"
    )


def _reward_for_service(url: str, options: Any, reward: str) -> Any:
    """Read the service's reward kind (GET /arms) first; fit the reward or say what to set.

    A Bernoulli policy refuses negative rewards, and finding that out after building the
    stream and sending traffic wastes minutes.
    """
    import httpx

    from banditflow.simulate import fit_reward_to_service, reward_mismatch

    try:
        arms = httpx.get(f"{url.rstrip('/')}/arms", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        typer.secho(f"cannot read {url}/arms: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    if reward == "auto":
        fitted = fit_reward_to_service(arms, options)
        if fitted.reward != options.reward:
            typer.echo(
                f"the service's policy {arms.get('policy')!r} takes rewards in [0, 1]: "
                "sending conversions (1/0); set BANDITFLOW_POLICY=thompson-gaussian on the "
                "service to learn from net rewards (converted - cost)"
            )
        return fitted
    if problem := reward_mismatch(arms, options):
        typer.secho(problem, fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return options
