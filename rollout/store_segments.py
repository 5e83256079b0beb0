"""Per-segment counters in the store: what contextual routing and the segment report read.

Plain sums per (segment, arm) since the arm joined, moved by the same atomic SQL upserts
as the arm counters; a decision's segment is logged with it, and its reward is counted
under that segment when it arrives.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, select

from rollout import upserts
from rollout.store_schema import DecisionRow, decisions, segment_stats

_SEGMENT_COUNTERS = ("served", "outcomes", "reward_sum", "reward_sq_sum")
_RECHECK_S = 5.0


class SegmentCounters:
    """Per-segment upserts and reads; ``Store`` provides I/O."""

    dialect: str  # rollout.upserts' key, set by ``Store``

    def _read(self) -> Connection:
        raise NotImplementedError

    def _insert(self, table: Table) -> Any:
        raise NotImplementedError

    _segments_seen = False  # once a segment is stored, every feedback batch looks them up
    _segments_checked = -math.inf

    def _segments_in_use(self, conn: Connection) -> bool:
        """Return whether any decision carries a segment (re-checked every few seconds while
        none does, so feedback without segments skips the lookup)."""
        now = time.monotonic()
        if not self._segments_seen and now - self._segments_checked > _RECHECK_S:
            self._segments_checked = now
            found = conn.execute(select(segment_stats.c.segment).limit(1)).first()
            self._segments_seen = found is not None
        return self._segments_seen

    def _count_segment_decisions(self, conn: Connection, rows: Sequence[DecisionRow]) -> None:
        served: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
        for d in rows:
            if d.segment is not None:
                served[(d.segment, d.arm)][0] += 1
        if served:
            self._segments_seen = True
        self._upsert_segments(conn, served)

    def _count_segment_rewards(
        self, conn: Connection, rewards: Sequence[tuple[str, str, float]]
    ) -> None:
        """Count ``(request_id, arm, reward)`` under each decision's segment (if it had one)."""
        if not rewards or not self._segments_in_use(conn):
            return
        ids = [rid for rid, _, _ in rewards]
        rows = conn.execute(
            select(decisions.c.request_id, decisions.c.segment).where(
                decisions.c.request_id.in_(ids), decisions.c.segment.is_not(None)
            )
        )
        found = {str(rid): str(segment) for rid, segment in rows}
        if not found:
            return
        inc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
        for rid, arm, reward in rewards:
            segment = found.get(rid)
            if segment is not None:
                cell = inc[(segment, arm)]
                cell[1] += 1
                cell[2] += reward
                cell[3] += reward * reward
        self._upsert_segments(conn, inc)

    def _upsert_segments(
        self, conn: Connection, by_cell: dict[tuple[str, str], list[float]]
    ) -> None:
        if not by_cell:
            return
        rows = [
            {"segment": s, "arm": a, **dict(zip(_SEGMENT_COUNTERS, v, strict=True))}
            for (s, a), v in sorted(by_cell.items())  # one lock order for every writer
        ]
        keys = ("segment", "arm")
        conn.execute(upserts.adding(self.dialect, segment_stats, keys, _SEGMENT_COUNTERS), rows)

    def read_segment_stats(self) -> dict[str, dict[str, tuple[int, int, float, float]]]:
        """Return ``{segment: {arm: (served, outcomes, reward_sum, reward_sq_sum)}}``."""
        with self._read() as conn:
            rows = conn.execute(select(segment_stats)).mappings().all()
        out: dict[str, dict[str, tuple[int, int, float, float]]] = defaultdict(dict)
        for r in rows:
            out[r["segment"]][r["arm"]] = (
                int(r["served"]),
                int(r["outcomes"]),
                float(r["reward_sum"]),
                float(r["reward_sq_sum"]),
            )
        return dict(out)
