"""The timeline maps wall moments to simulated days and measures the loop's delays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from banditflow.timeline import DayLog, loop_delays, timeline

T0 = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def _log() -> DayLog:
    log = DayLog(T0)
    for day in range(-1, 6):
        log.days.append((day, T0 + timedelta(minutes=2 * (day + 1))))
    return log


def test_wall_moments_fall_in_the_day_that_was_running() -> None:
    log = _log()
    assert log.day_of(T0 + timedelta(seconds=30)) == -1
    assert log.day_of(T0 + timedelta(minutes=5)) == 1
    assert log.day_of(T0 - timedelta(seconds=1)) is None and log.day_of(None) is None
    assert log.wall_s(T0 + timedelta(seconds=90)) == 90.0


def test_loop_delays_from_the_records() -> None:
    log = _log()
    at = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    runs = [
        {
            "name": "r1",
            "flow": "retrain",
            "deployment": "retrain-on-feature-update",
            "state": "Completed",
            "created": at(7),
            "start": at(7.1),
            "end": at(7.5),
            "parent": False,
        },
        {
            "name": "o1",
            "flow": "optimize",
            "deployment": "",
            "state": "Completed",
            "created": at(9.2),
            "start": at(9.2),
            "end": at(9.4),
            "parent": True,
        },
    ]
    events = [
        {"event": "banditflow.drift.detected", "occurred": at(9.1).isoformat(), "resource": {}},
        {"event": "prefect.flow-run.Completed", "occurred": at(9.0).isoformat(), "resource": {}},
    ]
    versions = [{"version": "4", "study": "m--retrain-x", "at": at(9.5)}]
    moves = [{"version": "4", "what": "challenger: challenger-1: passed", "at": at(9.6)}]
    frame = timeline(log, runs, events, versions, moves)
    assert list(frame["wall_s"]) == sorted(frame["wall_s"])
    assert not frame["what"].str.startswith("prefect.flow-run").any()  # the run rows say it
    served = pd.DataFrame(
        {"day": [2, 3, 4, 5], "version": ["2", "2", "4", "4"], "champion": ["2", "2", "2", "4"]}
    )
    delays = loop_delays(frame, served, drift_day=2, retrained={"4"})
    # Drift on day 2; seen on day 3 (minute 9.1 falls in day 3), the study the same day,
    # the new version served on day 4 and was champion on day 5.
    assert delays == {
        "to_detected": 1,
        "to_retrain_running": 1,
        "to_challenger_serving": 2,
        "to_new_champion": 3,
    }
    assert loop_delays(frame, served, drift_day=None, retrained=set())["to_detected"] is None
