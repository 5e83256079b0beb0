"""One ask/tell interface over Hyperopt (TPE), Ax (Bayesian optimization), random search and
any backend registered by name (``register_optimizer`` or the entry-point group).

``import tasks.optimizers`` imports neither hyperopt nor ax: backends load on first use.
"""

from __future__ import annotations

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
from tasks.optimizers.registry import (
    Backend,
    available_optimizers,
    build_optimizer,
    get_backend,
    register_optimizer,
    unregister_optimizer,
)
from tasks.optimizers.space import PointError, SpaceError


def get_optimizer(
    name: str,
    space: Mapping[str, Any],
    objectives: Mapping[str, str],
    seed: int = 0,
    **options: Any,
) -> Optimizer:
    """Build the registered optimizer ``name`` (``hyperopt``, ``ax``, ``random``, ...)."""
    return build_optimizer(name, space, objectives, seed, **options)


__all__ = [
    "Backend",
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
    "available_optimizers",
    "get_backend",
    "register_optimizer",
    "unregister_optimizer",
    "get_optimizer",
    "load_optimizer",
]
