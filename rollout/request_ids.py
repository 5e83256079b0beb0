"""Client-chosen request ids: one decision per id, and their feedback window.

Signed ids (rollout.tokens) carry their arm and time. A client's own id does not: its first
decision is looked up (this process's recent ids first, then the store), so a reused id gets
the arm it had and no second decision, and late feedback for it is refused like any other.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from sqlalchemy import select

from rollout.errors import StoreUnavailable
from rollout.schemas import PredictRequest
from rollout.store import Store
from rollout.store_schema import decisions

_CHUNK = 500  # ids per IN (...) query


def stored_decisions(store: Store, ids: Iterable[str]) -> dict[str, tuple[str, float]]:
    """Return ``{request_id: (arm, created_at)}`` of the stored decisions among ``ids``."""
    wanted = list(dict.fromkeys(ids))
    found: dict[str, tuple[str, float]] = {}
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            part = wanted[start : start + _CHUNK]
            query = select(decisions.c.request_id, decisions.c.arm, decisions.c.created_at)
            for rid, arm, created in conn.execute(query.where(decisions.c.request_id.in_(part))):
                found[str(rid)] = (str(arm), float(created))
    return found


class ClientIds:
    """The decisions of recent client-chosen ids in this process (an LRU, capped in size)."""

    def __init__(self, store: Store, *, cache_size: int) -> None:
        self.store = store
        self.cache_size = cache_size
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def known(self, ids: Iterable[str]) -> dict[str, tuple[str, float]]:
        """Return ``{id: (arm, created_at)}`` for ids that already have a decision (blocking)."""
        ids = list(ids)
        found = {rid: self._seen[rid] for rid in ids if rid in self._seen}
        missing = [rid for rid in ids if rid not in found]
        if missing:
            found.update(stored_decisions(self.store, missing))
        return found

    async def reuse(
        self, reqs: Sequence[PredictRequest], arms: list[str], serving: list[str], anchor: str
    ) -> set[int]:
        """Give a reused client request id the arm of its first decision; return those rows."""
        ids = [r.request_id for r in reqs if r.request_id is not None]
        if not ids:
            return set()
        try:
            known = await asyncio.to_thread(self.known, ids)
        except Exception as exc:
            raise StoreUnavailable(f"cannot read the state store ({type(exc).__name__})") from exc
        reused: set[int] = set()
        first: dict[str, int] = {}
        for i, req in enumerate(reqs):
            rid = req.request_id
            if rid is None:
                continue
            if rid in known:
                arms[i] = known[rid][0] if known[rid][0] in serving else anchor
                reused.add(i)
            elif rid in first:
                arms[i] = arms[first[rid]]
                reused.add(i)
            else:
                first[rid] = i
        return reused

    def remember(self, request_id: str, arm: str, at: float) -> None:
        self._seen[request_id] = (arm, at)
        self._seen.move_to_end(request_id)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)
