"""Simulate live traffic: customers arrive, the application asks /predict, the truth decides.

The application is an upsell: it shows an offer when the served model's score is at least
the offer's cost, and earns ``converted - cost`` when it shows it (nothing otherwise). The
outcome is drawn from the generator's ground-truth probability for that customer at that
time, with a uniform number fixed per request, so the same stream replayed offline against
other systems (the oracle, a system that never retrains, a fixed A/B split) is like for like.
Feedback goes back after a random delay, and some of it never arrives.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.datagen import FEATURES, FILES, conversion_probability, features_at, load_config

STREAM_COLUMNS = ("seq", "customer_id", "at", "u", "delay_s", "lost", "p_true")


class SimulationError(RuntimeError):
    """The simulation cannot run; the message says what to fix."""


@dataclass(frozen=True)
class TrafficOptions:
    """How the simulated application behaves."""

    offer_cost: float = 0.12  # show the offer when score >= cost; reward = converted - cost
    feedback_delay_mean_s: float = 0.2  # exponential delay before the outcome is reported
    feedback_loss: float = 0.05  # share of outcomes that are never reported
    concurrency: int = 8
    batch: int = 1  # rows per /predict call (1: one request per customer visit)
    rate: float | None = None  # requests per second in total; None: as fast as served

    def __post_init__(self) -> None:
        if not 0 <= self.feedback_loss < 1:
            raise ValueError(f"feedback_loss must be in [0, 1), got {self.feedback_loss=}")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError(f"concurrency and batch must be >= 1, got {self.concurrency=}")


def build_stream(
    data_dir: str | Path,
    *,
    n: int,
    start: datetime,
    end: datetime,
    seed: int = 0,
    options: TrafficOptions | None = None,
    first_seq: int = 0,
) -> pd.DataFrame:
    """Return ``n`` customer visits between ``start`` and ``end`` with their features and truth.

    Customers visit as often as they do in the generated sessions; each visit sees the
    customer's latest features as of that day, and ``p_true`` is the ground truth then.
    """
    options = options or TrafficOptions()
    folder = Path(data_dir)
    if not (folder / FILES["config"]).exists():
        raise SimulationError(f"no generated data in {folder}: run `banditflow generate` first")
    config = load_config(folder)
    frames = {
        "customers": pd.read_parquet(folder / FILES["customers"]),
        "activity": pd.read_parquet(folder / FILES["activity"]),
    }
    visits = pd.read_parquet(folder / FILES["sessions"], columns=["customer_id"])
    rng = np.random.default_rng(seed)
    # Frequent visitors visit more: draw from the sessions' own customer frequencies.
    customer_ids = rng.choice(visits["customer_id"].to_numpy(), size=n, replace=True)
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    span = (end_ts - start_ts).total_seconds()
    if span <= 0:
        raise SimulationError(f"the traffic window is empty: start={start} end={end}")
    offsets = np.sort(rng.random(n)) * span
    at = start_ts + pd.to_timedelta(offsets, unit="s")
    stream = pd.DataFrame({"seq": np.arange(first_seq, first_seq + n), "customer_id": customer_ids})
    stream["at"] = at
    parts = []
    # Activity is daily: one point-in-time lookup per simulated day serves all its visits.
    for day, chunk in stream.groupby(stream["at"].dt.floor("D"), sort=True):
        feats = features_at(frames, chunk["customer_id"].unique(), max(day, start_ts))
        parts.append(chunk.merge(feats, on="customer_id", how="left"))
    stream = pd.concat(parts, ignore_index=True).sort_values("seq", ignore_index=True)
    stream["p_true"] = conversion_probability(stream, stream["at"], config)
    stream["u"] = rng.random(n)
    stream["delay_s"] = rng.exponential(options.feedback_delay_mean_s, n)
    stream["lost"] = rng.random(n) < options.feedback_loss
    return stream


def offer_reward(score: Any, converted: Any, offer_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (offered, reward) for scores and outcomes: the application's own rule."""
    offered = np.asarray(score, dtype=np.float64) >= offer_cost
    reward = np.where(offered, np.asarray(converted, dtype=np.float64) - offer_cost, 0.0)
    return offered, reward


