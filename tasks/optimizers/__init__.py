"""One ask/tell interface over Hyperopt (TPE), Ax (Bayesian optimization) and random search.

``import tasks.optimizers`` imports neither hyperopt nor ax: backends load on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from tasks.optimizers.base import (
    CapabilityError,
    ConfigurationError,
    MultiObjectiveError,
    Optimizer,
    OptimizerError,
    StateError,
    Trial,
    TrialAlreadyToldError,
    TrialResult,
    UnknownTrialError,
    load_optimizer,
)
from tasks.optimizers.space import PointError, SpaceError

# name -> "module:class"; a new backend is one line here (and one in the contract tests).
BACKENDS: dict[str, str] = {
    "random": "tasks.optimizers.random:RandomOptimizer",
    "hyperopt": "tasks.optimizers.hyperopt:HyperoptOptimizer",
    "ax": "tasks.optimizers.ax:AxOptimizer",
}


def get_optimizer(
    name: str,
    space: Mapping[str, Any],
    objectives: Mapping[str, str],
    seed: int = 0,
    **options: Any,
) -> Optimizer:
    """Build the optimizer ``name`` (``hyperopt``, ``ax`` or ``random``) over ``space``."""
    if name not in BACKENDS:
        raise ConfigurationError(f"unknown optimizer {name!r}; choose from {sorted(BACKENDS)}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = {"hyperopt": "hyperopt", "ax": "ax-platform"}.get(name, name)
        raise ImportError(
            f"optimizer {name!r} needs {package}: pip install {package} ({exc})"
        ) from exc
    cls: type[Optimizer] = getattr(module, class_name)
    return cls(space, objectives, seed=seed, **options)


__all__ = [
    "BACKENDS",
    "CapabilityError",
    "ConfigurationError",
    "MultiObjectiveError",
    "Optimizer",
    "OptimizerError",
    "PointError",
    "SpaceError",
    "StateError",
    "Trial",
    "TrialAlreadyToldError",
    "TrialResult",
    "UnknownTrialError",
    "get_optimizer",
    "load_optimizer",
]
