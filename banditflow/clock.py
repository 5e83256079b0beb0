"""The world's one simulated clock, and the lock-step wait at each simulated day's end.

Every delay of the demo's world (a visit's feedback, a label's arrival, the day's feature
update) is a moment on :class:`SimClock`; nothing in the world reads the wall clock. The
driver advances the clock; at a configurable ``rate`` (simulated seconds per wall second)
it also paces itself, and in lock-step mode it stops at each simulated day's end until the
work that day's events started has finished (:class:`LockStep`, which asks
:class:`Probe` objects: Prefect's flow runs, the rollout service's pending decisions, the
registry's challengers not yet serving). A loaded machine then changes how long a day
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
# Prefect state types of work that has not finished (SCHEDULED counts once it is due).
UNFINISHED_STATES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING")

# The service's decisions that change the arms; any other recommendation is "keep going".
ACTIONS = ("promote", "retire", "rollback")

Sleep = Callable[[float], Awaitable[None]]


class LockStepTimeout(RuntimeError):
    """The work a simulated day started did not finish in time; the message names it."""


def _utc(moment: datetime) -> datetime:
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
        self.start = _utc(self.start)
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
        return (self.now - _utc(moment)) / DAY

    def repace(self) -> None:
        """Restart the pace from now (after a lock-step wait, so the wait is not caught up)."""
        self._wall_start = self.wall() - self._elapsed_s() / self.rate if self.rate else 0.0

    def _elapsed_s(self) -> float:
        return (self.now - self.start).total_seconds()

    async def advance_to(self, moment: datetime) -> None:
        """Move the clock to ``moment``; at a rate, first wait until the wall catches up."""
        moment = _utc(moment)
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


@dataclass
class PrefectRuns:
    """Probe: the Prefect API's flow runs that are due and not finished."""

    api_url: str
    client: Any  # an httpx.AsyncClient
    name: str = "prefect"

    async def pending(self) -> list[str]:
        now = datetime.now(UTC).isoformat()
        body = {
            "flow_runs": {
                "state": {"type": {"any_": list(UNFINISHED_STATES)}},
                "expected_start_time": {"before_": now},
            },
            "limit": 50,
        }
        response = await self.client.post(f"{self.api_url}/flow_runs/filter", json=body)
        response.raise_for_status()
        return [f"flow run {r['name']} ({r['state_type']})" for r in response.json()]

    async def failed_since(self, moment: datetime) -> list[str]:
        """Return ``name: message`` of each flow run that failed or crashed after ``moment``.

        The loop goes on past a failed run (the next event starts the next one), so the
        driver says which failed and why: in one CI run every retrain failed on the same
        error, and only the missing version showed it.
        """
        body = {
            "flow_runs": {
                "state": {"type": {"any_": ["FAILED", "CRASHED"]}},
                "end_time": {"after_": _utc(moment).isoformat()},
            },
            "sort": "START_TIME_ASC",
            "limit": 20,
        }
        response = await self.client.post(f"{self.api_url}/flow_runs/filter", json=body)
        response.raise_for_status()
        return [
            f"{r['name']}: {((r.get('state') or {}).get('message') or r['state_type'])[:300]}"
            for r in response.json()
        ]

    def runs_since(
        self, moment: datetime, deployment: str | None = None
    ) -> Callable[[], Awaitable[bool]]:
        """Return a check that is true once a flow run (of ``deployment``, when named) was
        created at or after ``moment``.

        Name the deployment whose trigger the event fires: one event can fire several
        triggers, each creating its run a few seconds apart, and the first run to appear
        does not answer for the others (seen in the demo: the history's profile update
        started the drift check at once and the first studies 8 s later, after the day's
        wait had ended, so no champion existed when the first live day began).
        """
        body: dict[str, Any] = {"sort": "EXPECTED_START_TIME_DESC", "limit": 20}
        if deployment is not None:
            body["deployments"] = {"name": {"any_": [deployment]}}

        async def check() -> bool:
            response = await self.client.post(f"{self.api_url}/flow_runs/filter", json=body)
            response.raise_for_status()
            stamp = _utc(moment)
            return any(
                datetime.fromisoformat(r["created"].replace("Z", "+00:00")) >= stamp
                for r in response.json()
            )

        return check


@dataclass
class RolloutDecisions:
    """Probe: the rollout service's recommendations not yet acted on, and challengers the
    registry names that the service does not serve yet (``registry_versions``)."""

    client: Any  # an httpx.AsyncClient with the service's base URL
    registry_versions: Callable[[], set[str]] | None = None
    name: str = "rollout"

    async def pending(self) -> list[str]:
        body = (await self.client.get("/arms")).json()
        out: list[str] = []
        if body.get("auto_decisions") and not body.get("frozen"):
            out += [
                f"decision {r.get('action')} {r.get('arm')}"
                for r in body.get("recommendations", [])
                if r.get("action") in ACTIONS and not r.get("applied")
            ]
        if self.registry_versions is not None:
            served = {str(a["model"]["version"]) for a in body.get("arms", [])}
            out += [f"version {v} not serving yet" for v in self.registry_versions() - served]
        return out


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

    async with (
        httpx.AsyncClient(timeout=30) as prefect,
        httpx.AsyncClient(base_url=running.rollout_url, timeout=30) as rollout,
    ):
        runs = PrefectRuns(running.prefect_api_url, prefect)
        decisions = RolloutDecisions(rollout, registry_versions=registry_versions)
        lock = LockStep([runs, decisions], poll_s=poll_s, timeout_s=900)
        # The day's feature event is answered by a flow run its trigger creates.
        expect = [runs.runs_since(emitted, deployment)] if emitted is not None else []
        began = datetime.now(UTC)
        record = await lock.wait(day, expect)
        record.failed = await runs.failed_since(since or min(began, emitted or began))
        return record
