"""The policy's restart at a detected change: every arm's discounted sums start afresh.

A change detector that watches the champion (``rollout.watch.RewardWatch``) says its world
changed; what every arm earned before then describes the old one. Measured in the closed
loop (seed 0, quick world): with a per-outcome discount of 0.9998, the stale champion's
posterior still held about 750 outcomes' worth of its pre-drift rate (+0.029 a visit)
when the retrained challenger joined, so it kept 55 % of that day's visits at a loss.
Restarting a bandit's statistics at a detected change is the change-detection bandit's
rule (Mellor & Shapiro 2013; Cao et al. 2019, M-UCB; Besson et al. 2022, GLR-klUCB).
Only the policy's sums restart: the plain sums since an arm joined, which the decision
rule and the champion watch read, are kept, so their stated error rates still hold. The
contextual policy routes on plain sums (per segment, and pooled for its prior), so the
restart does not reach it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from rollout.store_schema import arm_stats


class PolicyRestart:
    """Zero the policy's (discounted) sums of every arm; ``Store`` provides the I/O."""

    is_sqlite: bool

    def _write(self, work: Any, *, durable: bool = True) -> Any:
        raise NotImplementedError

    def restart_policy_sums(self) -> int:
        """Set every arm's ``pulls``, ``reward_sum`` and ``reward_sq_sum`` to 0 in one
        transaction, beside the writer's batches; return the arms restarted."""

        def work(conn: Connection) -> int:
            if not self.is_sqlite:  # the rows in the writer's lock order: no deadlock with it
                conn.execute(select(arm_stats.c.arm).order_by(arm_stats.c.arm).with_for_update())
            done = conn.execute(
                update(arm_stats).values(pulls=0.0, reward_sum=0.0, reward_sq_sum=0.0)
            )
            return int(done.rowcount or 0)

        return int(self._write(work))
