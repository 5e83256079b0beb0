"""Start and stop the rollout service: schema, secret, state, models, writer, background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from rollout import baselines, cadence, decisions
from rollout.tokens import RequestTokens
from rollout.writer import GroupCommitWriter

if TYPE_CHECKING:
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)


async def start(svc: RolloutService) -> None:
    """Create the schema, load models and state, and start the writer and background loops."""
    # The group-commit thread releases the GIL at every SQL statement; with the default
    # 5 ms switch interval a busy event loop makes it wait ~5 ms to get it back each
    # time, so one commit took ~100 ms under load. 1 ms keeps commits short.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    await asyncio.to_thread(_start_blocking, svc)
    svc.writer = GroupCommitWriter(
        svc.store,
        discount=lambda: svc.policy.discount,
        max_batch=svc.settings.writer_max_batch,
        health=svc.guardrails,  # predictions made/failed/latency per arm go with each commit
    )
    svc.writer.start()
    svc.lookup.start_opening()  # Feast opens in a thread now, not on the first request
    if svc.settings.background:
        s = svc.settings
        # At outcome counts (rollout.cadence) the feedback path refreshes and decides instead.
        if s.refresh_every_outcomes is None:
            every(svc, s.stats_refresh_ms / 1000.0, svc.refresh_state)
        every(svc, s.alias_poll_s, lambda: cadence.exclusive(svc, svc.refresh_models))
        every(svc, s.expiry_interval_s, svc.expire_decisions)
        if s.decide_every_outcomes is None:
            every(svc, s.decision_interval_s, svc.run_decisions)
    svc.started = True


def _start_blocking(svc: RolloutService) -> None:
    svc.rule = decisions.decision_rule(svc)  # invalid decision_params fail here, at start-up
    svc.store.create_schema()
    secret = svc.settings.token_secret or svc.store.get_or_create_secret()
    svc.tokens = RequestTokens(secret)
    svc.load_state()
    cadence.begin(svc)
    svc.pool.refresh(force=True)
    svc.reallocate()
    baselines.notice(svc)  # each challenger's comparison with the champion starts here


async def stop(svc: RolloutService) -> None:
    """Cancel the loops, finish background work, drain the writer, close the store."""
    for task in svc.tasks:
        task.cancel()
    for task in svc.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if svc.background_tasks:
        await asyncio.gather(*svc.background_tasks, return_exceptions=True)
    if svc.writer is not None:
        await svc.writer.close()
    svc.store.dispose()


def every(svc: RolloutService, period: float, job: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``job`` every ``period`` seconds until stop; a failure is logged, the loop goes on."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("background job %s failed", getattr(job, "__name__", job))

    svc.tasks.append(asyncio.get_running_loop().create_task(loop()))
