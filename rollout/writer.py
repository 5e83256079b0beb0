"""The group-commit writer: decisions, shadow rows and feedback in one transaction per batch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rollout.store import DecisionRow, FeedbackRow, ShadowRow, Store

_log = logging.getLogger(__name__)
FeedbackStatus = tuple[str, str | None]


class GroupCommitWriter:
    """Write decisions, shadow rows and feedback in batches, one transaction per batch.

    Feedback futures resolve only after their transaction committed, so an acknowledged
    feedback is durable; everything queued while a commit runs goes into the next one.
    """

    def __init__(
        self,
        store: Store,
        *,
        discount: Callable[[], float | None],
        max_batch: int,
        linger_s: float = 0.05,
        health: Any = None,
    ) -> None:
        self.store = store
        # Predictions' counts per arm (rollout.guardrails.Guardrails: take/restore/unstored),
        # committed with each batch.
        self._health = health
        self._discount = discount  # a callable returning the policy's discount now
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._decisions: list[DecisionRow] = []
        self._shadows: list[ShadowRow] = []
        self._feedback: list[tuple[FeedbackRow, asyncio.Future[FeedbackStatus]]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._idle = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._committing = False
        self.commits = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add_decision(self, row: DecisionRow) -> None:
        self._decisions.append(row)
        self._idle.clear()
        self._wake.set()

    def add_shadow(self, row: ShadowRow) -> None:
        self._shadows.append(row)
        self._idle.clear()
        self._wake.set()

    async def submit_feedback(self, rows: Sequence[FeedbackRow]) -> list[FeedbackStatus]:
        """Queue feedback and wait until it is committed; return (status, arm) per row."""
        loop = asyncio.get_running_loop()
        futures = []
        for row in rows:
            fut: asyncio.Future[FeedbackStatus] = loop.create_future()
            self._feedback.append((row, fut))
            futures.append(fut)
        self._idle.clear()
        self._wake.set()
        self._urgent.set()
        if len(futures) == 1:  # one feedback per call, the common case: no gather task
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    @property
    def pending(self) -> bool:
        unstored = self._health is not None and self._health.unstored
        return bool(
            self._decisions or self._shadows or self._feedback or self._committing or unstored
        )

    async def flush(self) -> None:
        """Commit everything queued so far (decisions included); wait on the writer, not a clock."""
        while self.pending:
            self._idle.clear()
            self._urgent.set()
            self._wake.set()
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self.pending:
                self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            if not self._feedback and not self._closing:
                # Only decisions: linger so that they go in a few large transactions.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.linger_s)
            self._urgent.clear()
            decisions, self._decisions = self._decisions, []
            shadows, self._shadows = self._shadows, []
            batch, self._feedback = (
                self._feedback[: self.max_batch],
                self._feedback[self.max_batch :],
            )
            if self._feedback:
                self._wake.set()
            health = self._health.take() if self._health is not None else {}
            if not (decisions or shadows or batch or health):
                if self._closing:
                    return
                continue
            self._committing = True  # still pending for flush() until the commit is done
            try:
                committed = await self._commit(decisions, shadows, batch, health)
            finally:
                self._committing = False
            if not committed:
                continue
            if self._closing and not self.pending:
                return

    async def _commit(
        self,
        decisions: list[DecisionRow],
        shadows: list[ShadowRow],
        batch: list[tuple[FeedbackRow, asyncio.Future[FeedbackStatus]]],
        health: Any = None,
    ) -> bool:
        rows = [row for row, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            statuses = await loop.run_in_executor(
                self._executor,
                functools.partial(
                    self.store.apply_batch,
                    decisions,
                    rows,
                    shadows,
                    discount=self._discount(),
                    health=health,
                ),
            )
        except Exception as exc:
            self.failures += 1
            _log.exception("group commit of %d feedback failed", len(batch))
            # Decisions are retried with the next batch; feedback callers get the error.
            self._decisions[:0] = decisions[-100_000:]
            if health:
                self._health.restore(health)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            self._idle.set()  # a flush waiting on a failing store returns; it does not spin
            await asyncio.sleep(0.1)  # backoff before the retry, not a clock
            self._wake.set()
            return False
        self.commits += 1
        for (_, fut), status in zip(batch, statuses, strict=True):
            if not fut.done():
                fut.set_result(status)
        return True

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)
        self._executor.shutdown(wait=True)
