"""The simulated clock paces itself only at a rate; lock-step waits for quiet, on a fake wall."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from banditflow.clock import LockStep, LockStepTimeout, SimClock

START = datetime(2026, 4, 1, tzinfo=UTC)


class FakeWall:
    """A wall clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_clock_days_and_no_going_back() -> None:
    wall = FakeWall()
    clock = SimClock(START, wall=wall, sleep=wall.sleep)
    asyncio.run(clock.advance_to(START + timedelta(days=2, hours=3)))
    assert clock.day == 2 and wall.slept == []  # no rate: never waits
    assert clock.day_start(3) == START + timedelta(days=3)
    assert clock.days_since(START + timedelta(days=1)) == pytest.approx(1.125)
    with pytest.raises(ValueError, match="cannot go back"):
        asyncio.run(clock.advance_to(START))
    with pytest.raises(ValueError, match="rate"):
        SimClock(START, rate=0.0)


def test_clock_keeps_pace_at_a_rate() -> None:
    wall = FakeWall()
    # One simulated hour per wall second.
    clock = SimClock(START, rate=3_600.0, wall=wall, sleep=wall.sleep)
    asyncio.run(clock.advance_to(START + timedelta(hours=2)))
    assert wall.slept == [pytest.approx(2.0)]
    wall.t += 5.0  # the driver was slow (a loaded machine): no sleep, no catching up later
    asyncio.run(clock.advance_to(START + timedelta(hours=3)))
    assert len(wall.slept) == 1
    clock.repace()
    asyncio.run(clock.advance_to(START + timedelta(hours=4)))
    assert wall.slept[-1] == pytest.approx(1.0)


class ScriptedProbe:
    """Busy for the first ``busy_polls`` polls, then idle."""

    name = "script"

    def __init__(self, busy_polls: int) -> None:
        self.busy_polls = busy_polls
        self.polls = 0

    async def pending(self) -> list[str]:
        self.polls += 1
        return ["flow run retrain (RUNNING)"] if self.polls <= self.busy_polls else []


def test_lock_step_waits_for_quiet_polls_in_a_row() -> None:
    wall = FakeWall()
    # Busy, idle once (a trigger's gap between two runs), busy again, then idle.
    answers = iter([["a"], [], ["b"], [], [], []])

    class Gappy:
        name = "gappy"

        async def pending(self) -> list[str]:
            return next(answers)

    step = LockStep([Gappy()], poll_s=1.0, quiet_polls=3, wall=wall, sleep=wall.sleep)
    record = asyncio.run(step.wait(7))
    assert record.polls == 6 and record.day == 7
    assert record.waited_for == ["gappy: a", "gappy: b"]
    assert record.wall_s == pytest.approx(5.0)
    assert step.history == [record]


def test_lock_step_waits_for_an_expected_answer_then_times_out() -> None:
    wall = FakeWall()
    answered = {"n": 0}

    async def run_appeared() -> bool:
        answered["n"] += 1
        return answered["n"] >= 4  # the event's run shows up on the fourth poll

    step = LockStep([ScriptedProbe(0)], poll_s=0.5, quiet_polls=2, wall=wall, sleep=wall.sleep)
    record = asyncio.run(step.wait(1, expect=[run_appeared]))
    assert record.polls == 5 and "not yet answered" in record.waited_for[0]

    stuck = LockStep([ScriptedProbe(10**6)], poll_s=1.0, timeout_s=30, wall=wall, sleep=wall.sleep)
    with pytest.raises(LockStepTimeout, match="day 2: still busy"):
        asyncio.run(stuck.wait(2))


def test_an_expected_run_is_the_named_deployments_not_any_run(prefect_harness: None) -> None:
    # One event fires several triggers whose runs appear seconds apart: the day's wait must
    # not end on the first run that shows up when the one it started is another's.
    import httpx
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from banditflow.probes import PrefectRuns

    @flow(name="lock-step-probe")
    def probe() -> None:
        return None

    async def scenario() -> tuple[bool, bool, bool]:
        async with get_client() as client:
            flow_id = await client.create_flow(probe)
            mine = await client.create_deployment(flow_id=flow_id, name="lock-step-mine")
            await client.create_deployment(flow_id=flow_id, name="lock-step-other")
            moment = datetime.now(UTC) - timedelta(seconds=1)
            async with httpx.AsyncClient(timeout=30) as http:
                runs = PrefectRuns(str(PREFECT_API_URL.value()), http)
                other = runs.runs_since(moment, "lock-step-other")
                mine_check = runs.runs_since(moment, "lock-step-mine")
                await client.create_flow_run_from_deployment(mine)
                return await other(), await mine_check(), await runs.runs_since(moment)()

    other, mine, anyone = asyncio.run(scenario())
    assert (other, mine, anyone) == (False, True, True)


def test_the_days_failed_runs_are_named_with_their_message(prefect_harness: None) -> None:
    # The loop goes on past a failed run; the driver must say which failed and why (a CI
    # run had every retrain fail on one error and printed nothing about it).
    import httpx
    from prefect import flow
    from prefect.settings import PREFECT_API_URL

    from banditflow.probes import PrefectRuns

    @flow(name="lock-step-fails")
    def fails() -> None:
        raise ValueError("the outcome log's timestamps could not be cast")

    @flow(name="lock-step-works")
    def works() -> None:
        return None

    before = datetime.now(UTC) - timedelta(seconds=1)
    works()
    fails(return_state=True)
    after = datetime.now(UTC) + timedelta(seconds=1)

    async def look(moment: datetime) -> list[str]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await PrefectRuns(str(PREFECT_API_URL.value()), http).failed_since(moment)

    failed = asyncio.run(look(before))
    assert len(failed) == 1 and "could not be cast" in failed[0], failed
    assert asyncio.run(look(after)) == []
