"""The Ax adapter against Ax's own loop: same problem, seeds and budget, side by side.

Ax's own loop is its ``Client`` as its tutorials drive it: default generation strategy and
acquisition optimizer, ``get_next_trials`` then ``complete_trial``. The adapter trims the
acquisition optimizer (tasks/optimizers/ax.py) to cost about a second a suggestion; this
test fails if that (or anything else in the adapter) makes it clearly worse.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tasks.optimizers import get_optimizer

BRANIN_SPACE: dict[str, dict[str, float | str]] = {
    "x1": {"type": "float", "low": -5.0, "high": 10.0},
    "x2": {"type": "float", "low": 0.0, "high": 15.0},
}
BRANIN_MIN = 0.397887
BUDGET, INIT, SEEDS = 16, 5, (0, 1, 2)


def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def adapter_best(seed: int, q: int) -> float:
    optimizer = get_optimizer(
        "ax", BRANIN_SPACE, {"y": "minimize"}, seed=seed, initialization_budget=INIT
    )
    told = 0
    while told < BUDGET:
        batch = optimizer.ask(min(q, BUDGET - told))
        assert batch, "the adapter returned no trial with nothing pending"
        for trial in batch:
            optimizer.tell(trial.id, {"y": branin(trial.params)})
            told += 1
    best = optimizer.best()
    assert best is not None
    return float(best.values["y"])


def ax_own_best(seed: int, q: int) -> float:
    """Ax's Client loop with its defaults (the same number of Sobol points)."""
    from ax import Client, RangeParameterConfig

    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(
                name=k, parameter_type="float", bounds=(float(v["low"]), float(v["high"]))
            )
            for k, v in BRANIN_SPACE.items()
        ]
    )
    client.configure_optimization(objective="-y")
    client.configure_generation_strategy(initialization_budget=INIT)
    told, best = 0, math.inf
    while told < BUDGET:
        trials = client.get_next_trials(max_trials=min(q, BUDGET - told))
        for index, params in trials.items():
            value = branin(params)  # type: ignore[arg-type]
            client.complete_trial(index, raw_data={"y": value})
            best, told = min(best, value), told + 1
    return best


@pytest.mark.slow
@pytest.mark.parametrize("q", [1, 4])
def test_ax_adapter_is_not_clearly_worse_than_axs_own_loop(q: int) -> None:
    """Mean best of 3 seeds after 16 trials (5 Sobol), adapter vs Ax's Client, at q.

    Measured (seeds 0-2; optimum 0.398): q=1 adapter 0.438, 0.536 (seeds 0, 1) against
    Ax's own loop 0.492, 0.469. q=4 (rounds of 4) adapter 0.529, 1.404, 1.370 (mean 1.10)
    against Ax's own 0.743, 1.18, 0.771 (mean 0.90). Before the adapter capped a batch at
    the Sobol points left, it handed out 8 of 5 and scored 1.97, 2.32, 3.91 (mean 2.73):
    this test failed on that. The margin (0.5 above Ax's own mean regret) is what
    "clearly worse" means here.
    """
    ours = [adapter_best(s, q) for s in SEEDS]
    theirs = [ax_own_best(s, q) for s in SEEDS]
    regret_ours = float(np.mean(ours)) - BRANIN_MIN
    regret_theirs = float(np.mean(theirs)) - BRANIN_MIN
    assert regret_ours <= regret_theirs + 0.5, (q, ours, theirs)