def oracle_reward(stream: pd.DataFrame, offer_cost: float) -> np.ndarray:
    """Reward of a system that knows the true probability (the best any model can do)."""
    converted = stream["u"].to_numpy() < stream["p_true"].to_numpy()
    return offer_reward(stream["p_true"].to_numpy(), converted, offer_cost)[1]


def feature_rows(stream: pd.DataFrame) -> list[dict[str, Any]]:
    """Return the stream's model inputs as JSON-ready dicts (NaN becomes null)."""
    frame = stream[list(FEATURES)].astype(object)
    frame = frame.where(pd.notna(frame), None)
    return frame.to_dict(orient="records")


class ArmsWatcher:
    """Poll GET /arms and remember when the champion changed (promotions, rollbacks)."""

    def __init__(self, client: Any, interval_s: float = 0.5) -> None:
        self.client = client
        self.interval_s = interval_s
        self.snapshots: list[dict[str, Any]] = []
        self.champions: list[tuple[float, str]] = []

    async def poll_once(self, seq: int) -> dict[str, Any]:
        body = (await self.client.get("/arms")).json()
        arms = body["arms"]
        champion = next((a["model"]["version"] for a in arms if a["role"] == "champion"), "")
        if not self.champions or self.champions[-1][1] != champion:
            self.champions.append((time.time(), champion))
        self.snapshots.append({"wall": time.time(), "seq": seq, "arms": body["arms"]})
        return body

    @property
    def promoted(self) -> bool:
        return len(self.champions) > 1


