"""Optimizer backends found by name: the built-ins, the ``banditflow.optimizers`` entry-point
group, and ``register_optimizer`` calls from user code, so a new backend edits nothing here."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from contract import OPTIMIZER_ENTRY_POINT_GROUP
from tasks.optimizers.base import ConfigurationError

if TYPE_CHECKING:
    from tasks.optimizers.base import Optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """A registered backend: ``target`` is a class or ``"module:Class"`` (loaded on use)."""

    name: str
    target: str | type[Optimizer]
    package: str | None = None  # the pip line when its library is missing
    # Known without importing the backend (hyperopt, ax take seconds); None: ask the class.
    multi_objective: bool | None = None

    def load(self) -> type[Optimizer]:
        if not isinstance(self.target, str):
            return self.target
        module_name, _, class_name = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            package = self.package or module_name.split(".")[0]
            raise ImportError(
                f"optimizer {self.name!r} needs {package}: pip install {package} ({exc})"
            ) from exc
        cls: type[Optimizer] = getattr(module, class_name)
        return cls

    def supports_multi_objective(self) -> bool:
        if self.multi_objective is not None:
            return self.multi_objective
        return bool(getattr(self.load(), "multi_objective", True))


# The same table a packaged entry point would give: a stale install still finds them.
_BUILTINS: dict[str, Backend] = {
    "random": Backend("random", "tasks.optimizers.random:RandomOptimizer", None, True),
    "hyperopt": Backend(
        "hyperopt", "tasks.optimizers.hyperopt:HyperoptOptimizer", "hyperopt", False
    ),
    "ax": Backend("ax", "tasks.optimizers.ax:AxOptimizer", "ax-platform", True),
}
_REGISTERED: dict[str, Backend] = {}


def register_optimizer(
    name: str,
    target: str | type[Optimizer],
    *,
    package: str | None = None,
    multi_objective: bool | None = None,
    replace: bool = False,
) -> Backend:
    """Register a backend under ``name`` (``replace=True`` to override one)."""
    if not name or not isinstance(name, str):
        raise ConfigurationError(f"an optimizer name must be a non-empty string, got {name!r}")
    if name in available_optimizers() and not replace:
        raise ConfigurationError(
            f"optimizer {name!r} is already registered; pass replace=True to override it"
        )
    backend = Backend(name, target, package, multi_objective)
    _REGISTERED[name] = backend
    return backend


def unregister_optimizer(name: str) -> None:
    """Remove a backend registered with ``register_optimizer`` (tests, temporary plugins)."""
    _REGISTERED.pop(name, None)


def available_optimizers() -> dict[str, Backend]:
    """Return every known backend by name: built-ins, entry points, then registrations."""
    found = dict(_BUILTINS)
    for ep in entry_points(group=OPTIMIZER_ENTRY_POINT_GROUP):
        if ep.name in _BUILTINS and ep.value != _BUILTINS[ep.name].target:
            log.warning("ignoring entry point %s=%s: a built-in has that name", ep.name, ep.value)
            continue
        found.setdefault(ep.name, Backend(ep.name, ep.value))
    found |= _REGISTERED
    return dict(sorted(found.items()))


def get_backend(name: str) -> Backend:
    """Return the backend ``name``; the error lists the known ones and how to add one."""
    known = available_optimizers()
    if name not in known:
        raise ConfigurationError(
            f"unknown optimizer {name!r}; choose from {sorted(known)} (add one with "
            f"tasks.optimizers.register_optimizer or the {OPTIMIZER_ENTRY_POINT_GROUP!r} "
            "entry-point group)"
        )
    return known[name]


def build_optimizer(name: str, space: Any, objectives: Any, seed: int, **options: Any) -> Optimizer:
    """Build backend ``name`` over ``space`` for ``objectives``."""
    cls = get_backend(name).load()
    return cls(space, objectives, seed=seed, **options)
