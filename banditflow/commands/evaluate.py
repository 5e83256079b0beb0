"""``banditflow evaluate-policy``: what another policy would have earned on the logged traffic."""

from __future__ import annotations

import json
from typing import Any

import typer

from banditflow.cli import app


def evaluate_logged(
    state_url: str,
    policy: str,
    params: dict[str, Any],
    *,
    per_segment: bool,
    arms: list[str] | None,
    level: float,
    seed: int = 0,
) -> str:
    """Return a markdown table of the IPS, SNIPS and DR estimates on a rollout store."""
    import numpy as np

    from rollout.ope import Logged, evaluate, on_policy_value, policy_target
    from rollout.policies import get_policy
    from rollout.store import Store

    store = Store(state_url)
    try:
        rows = store.logged_decisions()
    finally:
        store.dispose()
    logged = Logged.from_rows(
        [r["arm"] for r in rows],
        [r["segment"] for r in rows],
        [r["propensity"] for r in rows],
        [r["reward"] for r in rows],
    )
    target = policy_target(
        logged,
        get_policy(policy, **params),
        np.random.default_rng(seed),
        per_segment=per_segment,
        arms=arms,
    )
    shares = ", ".join(
        f"{a} {float(np.average(target[logged.segment, i])):.3f}" for i, a in enumerate(logged.arms)
    )
    lines = [
        f"Target: {policy} {json.dumps(params)}"
        f"{' per segment' if per_segment else ''}; average split {shares}.",
        f"{logged.n:,} logged decisions with a propensity and a reward, "
        f"{len(logged.segments)} segment(s); {level:.0%} intervals.",
        "",
        "| estimator | mean reward per decision | interval |",
        "|---|---|---|",
    ]
    for est in [on_policy_value(logged, level), *evaluate(logged, target, level)]:
        lines.append(
            f"| {est.estimator} | {est.value:.5f} | [{est.ci_low:.5f}, {est.ci_high:.5f}] |"
        )
    return "\n".join(lines)


@app.command("evaluate-policy")
def evaluate_policy(
    policy: str = typer.Option(..., help="Target policy name (e.g. thompson, fixed, ucb1)."),
    params: str = typer.Option("{}", help="Its parameters as JSON."),
    per_segment: bool = typer.Option(
        False, help="Route per segment, as a contextual policy would."
    ),
    arms: str = typer.Option("", help="Comma-separated subset of arms (default: all logged)."),
    level: float = typer.Option(0.95, min=0.5, max=0.999, help="Confidence level."),
    state_url: str = typer.Option("", help="Rollout state URL (default: the service's)."),
) -> None:
    """Estimate, from the logged decisions, what another policy would have earned."""
    from rollout.ope import OffPolicyError
    from rollout.policies import PolicyError
    from rollout.settings import RolloutSettings

    try:
        parsed = json.loads(params)
        if not isinstance(parsed, dict):
            raise ValueError("params must be a JSON object")
        url = state_url or RolloutSettings().database_url
        chosen = [a.strip() for a in arms.split(",") if a.strip()] or None
        table = evaluate_logged(
            url, policy, parsed, per_segment=per_segment, arms=chosen, level=level
        )
    except (OffPolicyError, PolicyError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(table)
