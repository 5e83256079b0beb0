"""Sticky assignment: a unit keeps its arm while the arm set holds; new units follow the split.

A unit hashes to a fixed point in [0, 1) per arm set; the allocation cuts [0, 1) into one
slice per arm, so new units follow the policy without returning units bending it (the
Flagger #1532 bug). The first assignment is stored (first writer wins), so replicas agree.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from sqlalchemy import delete

from rollout.errors import StoreUnavailable
from rollout.store import Store
from rollout.store_schema import units


def unit_point(unit_id: str, fingerprint: str) -> float:
    """Map a unit to a fixed point in [0, 1) for this arm set (same in every process)."""
    digest = hashlib.sha256(f"{fingerprint}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_set_fingerprint(arms: Sequence[str]) -> str:
    """Identify an arm set: sticky assignments hold while it is unchanged."""
    return hashlib.sha256(",".join(sorted(arms)).encode()).hexdigest()[:16]


def arm_at(point: float, allocation: Mapping[str, float]) -> str:
    """Return the arm whose slice of [0, 1) holds ``point`` (slices in arm-name order)."""
    arms = sorted(allocation)
    total = sum(allocation[a] for a in arms)
    if total <= 0:
        return arms[0]
    edge = 0.0
    for arm in arms:
        edge += allocation[arm] / total
        if point < edge:
            return arm
    return arms[-1]


class StickyUnits:
    """Same unit, same arm: an in-memory LRU of the stored assignments, capped in size."""

    def __init__(self, store: Store, *, cache_size: int) -> None:
        self.store = store
        self.cache_size = cache_size
        self._units: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def arm_for(
        self, unit_id: str, arms: list[str], allocation: Mapping[str, float], fallback: str
    ) -> str:
        """Return the unit's arm among ``arms`` (``fallback`` if its stored arm left)."""
        fingerprint = arm_set_fingerprint(arms)
        key = (unit_id, fingerprint)
        arm = self._units.get(key)
        if arm is None:
            shares = {a: allocation.get(a, 0.0) for a in arms}
            if sum(shares.values()) <= 0:
                shares = dict.fromkeys(arms, 1.0)
            chosen = arm_at(unit_point(unit_id, fingerprint), shares)
            share = shares[chosen] / sum(shares.values())  # P(a new unit lands in its slice)
            try:
                arm = await asyncio.to_thread(
                    self._stored_or_assign, unit_id, fingerprint, chosen, share
                )
            except Exception as exc:
                raise StoreUnavailable(
                    f"cannot reach the state store for sticky units ({type(exc).__name__})"
                ) from exc
            self._units[key] = arm
            if len(self._units) > self.cache_size:
                self._units.popitem(last=False)
        else:
            self._units.move_to_end(key)
        return arm if arm in arms else fallback

    def _stored_or_assign(self, unit_id: str, fingerprint: str, chosen: str, share: float) -> str:
        arm = self.store.unit_arm(unit_id, fingerprint)
        if arm is None:
            # The first writer wins, so replicas agree even when they race.
            arm = self.store.assign_unit(unit_id, fingerprint, chosen, share)
        return arm

    def expire(self, before: float) -> int:
        """Forget stored assignments made before ``before`` (the table stays bounded)."""
        with self.store.engine.begin() as conn:
            deleted = conn.execute(delete(units).where(units.c.created_at < before)).rowcount
        self._units.clear()  # the cache may hold some of them; it refills from the store
        return int(deleted or 0)

    def __len__(self) -> int:
        return len(self._units)
