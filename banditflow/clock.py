"""The world's one simulated clock, and the lock-step wait at each simulated day's end.

Every delay of the demo's world (a visit's feedback, a label's arrival, the day's feature
update) is a moment on :class:`SimClock`; nothing in the world reads the wall clock. The
driver advances the clock; at a configurable ``rate`` (simulated seconds per wall second)
it also paces itself, and in lock-step mode it stops at each simulated day's end until the
work that day's events started has finished (:class:`LockStep`, which asks
:class:`Probe` objects, ``banditflow/probes.py``: Prefect's flow runs, the events a
deployment trigger answers whose run does not exist yet, the rollout service's pending
decisions, the registry's challengers not yet serving). A loaded machine then changes how long a day
takes, not what happens in it. The wall seconds of each wait are still measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

DAY = timedelta(days=1)

Sleep = Callable[[float], Awaitable[None]]


class LockStepTimeout(RuntimeError):
    """The work a simulated day started did not finish in time; the message names it."""


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class SimClock:
    """Simulated time that moves only when the driver moves it.

    ``rate``: simulated seconds per wall second to keep pace with (None: as fast as the
    work allows). ``wall`` and ``sleep`` are injectable, so a test runs it instantly.
    """

    start: datetime
    rate: float | None = None
    wall: Callable[[], float] = time.monotonic
    sleep: Sleep = asyncio.sleep
    now: datetime = field(init=False)
    _wall_start: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 simulated s per wall s, got {self.rate=}")
        self.start = as_utc(self.start)
        self.now = self.start
        self._wall_start = self.wall()

    @property
    def day(self) -> int:
        """Return the simulated day number (0 on the first day)."""
        return int((self.now - self.start) // DAY)

    def day_start(self, day: int) -> datetime:
        return self.start + day * DAY

    def days_since(self, moment: datetime) -> float:
        """Return the simulated days from ``moment`` to now (negative before it)."""
        return (self.now - as_utc(moment)) / DAY

    def repace(self) -> None:
        """Restart the pace from now (after a lock-step wait, so the wait is not caught up)."""
        self._wall_start = self.wall() - self._elapsed_s() / self.rate if self.rate else 0.0

    def _elapsed_s(self) -> float:
        return (self.now - self.start).total_seconds()

    async def advance_to(self, moment: datetime) -> None:
        """Move the clock to ``moment``; at a rate, first wait until the wall catches up."""
        moment = as_utc(moment)
        if moment < self.now:
            raise ValueError(f"the clock cannot go back: now {self.now}, asked {moment}")
        self.now = moment
        if self.rate:
            due = self._wall_start + self._elapsed_s() / self.rate
            ahead = due - self.wall()
            if ahead > 0:
                await self.sleep(ahead)


class Probe(Protocol):
    """Something that knows whether the system still has work in flight."""

    name: str

    async def pending(self) -> list[str]:
        """Return a short description of each unfinished piece of work (empty: idle)."""
        ...


@dataclass
class DayWait:
    """What one lock-step wait saw: wall seconds, polls, and the work it waited for."""

    day: int
    wall_s: float
    polls: int
    waited_for: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # flow runs that failed meanwhile


@dataclass
class LockStep:
    """Wait until every probe is idle on ``quiet_polls`` polls in a row.

    Several quiet polls in a row, not one: an event a flow emits as it finishes starts
    the next run a moment later (a trigger's latency), and a single quiet poll in
    between would end the day early. ``expect`` adds work the driver knows it started
    (an emitted event) that is pending until a probe's ``acknowledged`` says so.
    """

    probes: Sequence[Probe]
    poll_s: float = 1.0
    quiet_polls: int = 3
    timeout_s: float = 1_800.0
    wall: Callable[[], float] = time.monotonic
    sleep: Sleep = asyncio.sleep
    history: list[DayWait] = field(default_factory=list)

    async def wait(self, day: int, expect: Sequence[Callable[[], Awaitable[bool]]] = ()) -> DayWait:
        began = self.wall()
        record = DayWait(day, 0.0, 0)
        quiet = 0
        waiting = list(expect)
        while quiet < self.quiet_polls:
            record.polls += 1
            busy: list[str] = []
            for probe in self.probes:
                busy += [f"{probe.name}: {item}" for item in await probe.pending()]
            still = [check for check in waiting if not await check()]
            if len(still) < len(waiting):
                waiting = still
            busy += [f"an event of day {day} not yet answered"] * len(waiting)
            for item in busy:
                if item not in record.waited_for:
                    record.waited_for.append(item)
            quiet = 0 if busy else quiet + 1
            if self.wall() - began > self.timeout_s:
                raise LockStepTimeout(
                    f"day {day}: still busy after {self.timeout_s:.0f} s: {busy[:5]}"
                )
            if quiet < self.quiet_polls:
                await self.sleep(self.poll_s)
        record.wall_s = self.wall() - began
        self.history.append(record)
        return record


async def wait_for_the_day(
    running: Any,
    day: int,
    emitted: datetime | None,
    deployment: str,
    registry_versions: Callable[[], set[str]],
    *,
    since: datetime | None = None,
    poll_s: float = 1.0,
) -> DayWait:
    """Lock-step over a running stack: wait for the day's work; note the runs that failed.

    ``emitted`` is when the driver's event went out (None: no event), ``deployment`` the
    one its trigger runs, ``since`` where the previous day's look for failed runs ended
    (None: from ``emitted`` or now).
    """
    import httpx

    from banditflow.probes import PrefectRuns, RolloutDecisions, TriggeredRuns

    async with (
        httpx.AsyncClient(timeout=30) as prefect,
        httpx.AsyncClient(base_url=running.rollout_url, timeout=30) as rollout,
    ):
        runs = PrefectRuns(running.prefect_api_url, prefect)
        decisions = RolloutDecisions(rollout, registry_versions=registry_versions)
        # Every triggering event since the previous wait began (or this day's own) counts.
        began = datetime.now(UTC)
        answered = TriggeredRuns(running.prefect_api_url, prefect, since or emitted or began)
        lock = LockStep([runs, answered, decisions], poll_s=poll_s, timeout_s=900)
        # The day's feature event is answered by a flow run its trigger creates.
        expect = [runs.runs_since(emitted, deployment)] if emitted is not None else []
        record = await lock.wait(day, expect)
        record.failed = await runs.failed_since(since or min(began, emitted or began))
        return record
