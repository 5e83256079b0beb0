"""What the lock-step wait asks at a simulated day's end: is the system still working?

Three probes (:class:`banditflow.clock.Probe`): Prefect's flow runs that are due and not
finished, the events a deployment trigger answers whose run does not exist yet, and the
rollout service's decisions not yet acted on (with challengers the registry names that it
does not serve yet). Each reads the server's own records over HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from banditflow.clock import as_utc

# Prefect state types of work that has not finished (SCHEDULED counts once it is due).
UNFINISHED_STATES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING")

# The service's decisions that change the arms; any other recommendation is "keep going".
ACTIONS = ("promote", "retire", "rollback")


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
                "end_time": {"after_": as_utc(moment).isoformat()},
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
            stamp = as_utc(moment)
            return any(_stamp(r["created"]) >= stamp for r in response.json())

        return check


@dataclass
class TriggeredRuns:
    """Probe: each event a deployment trigger answers must have its flow run by now.

    The day's wait used to end when no flow run was due: an event a finishing run emitted
    (``drift.detected`` at a check's end) starts its consumer's run only once the server's
    triggers and actions services have seen it, and that took longer than the wait's quiet
    polls under load. Measured in the quick demo: the drift check ended day 3's wait, the
    retrain it signalled started during day 4's traffic, and its challenger served a day
    late (same seed, different story). The triggers are read from the server's own
    automations (prefect.yaml's deployment triggers and any created beside them): an event
    one of them expects, occurred after ``since``, is pending until a run of that
    deployment was created at or after it (a run its concurrency limit cancelled counts).
    """

    api_url: str
    client: Any  # an httpx.AsyncClient
    since: datetime
    name: str = "triggers"
    _triggers: list[tuple[set[str], dict[str, Any], str, str]] | None = None

    async def triggers(self) -> list[tuple[set[str], dict[str, Any], str, str]]:
        """Return (expected events, match, deployment id, automation name) per trigger."""
        if self._triggers is None:
            response = await self.client.post(f"{self.api_url}/automations/filter", json={})
            response.raise_for_status()
            self._triggers = _run_triggers(response.json())
        return self._triggers

    async def _events(self, names: set[str]) -> list[dict[str, Any]]:
        query = {
            "filter": {
                "occurred": {"since": as_utc(self.since).isoformat()},
                "event": {"name": sorted(names)},
            },
            "limit": 50,
        }
        response = await self.client.post(f"{self.api_url}/events/filter", json=query)
        response.raise_for_status()
        page = response.json()
        events = list(page.get("events", []))
        while page.get("next_page"):
            response = await self.client.get(page["next_page"])
            response.raise_for_status()
            page = response.json()
            events += page.get("events", [])
        return events

    async def _latest_run(self, deployment_id: str) -> datetime | None:
        body = {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"expected_start_time": {"before_": datetime.now(UTC).isoformat()}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": 20,
        }
        response = await self.client.post(f"{self.api_url}/flow_runs/filter", json=body)
        response.raise_for_status()
        created = [_stamp(r["created"]) for r in response.json() if r.get("created")]
        return max(created, default=None)

    async def pending(self) -> list[str]:
        triggers = await self.triggers()
        names = set().union(*(expect for expect, *_ in triggers)) if triggers else set()
        if not names:
            return []
        out: list[str] = []
        latest: dict[str, datetime | None] = {}
        for event in await self._events(names):
            for expect, match, deployment, automation in triggers:
                if event["event"] not in expect or not _matches(match, event["resource"]):
                    continue
                if deployment not in latest:
                    latest[deployment] = await self._latest_run(deployment)
                ran = latest[deployment]
                if ran is None or ran < _stamp(event["occurred"]):
                    out.append(f"{event['event']} at {event['occurred']} awaits {automation}")
        return out


def _run_triggers(automations: list[dict[str, Any]]) -> list[tuple[set[str], dict, str, str]]:
    """Return each enabled trigger that runs a deployment on every matching event."""
    out = []
    for automation in automations:
        trigger = automation.get("trigger") or {}
        if not automation.get("enabled", True) or trigger.get("type") != "event":
            continue
        if trigger.get("posture", "Reactive") != "Reactive" or trigger.get("threshold", 1) > 1:
            continue  # answers a count or an absence, not each event
        if trigger.get("match_related") or trigger.get("after"):
            continue  # conditions this probe does not evaluate: not counted, never waited on
        for action in automation.get("actions", []):
            if action.get("type") == "run-deployment" and action.get("deployment_id"):
                expect, match = set(trigger.get("expect") or ()), dict(trigger.get("match") or {})
                out.append((expect, match, str(action["deployment_id"]), automation["name"]))
    return out


def _stamp(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _matches(match: dict[str, Any], resource: dict[str, str]) -> bool:
    """Whether a resource matches a trigger's ``match`` (each label: one pattern or a list)."""
    from fnmatch import fnmatchcase

    for label, patterns in match.items():
        value = resource.get(label)
        options = [patterns] if isinstance(patterns, str) else list(patterns)
        if value is None or not any(fnmatchcase(value, p) for p in options):
            return False
    return True


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
