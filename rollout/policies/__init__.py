"""Bandit policies behind one interface, found by name through the ``banditflow.policies``
entry-point group (the built-ins are registered there too, so a third-party package adds
a policy by declaring an entry point: no change here)."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import entry_points
from typing import Any

from contract import POLICY_ENTRY_POINT_GROUP
from rollout.policies.base import (
    REWARD_KINDS,
    ArmStats,
    InvalidArmsError,
    InvalidPolicyParamsError,
    Policy,
    PolicyError,
    RewardKind,
    UnknownPolicyError,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "REWARD_KINDS",
    "ArmStats",
    "InvalidArmsError",
    "InvalidPolicyParamsError",
    "Policy",
    "PolicyError",
    "RewardKind",
    "UnknownPolicyError",
    "available_policies",
    "get_policy",
]

ENTRY_POINT_GROUP = POLICY_ENTRY_POINT_GROUP
_log = logging.getLogger(__name__)

# The same table as pyproject.toml's entry points: a source tree whose install is stale
# (entry points not re-registered) still finds the built-ins.
_BUILTINS = {
    "thompson": "rollout.policies.thompson:ThompsonBernoulli",
    "thompson-gaussian": "rollout.policies.thompson:ThompsonGaussian",
    "ucb1": "rollout.policies.ucb:UCB1",
    "epsilon-greedy": "rollout.policies.epsilon:EpsilonGreedy",
    "fixed": "rollout.policies.fixed:FixedSplit",
    "contextual-thompson": "rollout.policies.contextual:ContextualThompson",
}

_REQUIRED_ATTRIBUTES = ("name", "params", "reward_kind", "reward_range", "discount")
_REQUIRED_METHODS = ("choose", "allocation")


def available_policies() -> dict[str, str]:
    """Return every registered policy name and its ``module:attribute`` target."""
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTINS and ep.value != _BUILTINS[ep.name]:
            # A plugin may add names, not silently replace a built-in the registry relies on.
            _log.warning("ignoring entry point %s=%s: a built-in has that name", ep.name, ep.value)
            continue
        found[ep.name] = ep.value
    return dict(sorted(found.items()))


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    import importlib

    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def get_policy(name: str, **params: Any) -> Policy:
    """Build the policy registered as ``name`` with keyword ``params``.

    Raises ``UnknownPolicyError`` (listing the known names) for an unknown name and
    ``InvalidPolicyParamsError`` (listing the accepted parameters) for bad parameters.
    """
    known = available_policies()
    if name not in known:
        raise UnknownPolicyError(
            f"unknown policy {name!r}; known policies: {', '.join(known)} "
            f"(third-party policies register under the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    try:
        factory = _load(known[name])
    except (ImportError, AttributeError) as exc:
        raise UnknownPolicyError(
            f"policy {name!r} is registered as {known[name]!r} but cannot be loaded: {exc}"
        ) from exc
    try:
        accepted = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        accepted = []
    unexpected = sorted(set(params) - set(accepted))
    if unexpected and accepted:
        raise InvalidPolicyParamsError(
            f"policy {name!r} got unexpected parameter(s) {unexpected}; "
            f"it accepts: {', '.join(accepted) or '(none)'}"
        )
    try:
        policy = factory(**params)
    except PolicyError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidPolicyParamsError(
            f"bad parameters for policy {name!r}: {exc}; it accepts: {', '.join(accepted)}"
        ) from exc
    missing = [a for a in _REQUIRED_ATTRIBUTES if not hasattr(policy, a)]
    missing += [m for m in _REQUIRED_METHODS if not callable(getattr(policy, m, None))]
    if missing:
        raise PolicyError(
            f"policy {name!r} ({known[name]}) does not implement the policy interface: "
            f"missing {missing}; subclass rollout.policies.base.Policy"
        )
    if policy.reward_kind not in REWARD_KINDS:
        raise PolicyError(
            f"policy {name!r} has reward_kind={policy.reward_kind!r}; "
            f"expected one of {REWARD_KINDS}"
        )
    return policy
