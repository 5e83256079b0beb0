"""The search space every backend shares: validated once, checked points, conditions."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

TYPES = ("float", "int", "categorical")


class SpaceError(ValueError):
    """The search space is invalid; the message names the parameter and what to fix."""


class PointError(ValueError):
    """A point (e.g. an enqueued one) does not fit the search space."""


@dataclass(frozen=True)
class Param:
    """One dimension: float/int with bounds (optionally log), or categorical choices."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    condition: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
        if self.condition:
            out["condition"] = {parent: list(values) for parent, values in self.condition}
        return out

    def index(self, value: Any) -> int:
        """Return the position of ``value`` among a categorical's choices."""
        for i, choice in enumerate(self.choices):
            if _same(choice, value):
                return i
        raise PointError(f"{self.name}={value!r} is not one of the choices {list(self.choices)}")

    def coerce(self, value: Any, *, clip: bool) -> Any:
        """Return ``value`` as this parameter's type; raise PointError when it does not fit."""
        if self.type == "categorical":
            for choice in self.choices:
                if _same(choice, value):
                    return choice
            raise PointError(
                f"{self.name}={value!r} is not one of the choices {list(self.choices)}"
            )
        assert self.low is not None and self.high is not None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PointError(f"{self.name}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise PointError(f"{self.name}={value!r} is not finite")
        if self.type == "int":
            if not clip and number != round(number):
                raise PointError(f"{self.name}={value!r} is not an integer")
            number = float(round(number))
        if clip:
            number = min(max(number, self.low), self.high)
        elif not self.low <= number <= self.high:
            raise PointError(f"{self.name}={value!r} is outside [{self.low}, {self.high}]")
        return int(number) if self.type == "int" else number


def _same(choice: Any, value: Any) -> bool:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(choice, bool) or isinstance(value, bool):
        # True == 1 in Python; a choice list [0, 1] and [False, True] must stay apart.
        return isinstance(choice, bool) and isinstance(value, bool) and choice == value
    try:
        return bool(choice == value)
    except (TypeError, ValueError):  # values that cannot be compared are not equal
        return False


class Space:
    """An ordered, validated search space (parents before the parameters they condition)."""

    def __init__(self, params: list[Param]) -> None:
        self.params = {p.name: p for p in params}

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params.values())

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Param:
        return self.params[name]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_dict() for p in self}

    def is_active(self, param: Param, point: Mapping[str, Any]) -> bool:
        """Return whether ``param`` is active given its parents' values in ``point``."""
        for parent, values in param.condition:
            if parent not in point or not any(_same(v, point[parent]) for v in values):
                return False
        return True

    def children(self, parent: str) -> list[Param]:
        return [p for p in self if any(name == parent for name, _ in p.condition)]

    def validate_point(self, point: Mapping[str, Any], *, clip: bool = False) -> dict[str, Any]:
        """Return ``point`` with exact types and only the active parameters.

        ``clip`` rounds and clips numbers into bounds (for a backend's own suggestions);
        without it, a value out of bounds raises ``PointError``.
        """
        unknown = sorted(set(point) - set(self.params))
        if unknown:
            raise PointError(f"unknown parameters {unknown}; the space has {sorted(self.params)}")
        out: dict[str, Any] = {}
        for param in self:  # parents come first, so conditions see their parents' values
            if not self.is_active(param, out):
                continue
            if param.name not in point:
                raise PointError(
                    f"parameter {param.name!r} is missing from the point {dict(point)}"
                )
            out[param.name] = param.coerce(point[param.name], clip=clip)
        return out

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a point uniformly (log-uniformly for log parameters), skipping inactive ones."""
        out: dict[str, Any] = {}
        for param in self:
            if not self.is_active(param, out):
                continue
            if param.type == "categorical":
                out[param.name] = param.choices[int(rng.integers(len(param.choices)))]
                continue
            assert param.low is not None and param.high is not None
            if param.type == "int":
                if param.log:  # floor of a log-uniform draw on [low, high + 1)
                    draw = np.exp(rng.uniform(math.log(param.low), math.log(param.high + 1)))
                    value = math.floor(float(draw))
                else:
                    value = int(rng.integers(int(param.low), int(param.high) + 1))
                out[param.name] = param.coerce(value, clip=True)
            elif param.log:
                draw = np.exp(rng.uniform(math.log(param.low), math.log(param.high)))
                out[param.name] = param.coerce(float(draw), clip=True)
            else:
                out[param.name] = param.coerce(float(rng.uniform(param.low, param.high)), clip=True)
        return out


def normalise_space(space: Mapping[str, Any]) -> Space:
    """Validate a YAML-shaped space (or ``ParamSpec`` objects); errors name the parameter."""
    if isinstance(space, Space):
        return space
    if not isinstance(space, Mapping) or not space:
        raise SpaceError(
            "the search space is empty: give at least one parameter, e.g. "
            "{'lr': {'type': 'float', 'low': 1e-4, 'high': 0.1, 'log': True}}"
        )
    params: dict[str, Param] = {}
    for name, raw in space.items():
        if hasattr(raw, "model_dump"):
            raw = raw.model_dump()
        if not isinstance(raw, Mapping):
            raise SpaceError(f"parameter {name!r}: expected a mapping with 'type', got {raw!r}")
        params[str(name)] = _parse_param(str(name), raw)
    for param in params.values():
        for parent, values in param.condition:
            if parent not in params:
                raise SpaceError(
                    f"parameter {param.name!r}: its condition names {parent!r}, "
                    f"which is not in the space {sorted(params)}"
                )
            parent_param = params[parent]
            if parent_param.type != "categorical":
                raise SpaceError(
                    f"parameter {param.name!r}: its condition's parent {parent!r} must be "
                    f"categorical, got type {parent_param.type!r}"
                )
            bad = [v for v in values if not any(_same(c, v) for c in parent_param.choices)]
            if bad:
                raise SpaceError(
                    f"parameter {param.name!r}: condition values {bad} are not choices of "
                    f"{parent!r} {list(parent_param.choices)}"
                )
    return Space(_topological(params))


def _parse_param(name: str, raw: Mapping[str, Any]) -> Param:
    kind = raw.get("type")
    if kind not in TYPES:
        raise SpaceError(f"parameter {name!r}: type must be one of {TYPES}, got {kind!r}")
    condition_raw = raw.get("condition") or {}
    if not isinstance(condition_raw, Mapping):
        raise SpaceError(
            f"parameter {name!r}: condition must map a parent to its values, "
            f"e.g. {{'penalty': ['elasticnet']}}, got {condition_raw!r}"
        )
    condition: list[tuple[str, tuple[Any, ...]]] = []
    for parent, values in condition_raw.items():
        if not isinstance(values, list | tuple) or not values:
            raise SpaceError(
                f"parameter {name!r}: condition {parent!r} needs a non-empty list of values, "
                f"got {values!r}"
            )
        condition.append((str(parent), tuple(values)))
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise SpaceError(f"parameter {name!r}: a categorical needs a non-empty 'choices' list")
        if len({repr(c) for c in choices}) != len(choices):
            raise SpaceError(f"parameter {name!r}: 'choices' has duplicates: {list(choices)}")
        return Param(name, "categorical", choices=tuple(choices), condition=tuple(condition))
    low, high = raw.get("low"), raw.get("high")
    if low is None or high is None:
        raise SpaceError(f"parameter {name!r}: a {kind} parameter needs 'low' and 'high'")
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise SpaceError(f"parameter {name!r}: 'low' and 'high' must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpaceError(f"parameter {name!r}: 'low' must be below 'high', got {low=}, {high=}")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise SpaceError(f"parameter {name!r}: a log-scale parameter needs low > 0, got {low=}")
    if kind == "int" and (low != round(low) or high != round(high)):
        raise SpaceError(f"parameter {name!r}: int bounds must be integers, got {low=}, {high=}")
    return Param(name, str(kind), low=low, high=high, log=log, condition=tuple(condition))


def _topological(params: dict[str, Param]) -> list[Param]:
    ordered: list[Param] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise SpaceError(f"conditions form a cycle: {' -> '.join((*trail, name))}")
        state[name] = "visiting"
        for parent, _ in params[name].condition:
            visit(parent, (*trail, name))
        state[name] = "done"
        ordered.append(params[name])

    for name in params:
        visit(name, ())
    return ordered
