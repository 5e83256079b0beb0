"""The store's pair baselines: where each (challenger, champion) comparison starts."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, or_, select

from rollout import upserts
from rollout.store_schema import baselines


class BaselineCounters:
    """``rollout_baselines`` reads and writes; ``Store`` provides the I/O."""

    dialect: str

    def _write(self, work: Any, *, durable: bool = True) -> Any:
        raise NotImplementedError

    def pair_baselines(
        self, champion: str, proposed: Mapping[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Insert each challenger's baseline against ``champion`` unless one is stored;
        return the stored ones (the first writer's, on every replica)."""
        if not proposed:
            return {}
        now = time.time()
        rows = [
            {"challenger": ch, "champion": champion, "sums": json.dumps(sums), "created_at": now}
            for ch, sums in sorted(proposed.items())
        ]

        def work(conn: Connection) -> dict[str, dict[str, Any]]:
            keys = ("challenger", "champion")
            conn.execute(upserts.insert_ignoring(self.dialect, baselines, keys), rows)
            stored = conn.execute(
                select(baselines.c.challenger, baselines.c.sums).where(
                    baselines.c.champion == champion, baselines.c.challenger.in_(list(proposed))
                )
            )
            return {str(ch): json.loads(sums) for ch, sums in stored}

        return dict(self._write(work))

    def forget_baselines(
        self, *, challenger: str | None = None, champion: str | None = None
    ) -> None:
        """Drop the pairs of a challenger that left, or of a champion that starts a new reign
        (its earlier pairs covered another period): they start afresh when next seen."""
        conds = [baselines.c.challenger == challenger] if challenger is not None else []
        conds += [baselines.c.champion == champion] if champion is not None else []
        if conds:
            self._write(lambda conn: conn.execute(delete(baselines).where(or_(*conds))))
