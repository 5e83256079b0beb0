"""The demo's timeline, read from the systems' own records, in simulated days and wall seconds.

Prefect's flow runs and events (its REST API) and the registry's versions and history tags
(MLflow) say what happened and when on the wall clock; the driver's day log maps a wall
moment to the simulated day it fell in. From the timeline come the loop's delays: drift
onset to drift detected, to a retrain running, to a new challenger serving, to a new
champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from contract import EVENT_DRIFT_DETECTED, TAG_STUDY

# Prefect's own event families that only repeat what the flow-run rows already say.
_NOISY_EVENTS = ("prefect.flow-run.", "prefect.task-run.", "prefect.worker.", "prefect.work-")


def _utc(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


@dataclass
class DayLog:
    """Wall moments at which each simulated day began (day -1: setup before the live days)."""

    began: datetime
    days: list[tuple[int, datetime]] = field(default_factory=list)

    def start(self, day: int) -> None:
        self.days.append((day, datetime.now(UTC)))

    def day_of(self, moment: datetime | None) -> int | None:
        """Return the simulated day a wall moment fell in (its traffic or its wait)."""
        if moment is None:
            return None
        current = None
        for day, began in self.days:
            if moment >= began:
                current = day
        return current

    def wall_s(self, moment: datetime | None) -> float | None:
        return None if moment is None else round((moment - self.began).total_seconds(), 1)


def prefect_records(api_url: str, since: datetime) -> tuple[list[dict[str, Any]], list[dict]]:
    """Return (flow runs, events) since ``since`` from the Prefect server's REST API."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as client:
        flows = {f["id"]: f["name"] for f in client.post("/flows/filter", json={}).json()}
        deployments = {
            d["id"]: d["name"] for d in client.post("/deployments/filter", json={}).json()
        }
        body = {"sort": "EXPECTED_START_TIME_ASC", "limit": 200}
        runs = []
        for run in client.post("/flow_runs/filter", json=body).json():
            runs.append(
                {
                    "name": run["name"],
                    "flow": flows.get(run["flow_id"], "?"),
                    "deployment": deployments.get(run.get("deployment_id"), ""),
                    "state": run.get("state_name") or run.get("state_type"),
                    "created": _utc(run.get("created")),
                    "start": _utc(run.get("start_time")),
                    "end": _utc(run.get("end_time")),
                    "parent": run.get("parent_task_run_id") is not None,
                }
            )
        # The project's own events; the server pages them 50 at a time at most.
        query = {
            "filter": {
                "occurred": {"since": since.isoformat()},
                "event": {"prefix": ["banditflow."]},
            },
            "limit": 50,
        }
        response = client.post("/events/filter", json=query)
        events = response.json().get("events", []) if response.status_code == 200 else []
        while response.status_code == 200 and response.json().get("next_page"):
            response = client.get(response.json()["next_page"])
            events += response.json().get("events", []) if response.status_code == 200 else []
    return runs, events


def registry_records(client: Any, model: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """Return (versions, alias moves) of ``model``: the registry as the audit log."""
    from contract import read_history

    versions = []
    for v in client.search_model_versions(f"name='{model}'"):
        created = datetime.fromtimestamp(int(v.creation_timestamp) / 1000, tz=UTC)
        study = (v.tags or {}).get(TAG_STUDY, "")
        versions.append({"version": str(v.version), "study": study, "at": created})
    moves = [
        {"version": e.version, "what": f"{e.action}: {e.reason}", "at": e.at}
        for e in read_history(client, model)
    ]
    return versions, moves


def timeline(
    log: DayLog,
    runs: list[dict[str, Any]],
    events: list[dict[str, Any]],
    versions: list[dict[str, Any]],
    moves: list[dict[str, Any]],
) -> pd.DataFrame:
    """Return one row per event, flow run, registration and alias move, in time order."""
    rows: list[dict[str, Any]] = []

    def add(at: datetime | None, kind: str, what: str) -> None:
        rows.append({"day": log.day_of(at), "wall_s": log.wall_s(at), "kind": kind, "what": what})

    for run in runs:
        # A subflow (a retrain's optimize) has no deployment: its flow's name says what it is.
        kind = "subflow" if run["parent"] else "flow run"
        label = run["deployment"] or run["flow"]
        add(run["start"] or run["created"], kind, f"{label} {run['name']} started")
        if run["end"] is not None:
            add(run["end"], kind, f"{label} {run['name']} {run['state']}")
    for event in events:
        name = str(event.get("event", ""))
        if name.startswith(_NOISY_EVENTS):
            continue
        resource = event.get("resource", {}).get("prefect.resource.id", "")
        add(_utc(event.get("occurred")), "event", f"{name} ({resource})")
    for version in versions:
        add(version["at"], "registered", f"version {version['version']} ({version['study']})")
    for move in moves:
        add(move["at"], "registry", f"version {move['version']}: {move['what'][:120]}")
    frame = pd.DataFrame(rows, columns=["day", "wall_s", "kind", "what"])
    return frame.sort_values("wall_s", kind="stable", ignore_index=True)


def loop_delays(
    frame: pd.DataFrame, served: pd.DataFrame, drift_day: int | None, retrained: set[str]
) -> dict[str, int | None]:
    """Return simulated days from drift onset to detected, retrain running, serving, champion.

    ``retrained``: the versions registered by a study after the drift. A day is the live
    day on which the step was first seen (0: the day the drift started).
    """
    out: dict[str, int | None] = {
        "to_detected": None,
        "to_retrain_running": None,
        "to_challenger_serving": None,
        "to_new_champion": None,
    }
    if drift_day is None:
        return out
    after = frame[frame["day"].notna() & (frame["day"] >= drift_day)]

    def first(mask: pd.Series) -> int | None:
        hits = after.loc[mask.reindex(after.index, fill_value=False), "day"]
        return None if hits.empty else int(hits.iloc[0]) - drift_day

    out["to_detected"] = first(after["what"].str.startswith(EVENT_DRIFT_DETECTED))
    out["to_retrain_running"] = first(
        (after["kind"] == "subflow") & after["what"].str.startswith("optimize")
    )
    serving = served[served["version"].astype(str).isin(retrained)]
    if not serving.empty:
        out["to_challenger_serving"] = int(serving["day"].iloc[0]) - drift_day
    champions = served[served["champion"].astype(str).isin(retrained)]
    if not champions.empty:
        out["to_new_champion"] = int(champions["day"].iloc[0]) - drift_day
    return out
