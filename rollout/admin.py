"""Admin actions: registry writes through the contract, and the runtime config in the store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

import contract
from rollout import baselines
from rollout.errors import BadInput, Conflict, UnknownArm
from rollout.events import emit
from rollout.policies import PolicyError, get_policy
from rollout.pool import SHADOW, arm_name, version_of
from rollout.schemas import jsonable

if TYPE_CHECKING:
    from rollout.service import RolloutService


def _client(svc: RolloutService) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(
        tracking_uri=svc.settings.tracking_uri, registry_uri=svc.settings.registry_uri
    )


def _version_exists(svc: RolloutService, version: str) -> None:
    try:
        _client(svc).get_model_version(svc.settings.model_name, version)
    except Exception as exc:
        raise UnknownArm(f"model {svc.settings.model_name!r} has no version {version}") from exc


async def add_arm(svc: RolloutService, version: str, *, shadow: bool) -> dict[str, Any]:
    """Add a version as the next challenger (live traffic) or as a shadow arm."""
    version = version_of(version)
    arm = arm_name(version)
    entry = svc.pool.snapshot.arms.get(arm)
    if entry is not None and entry.role != SHADOW:
        if not shadow:
            raise Conflict(f"{arm} is already in the rollout as {entry.role}")
        raise Conflict(f"{arm} takes live traffic; retire it before shadowing it")

    def work() -> dict[str, Any]:
        _version_exists(svc, version)
        config = svc.store.read_config()
        pulled = {k: v for k, v in config.get("pulled", {}).items() if k != arm}
        svc.store.set_config("pulled", pulled)
        shadows = [str(v) for v in config.get("shadow", []) if str(v) != version]
        if shadow:
            svc.store.set_config("shadow", [*shadows, version])
            return {"arm": arm, "role": SHADOW}
        svc.store.set_config("shadow", shadows)
        name = svc.settings.model_name
        alias = contract.add_challenger(_client(svc), name, version, "added through the rollout")
        return {"arm": arm, "role": alias}

    result = await asyncio.to_thread(work)
    await svc.reload()
    return result


async def retire_arm(svc: RolloutService, arm: str, reason: str) -> dict[str, Any]:
    """Remove a challenger (its alias) or a shadow arm from the rollout."""
    version = version_of(arm)
    arm = arm_name(version)
    snap = svc.pool.snapshot
    entry = snap.arms.get(arm)
    if entry is None:
        raise UnknownArm(f"{arm} is not in the rollout; arms: {', '.join(sorted(snap.arms))}")
    if entry.role == contract.CHAMPION:
        raise Conflict(f"{arm} is the champion: promote another version or roll back first")

    def work() -> None:
        if entry.role == SHADOW:
            config = svc.store.read_config()
            shadows = [str(v) for v in config.get("shadow", []) if str(v) != version]
            svc.store.set_config("shadow", shadows)
            return
        contract.retire_challenger(_client(svc), svc.settings.model_name, version, reason)
        baselines.forget(svc, challenger=arm)  # if it comes back, it starts afresh

    await asyncio.to_thread(work)
    await svc.reload()
    return {"arm": arm, "retired": True, "reason": reason}


WATCH_KEY = "champion_watch"  # runtime config: the promotion being watched (rollout.decisions)


async def promote(svc: RolloutService, arm: str, reason: str) -> dict[str, Any]:
    """Make ``arm``'s version the champion and emit the promotion event.

    The replaced champion stays in rotation on probation (a challenger alias) so the new
    one is watched against it on fresh traffic, and is there to fall back to; the watch
    starts from both arms' plain sums now (rollout.decisions: a concurrent comparison).
    """
    version = version_of(arm)
    await asyncio.to_thread(_version_exists, svc, version)
    stats = await asyncio.to_thread(svc.store.read_stats)
    now = stats.get(arm_name(version))
    baseline = [now.outcomes, now.total_reward_sum, now.total_reward_sq_sum] if now else [0, 0, 0]

    def work() -> dict[str, Any]:
        client, name = _client(svc), svc.settings.model_name
        result = contract.promote(client, name, version, reason)
        previous = result.get("previous")
        watch: dict[str, Any] = {}
        if previous is not None:
            contract.add_challenger(
                client, name, previous, f"probation: watched against version {version}"
            )
            was = stats.get(arm_name(previous))  # its sums now: the watch compares the period
            watch = {
                "champion": arm_name(version),
                "replaced": arm_name(previous),
                "baseline": baseline,
                "replaced_baseline": (
                    [was.outcomes, was.total_reward_sum, was.total_reward_sq_sum]
                    if was
                    else [0, 0, 0]
                ),
            }
        svc.store.set_config(WATCH_KEY, watch)
        baselines.forget(svc, champion=arm_name(version))  # a new reign: new pairs
        return result

    result = await asyncio.to_thread(work)
    await svc.reload()
    await emit(svc.settings, svc.metrics, contract.EVENT_ROLLOUT_PROMOTED, version, reason, result)
    return result


async def rollback(svc: RolloutService, reason: str) -> dict[str, Any]:
    """Give the champion alias back to the previous champion and emit the rollback event."""
    try:
        result = await asyncio.to_thread(
            contract.rollback, _client(svc), svc.settings.model_name, reason
        )
    except contract.NoChampionToRestore as exc:
        raise Conflict(str(exc)) from exc
    await asyncio.to_thread(svc.store.set_config, WATCH_KEY, {})
    champion = result["champion"]
    await asyncio.to_thread(lambda: baselines.forget(svc, champion=arm_name(str(champion))))
    await svc.reload()
    await emit(
        svc.settings, svc.metrics, contract.EVENT_ROLLOUT_ROLLED_BACK, champion, reason, result
    )
    return result


async def end_probation(svc: RolloutService, arm: str, reason: str) -> dict[str, Any]:
    """End a promotion's watch: the replaced champion leaves rotation (keeping its
    ``previous-champion`` alias, to roll back to)."""
    await asyncio.to_thread(svc.store.set_config, WATCH_KEY, {})
    version = version_of(arm)
    await asyncio.to_thread(
        contract.retire_challenger, _client(svc), svc.settings.model_name, version, reason
    )
    await svc.reload()
    return {"arm": arm, "probation": "over", "reason": reason}


async def set_policy(svc: RolloutService, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Change the policy (stored, so every replica picks it up)."""
    try:
        policy = get_policy(name, **params)
        arms = svc.serving_arms(svc.pool.snapshot)
        if arms:  # a policy that cannot split the arms serving now would fall back silently
            policy.allocation(svc.arm_stats(arms), np.random.default_rng(0))
    except PolicyError as exc:
        raise BadInput(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise BadInput(f"invalid parameters for policy {name!r} ({type(exc).__name__})") from exc
    stored = {"name": name, "params": params}
    await asyncio.to_thread(svc.store.set_config, "policy", stored)
    svc.use_policy(policy, stored)
    return {"policy": name, "params": jsonable(policy.params)}


async def set_frozen(svc: RolloutService, frozen: bool) -> dict[str, Any]:
    """Route everything to the champion (or resume the bandit)."""
    await asyncio.to_thread(svc.store.set_config, "frozen", frozen)
    svc.frozen = frozen
    svc.reallocate()
    return {"frozen": frozen}


async def restore_arm(svc: RolloutService, arm: str) -> dict[str, Any]:
    """Put a pulled arm back into rotation."""
    arm = arm_name(version_of(arm))
    if arm not in svc.pool.pulled:
        raise Conflict(f"{arm} is not out of rotation")

    def work() -> None:
        config = svc.store.read_config()
        pulled = {k: v for k, v in config.get("pulled", {}).items() if k != arm}
        svc.store.set_config("pulled", pulled)

    await asyncio.to_thread(work)
    svc.guardrails.forget(arm)
    svc.metrics.out_of_rotation.labels(arm).set(0)
    await svc.reload()
    return {"arm": arm, "in_rotation": True}
