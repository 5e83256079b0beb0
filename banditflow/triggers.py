"""The automations ``up`` creates beside prefect.yaml's deployment triggers.

``banditflow.candidates.registered`` is consumed by the rollout service itself: a Prefect
automation calls the service's ``POST /admin/reload`` (a Webhook block holding the URL and
the admin token), so new challengers serve as soon as registration has written their tags
and aliases, not at the service's next alias poll. The call is made by the Prefect server
(no flow run, no worker, no process to start), which is why it is an automation and not a
deployment.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from contract import EVENT_CANDIDATES_REGISTERED, model_resource_id

RELOAD_AUTOMATION = "rollout-reload-on-registration"
RELOAD_WEBHOOK_BLOCK = "rollout-reload"


def model_resource_pattern() -> str:
    """Return the resource pattern every registered model's events match."""
    return model_resource_id("*")


def create_reload_automation(prefect_api_url: str, rollout_url: str, admin_token: str) -> Any:
    """Create (or replace) the automation: candidates.registered -> POST /admin/reload.

    Returns the automation's id.
    """
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        webhook = Webhook(
            method="POST",
            url=f"{rollout_url.rstrip('/')}/admin/reload",  # type: ignore[arg-type]
            headers={"Authorization": f"Bearer {admin_token}"},  # type: ignore[arg-type]
            allow_private_urls=True,  # the service listens on 127.0.0.1
        )
        block_id = cast(UUID, webhook.save(RELOAD_WEBHOOK_BLOCK, overwrite=True))
        automation = AutomationCore(
            name=RELOAD_AUTOMATION,
            description="New challengers serve at once: the rollout service re-reads aliases.",
            trigger=EventTrigger(
                expect={EVENT_CANDIDATES_REGISTERED},
                match={"prefect.resource.id": model_resource_pattern()},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[CallWebhook(block_document_id=block_id, payload="")],
        )
        with get_client(sync_client=True) as client:
            for old in client.read_automations_by_name(RELOAD_AUTOMATION):
                client.delete_automation(old.id)
            return client.create_automation(automation)