class FeedbackSender:
    """Report outcomes when their delay has passed, as the batch form of POST /feedback.

    An application's outcome events arrive in bursts (a conversion pipeline, a queue);
    sending what is due every ``interval_s`` keeps the load on the service realistic.
    """

    def __init__(self, client: Any, *, interval_s: float = 0.05, max_batch: int = 2_000) -> None:
        self.client = client
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.due: list[tuple[float, str, float]] = []  # (monotonic due time, id, reward)
        self.sent = 0
        self.failed: list[int] = []

    def add(self, request_id: str, reward: float, delay_s: float) -> None:
        heapq.heappush(self.due, (time.monotonic() + delay_s, request_id, reward))

    async def send_due(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        batch: list[dict[str, Any]] = []
        while self.due and (everything or self.due[0][0] <= now) and len(batch) < self.max_batch:
            _, request_id, reward = heapq.heappop(self.due)
            batch.append({"request_id": request_id, "reward": reward})
        if batch:
            response = await self.client.post("/feedback", json=batch)
            if response.status_code >= 300:
                self.failed.append(int(response.status_code))
            self.sent += len(batch)

    async def run(self, done: asyncio.Event) -> None:
        """Send as outcomes fall due until ``done`` is set and nothing is left."""
        while not (done.is_set() and not self.due):
            if done.is_set() and self.due:
                # The traffic is over: wait for the latest outcome's delay, not longer.
                await asyncio.sleep(max(0.0, self.due[0][0] - time.monotonic()))
            else:
                await asyncio.sleep(self.interval_s)
            await self.send_due()


async def run_traffic(
    url: str,
    stream: pd.DataFrame,
    *,
    options: TrafficOptions | None = None,
    stop: Callable[[ArmsWatcher], bool] | None = None,
    progress: Callable[[int, ArmsWatcher], None] | None = None,
    timeout_s: float = 10.0,
) -> tuple[pd.DataFrame, ArmsWatcher]:
    """Send the stream to the service in order; return one record per served visit.

    ``stop`` is checked as /arms is polled (e.g. "the champion changed"); the rows not yet
    sent then stay unsent and are absent from the records.
    """
    import httpx

    options = options or TrafficOptions()
    rows = feature_rows(stream)
    seqs = stream["seq"].to_numpy()
    customers = stream["customer_id"].to_numpy()
    # Sticky per customer and simulated day (a session): the same customer sees one model
    # within a day. Sticky per customer for good would freeze the split at each customer's
    # first visit after an arm set changes, and the bandit could not move traffic.
    days = stream["at"].dt.strftime("%Y-%m-%d").to_numpy()
    units = [f"customer-{c}-{d}" for c, d in zip(customers, days, strict=True)]
    converted = stream["u"].to_numpy() < stream["p_true"].to_numpy()
    delays, lost = stream["delay_s"].to_numpy(), stream["lost"].to_numpy()
    records: list[dict[str, Any]] = []
    next_index = 0
    stopped = False
    limits = httpx.Limits(max_connections=options.concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        watcher = ArmsWatcher(client)
        sender = FeedbackSender(client)
        traffic_done = asyncio.Event()
        await watcher.poll_once(int(seqs[0]) if len(seqs) else 0)
        pace = options.concurrency * options.batch / options.rate if options.rate else 0.0

        async def worker() -> None:
            nonlocal next_index, stopped
            while not stopped and next_index < len(rows):
                lo = next_index
                hi = min(lo + options.batch, len(rows))
                next_index = hi
                body = [{"features": rows[i], "unit_id": units[i]} for i in range(lo, hi)]
                began = time.perf_counter()
                payload = body if options.batch > 1 else body[0]
                response = await client.post("/predict", json=payload)
                latency_ms = (time.perf_counter() - began) * 1000.0 / (hi - lo)
                if response.status_code != 200:
                    raise SimulationError(
                        f"/predict answered {response.status_code}: {response.text[:300]}"
                    )
                answers = response.json()
                answers = answers if isinstance(answers, list) else [answers]
                for i, answer in zip(range(lo, hi), answers, strict=True):
                    score = answer["score"] if answer["score"] is not None else answer["prediction"]
                    offered, reward = offer_reward([score], [converted[i]], options.offer_cost)
                    records.append(
                        {
                            "seq": int(seqs[i]),
                            "request_id": answer["request_id"],
                            "arm": answer["arm"],
                            "version": answer["model"]["version"],
                            "score": float(score),
                            "offered": bool(offered[0]),
                            "converted": bool(converted[i]),
                            "reward": float(reward[0]),
                            "feedback_lost": bool(lost[i]),
                            "latency_ms": latency_ms,
                            "wall": time.time(),
                        }
                    )
                    if not lost[i]:
                        sender.add(answer["request_id"], float(reward[0]), delays[i])
                if pace:
                    await asyncio.sleep(max(0.0, pace - (time.perf_counter() - began)))

        async def watch() -> None:
            nonlocal stopped
            while not stopped and next_index < len(rows):
                await asyncio.sleep(watcher.interval_s)
                await watcher.poll_once(int(seqs[min(next_index, len(seqs) - 1)]))
                if progress is not None:
                    progress(next_index, watcher)
                if stop is not None and stop(watcher):
                    stopped = True

        workers = [asyncio.create_task(worker()) for _ in range(options.concurrency)]
        watch_task = asyncio.create_task(watch())
        send_task = asyncio.create_task(sender.run(traffic_done))
        await asyncio.gather(*workers)
        stopped = True
        traffic_done.set()
        await watch_task
        await send_task
        await watcher.poll_once(int(seqs[min(next_index, len(seqs)) - 1]) if len(seqs) else 0)
    if sender.failed:
        raise SimulationError(
            f"{len(sender.failed)} feedback batches failed (status {sorted(set(sender.failed))})"
        )
    frame = pd.DataFrame.from_records(records).sort_values("seq", ignore_index=True)
    return frame, watcher


def served_stream(stream: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Join what the service answered onto the stream rows it served."""
    return stream.merge(records, on="seq", how="inner", validate="one_to_one")


def replay(
    stream: pd.DataFrame,
    predict: Callable[[pd.DataFrame], np.ndarray],
    offer_cost: float,
) -> np.ndarray:
    """Reward a model would have earned on the same visits (scores from ``predict``)."""
    converted = stream["u"].to_numpy() < stream["p_true"].to_numpy()
    return offer_reward(predict(stream[list(FEATURES)]), converted, offer_cost)[1]


def split_replay(
    stream: pd.DataFrame,
    predictors: Sequence[Callable[[pd.DataFrame], np.ndarray]],
    offer_cost: float,
) -> np.ndarray:
    """Reward of a fixed even split between models (by visit number, no learning)."""
    rewards = np.zeros(len(stream))
    arm = stream["seq"].to_numpy() % len(predictors)
    for k, predict in enumerate(predictors):
        mask = arm == k
        if mask.any():
            rewards[mask] = replay(stream[mask], predict, offer_cost)
    return rewards
