"""The demo's report: replay the served visits against the baselines, read the records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from banditflow.report import DAY_LATE, FEATURE_ORACLE, ReportData, gate_table, write_report


def _predictor(model: str) -> Callable[[str], Callable[[pd.DataFrame], np.ndarray]]:
    """Return a cached loader: version -> a function scoring feature rows with it."""
    cache: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {}

    def get(version: str) -> Callable[[pd.DataFrame], np.ndarray]:
        if version not in cache:
            from tasks.registry import load_version_model

            loaded = load_version_model(model, version)
            columns = list(getattr(loaded, "feature_names_in_", []))

            def predict(frame: pd.DataFrame) -> np.ndarray:
                X = frame[columns] if columns else frame
                return np.asarray(loaded.predict_proba(X)[:, 1])

            cache[version] = predict
        return cache[version]

    return get


def baselines(demo: Any, served: pd.DataFrame, drift_index: int | None) -> dict[str, np.ndarray]:
    """Return each baseline's reward on the served visits, in the same order."""
    from banditflow.simulate import offer_reward, oracle_reward, replay, split_replay
    from tasks.datagen import feature_oracle_probability, load_config

    cost = demo.plan.world.offer_cost
    config = load_config(demo.world.truth_dir)
    converted = served["u"].to_numpy() < served["p_true"].to_numpy()
    feature_p = feature_oracle_probability(served, served["at"], config)
    predictor = _predictor(demo.model)
    arms = demo.state.initial_arms
    # Never retrains: the champion that served when the drift began keeps serving after it
    # (with the knob off, the first champion all along).
    start = drift_index if drift_index is not None else 0
    kept = str(served["champion"].iloc[start]) if len(served) else arms["champion"]
    never = served["reward"].to_numpy().copy()
    if len(served) > start:
        never[start:] = replay(served.iloc[start:], predictor(kept), cost)
    pair = [arms["champion"], arms.get("challenger-1", arms["champion"])]
    feature = offer_reward(feature_p, converted, cost)[1]
    systems = {FEATURE_ORACLE: feature}
    if drift_index is not None and len(served) > drift_index:
        # The best a system can earn that learns the new world from what the onset day
        # shows, at that day's end: the stale champion on the onset day, the feature oracle
        # on every other. Labels and outcomes arrive at a day's end, so no model of the
        # new world can serve before then; the whole-run target is read against this too.
        onset = served["day"].to_numpy() == served["day"].iloc[drift_index]
        systems[DAY_LATE] = np.where(onset, never, feature)
    return systems | {
        "oracle (ground truth)": oracle_reward(served, cost),
        "never retrains": never,
        f"fixed 50/50 split (v{pair[0]} / v{pair[1]})": split_replay(
            served, [predictor(v) for v in pair], cost
        ),
    }


def _records(demo: Any, running: Any) -> tuple[pd.DataFrame, list[dict[str, Any]], list[dict]]:
    from banditflow.timeline import prefect_records, registry_records, timeline
    from tasks.tracking import configure_mlflow

    client = configure_mlflow(demo.settings)
    runs, events = prefect_records(running.prefect_api_url, demo.day_log.began)
    versions, moves = registry_records(client, demo.model)
    return timeline(demo.day_log, runs, events, versions, moves), versions, moves


def _decision_marks(served: pd.DataFrame, moves: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Return (first visit after it, label) for each promotion and rollback in the history."""
    walls = served["wall"].to_numpy()
    seqs = served["seq"].to_numpy()
    marks = []
    for move in moves:
        action, _, reason = move["what"].partition(": ")
        # The first champion's alias is set by registration, not decided by the rule.
        if action not in ("promoted", "rolled_back") or reason.startswith("first champion"):
            continue
        at = move["at"].timestamp()
        index = int(np.searchsorted(walls, at)) if len(walls) else 0
        seq = int(seqs[min(index, len(seqs) - 1)]) if len(seqs) else 0
        marks.append((seq, f"{action} version {move['version']}"))
    return sorted(marks)


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    """Return how many drift checks and retrain studies ran in the live days."""
    live = frame[frame["day"].notna() & (frame["day"] >= 0)]
    started = live["what"].str.endswith("started")
    return {
        "drift checks": int((started & live["what"].str.startswith("retrain")).sum()),
        "retrain studies": int(
            (started & (live["kind"] == "subflow") & live["what"].str.startswith("optimize")).sum()
        ),
    }


def write_demo_report(demo: Any, running: Any) -> tuple[Path, str]:
    """Write the report; return its index page and the summary table (markdown)."""
    from banditflow.timeline import loop_delays

    served = pd.concat(demo.state.served, ignore_index=True)
    world = demo.plan.world
    drift_index = None
    if world.drift_day is not None:
        hits = np.flatnonzero(served["day"].to_numpy() >= world.drift_day)
        drift_index = int(hits[0]) if len(hits) else None
    frame, versions, moves = _records(demo, running)
    drift_wall = dict(demo.day_log.days).get(world.drift_day, datetime.max.replace(tzinfo=UTC))
    retrained = {
        v["version"] for v in versions if "retrain" in v["study"] and v["at"] >= drift_wall
    }
    delays = loop_delays(frame, served, world.drift_day, retrained)
    data = ReportData(
        served=served,
        baselines=baselines(demo, served, drift_index),
        drift_seq=None if drift_index is None else int(served["seq"].iloc[drift_index]),
        events=_decision_marks(served.sort_values("seq"), moves),
        gates=gate_table(demo.versions()),
        steps=demo.state.steps,
        window=max(500, len(served) // 20),
        timeline=frame,
        facts={
            "loop_days": delays,
            "drift_day": world.drift_day,
            "lock_step_waits": demo.state.waits,
            "decisions": [f"day {d}: champion v{v}" for d, v in demo.champion_days()],
            "timeline_counts": _counts(frame),
        },
    )
    index = write_report(data, demo.report_dir)
    return index, (demo.report_dir / "summary.md").read_text()
