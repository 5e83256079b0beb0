"""The lock-step's trigger probe against a real Prefect API: an event a deployment trigger
answers is pending until that deployment has a run created after it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from banditflow.probes import _matches, _run_triggers


def test_a_trigger_match_reads_each_label_as_one_pattern_or_a_list() -> None:
    resource = {"prefect.resource.id": "banditflow.model.conversion.v3"}
    assert _matches({"prefect.resource.id": "banditflow.model.*"}, resource)
    assert _matches({"prefect.resource.id": ["x.*", "banditflow.model.*"]}, resource)
    assert not _matches({"prefect.resource.id": "banditflow.feature_view.*"}, resource)
    assert not _matches({"prefect.resource.name": "conversion"}, resource)  # label absent
    assert _matches({}, resource)


def test_only_enabled_reactive_each_event_triggers_that_run_a_deployment_count() -> None:
    run = [{"type": "run-deployment", "source": "selected", "deployment_id": "d1"}]
    trigger = {"type": "event", "expect": ["e"], "match": {}, "posture": "Reactive"}
    automations = [
        {"name": "counts", "enabled": True, "trigger": trigger, "actions": run},
        {"name": "off", "enabled": False, "trigger": trigger, "actions": run},
        {"name": "absence", "trigger": trigger | {"posture": "Proactive"}, "actions": run},
        {"name": "three", "trigger": trigger | {"threshold": 3}, "actions": run},
        {"name": "webhook", "trigger": trigger, "actions": [{"type": "call-webhook"}]},
        {"name": "compound", "trigger": {"type": "compound"}, "actions": run},
        {"name": "related", "trigger": trigger | {"match_related": {"x": "y"}}, "actions": run},
        {"name": "sequence", "trigger": trigger | {"after": ["f"]}, "actions": run},
    ]
    assert _run_triggers(automations) == [({"e"}, {}, "d1", "counts")]


def test_an_event_is_pending_until_its_triggers_deployment_has_a_later_run(
    prefect_harness: None,
) -> None:
    import httpx
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from banditflow.probes import TriggeredRuns

    api = str(PREFECT_API_URL.value())
    name = f"banditflow.test.answered-{uuid.uuid4().hex[:8]}"

    @flow(name="trigger-probe")
    def probe() -> None:
        return None

    async def scenario() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            deployment = await client.create_deployment(
                flow_id=await client.create_flow(probe), name=f"answers-{name[-8:]}"
            )
            since = datetime.now(UTC) - timedelta(seconds=1)
            async with httpx.AsyncClient(timeout=30) as http:
                event = {
                    "occurred": datetime.now(UTC).isoformat(),
                    "event": name,
                    "resource": {"prefect.resource.id": "banditflow.test.model"},
                    "related": [],
                    "payload": {},
                    "id": str(uuid.uuid4()),
                }
                (await http.post(f"{api}/events", json=[event])).raise_for_status()
                probe_runs = TriggeredRuns(api, http, since)
                for _ in range(120):  # until the server has persisted it (on the event)
                    if await probe_runs._events({name}):
                        break
                    await asyncio.sleep(0.5)
                # The trigger is created after the event, so the server's own trigger never
                # answers it: only the run made below does.
                created = await http.post(f"{api}/automations/", json=_automation(name, deployment))
                created.raise_for_status()
                owed = await probe_runs.pending()
                await client.create_flow_run_from_deployment(deployment)
                answered = await TriggeredRuns(api, http, since).pending()
                return owed, answered

    owed, answered = asyncio.run(scenario())
    ours = [p for p in owed if name in p]
    assert len(ours) == 1 and ours[0].endswith(f"awaits on-{name}"), owed
    assert [p for p in answered if name in p] == []


def _automation(name: str, deployment: uuid.UUID) -> dict[str, object]:
    return {
        "name": f"on-{name}",
        "trigger": {
            "type": "event",
            "expect": [name],
            "match": {"prefect.resource.id": "banditflow.test.*"},
            "posture": "Reactive",
            "threshold": 1,
            "within": 0,
        },
        "actions": [
            {
                "type": "run-deployment",
                "source": "selected",
                "deployment_id": str(deployment),
                "parameters": {},
            }
        ],
    }
