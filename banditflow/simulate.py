"""Simulate live traffic: customers arrive, the application asks /predict, the truth decides.

The application is an upsell: it shows an offer when the served model's score is at least
the offer's cost, and earns ``converted - cost`` when it shows it (nothing otherwise). The
outcome is drawn from the generator's ground-truth probability for that customer at that
time, with a uniform number fixed per request, so the same stream replayed offline against
other systems (the oracle, a system that never retrains, a fixed A/B split) is like for like.
Feedback goes back after a random delay in simulated time (due at the visit's moment plus
its delay, sent once the traffic has reached that moment), and some of it never arrives:
the wall clock decides nothing, so a loaded machine tells the same story more slowly.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

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
    # Exponential delay, in simulated seconds, before the outcome is reported.
    feedback_delay_mean_s: float = 3_600.0
    feedback_loss: float = 0.05  # share of outcomes that are never reported
    concurrency: int = 8
    batch: int = 1  # rows per /predict call (1: one request per customer visit)
    rate: float | None = None  # requests per second in total; None: as fast as served
    # What /feedback receives: "net" = converted - cost when offered (a Gaussian policy's
    # reward), "converted" = 1 when offered and converted, else 0 (fits [0, 1] policies).
    reward: Literal["net", "converted"] = "net"
    # Wall s between GET /arms polls during the traffic (None: at the start and end only;
    # each /arms computes P(best): at 2/s a quarter of the demo's service CPU, sampled).
    watch_s: float | None = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.feedback_loss < 1:
            raise ValueError(f"feedback_loss must be in [0, 1), got {self.feedback_loss=}")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError(f"concurrency and batch must be >= 1, got {self.concurrency=}")
        if self.feedback_delay_mean_s < 0:
            raise ValueError(f"feedback delay must be >= 0, got {self.feedback_delay_mean_s=}")


def service_reward_kind(arms: dict[str, Any]) -> str:
    """Return "bernoulli" or "gaussian": the rewards the service's policy takes (GET /arms)."""
    params = arms.get("policy_params") or {}
    policy = str(arms.get("policy", ""))
    return str(params.get("reward_kind") or ("gaussian" if "gaussian" in policy else "bernoulli"))


def fit_reward_to_service(arms: dict[str, Any], options: TrafficOptions) -> TrafficOptions:
    """Return ``options`` with a reward the service's policy accepts (its GET /arms body).

    Net rewards (converted - cost) are negative when an offer fails, which a Bernoulli
    policy refuses: against one, send conversions (1 or 0) instead, or fail with what to
    set when the caller asked for net rewards explicitly.
    """
    if service_reward_kind(arms) != "bernoulli" or options.offer_cost == 0:
        return options
    return replace(options, reward="converted")


def reward_mismatch(arms: dict[str, Any], options: TrafficOptions) -> str | None:
    """Return why the service would refuse ``options``' rewards, and what to set; or None."""
    policy = str(arms.get("policy", "?"))
    if (
        service_reward_kind(arms) == "bernoulli"
        and options.reward == "net"
        and options.offer_cost > 0
    ):
        return (
            f"the service's policy {policy!r} takes rewards in [0, 1], but net rewards "
            f"(converted - {options.offer_cost}) are negative when an offer fails: start the "
            "service with BANDITFLOW_POLICY=thompson-gaussian, or simulate with "
            "--reward converted"
        )
    return None


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


@dataclass
class PendingFeedback:
    """Outcomes not yet reported, due at simulated moments; carried from one day to the next."""

    due: list[tuple[pd.Timestamp, str, float]] = field(default_factory=list)

    def add(self, due_at: pd.Timestamp, request_id: str, reward: float) -> None:
        heapq.heappush(self.due, (due_at, request_id, reward))

    def pop_due(self, now: pd.Timestamp, limit: int) -> list[dict[str, Any]]:
        """Remove and return (as /feedback rows) what is due at or before ``now``."""
        batch: list[dict[str, Any]] = []
        while self.due and self.due[0][0] <= now and len(batch) < limit:
            _, request_id, reward = heapq.heappop(self.due)
            batch.append({"request_id": request_id, "reward": reward})
        return batch

    def __len__(self) -> int:
        return len(self.due)


class FeedbackSender:
    """Report outcomes once the simulated clock has passed their due moment (batch form).

    An application's outcome events arrive in bursts (a conversion pipeline, a queue): what
    is due goes out as one POST /feedback of up to ``max_batch`` rows.
    """

    def __init__(
        self, client: Any, pending: PendingFeedback | None = None, *, max_batch: int = 2_000
    ) -> None:
        self.client = client
        self.pending = pending if pending is not None else PendingFeedback()
        self.max_batch = max_batch
        self.sent = 0
        self.failed: list[int] = []

    async def send_due(self, now: pd.Timestamp) -> None:
        while batch := self.pending.pop_due(now, self.max_batch):
            response = await self.client.post("/feedback", json=batch)
            if response.status_code >= 300:
                self.failed.append(int(response.status_code))
            self.sent += len(batch)


async def run_traffic(
    url: str,
    stream: pd.DataFrame,
    *,
    options: TrafficOptions | None = None,
    until: datetime | None = None,
    pending: PendingFeedback | None = None,
    stop: Callable[[ArmsWatcher], bool] | None = None,
    timeout_s: float = 10.0,
) -> tuple[pd.DataFrame, ArmsWatcher]:
    """Send the stream to the service in order; return one record per served visit.

    Outcomes are reported once the traffic reaches their due moment in simulated time;
    after the last visit, those due before ``until`` (default: the last visit) go out and
    the rest stay in ``pending`` for the next call. ``stop`` is checked as /arms is polled;
    the rows not yet sent then stay unsent and are absent from the records.
    """
    import httpx

    options = options or TrafficOptions()
    visit = _Visits(stream, options)
    pending = pending if pending is not None else PendingFeedback()
    limits = httpx.Limits(max_connections=options.concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        watcher = ArmsWatcher(client, interval_s=options.watch_s or 0.5)
        sender = FeedbackSender(client, pending)
        await watcher.poll_once(visit.seq_at(0))
        state = {"next": 0, "stopped": False}

        async def worker() -> None:
            while not state["stopped"] and state["next"] < len(visit):
                lo = state["next"]
                hi = min(lo + options.batch, len(visit))
                state["next"] = hi
                await sender.send_due(visit.at[lo])
                await visit.serve(client, lo, hi, pending)

        async def watch() -> None:
            while not state["stopped"] and state["next"] < len(visit):
                await asyncio.sleep(watcher.interval_s)
                await watcher.poll_once(visit.seq_at(state["next"]))
                if stop is not None and stop(watcher):
                    state["stopped"] = True

        watching = stop is not None or options.watch_s is not None
        watch_task = asyncio.create_task(watch()) if watching else asyncio.sleep(0)
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
        state["stopped"] = True
        await watch_task
        end = pd.Timestamp(until) if until is not None else visit.last_at
        await sender.send_due(end)
        await watcher.poll_once(visit.seq_at(state["next"] - 1))
    if sender.failed:
        raise SimulationError(
            f"{len(sender.failed)} feedback batches failed (status {sorted(set(sender.failed))})"
        )
    frame = pd.DataFrame.from_records(visit.records, columns=RECORD_COLUMNS)
    return frame.sort_values("seq", ignore_index=True), watcher


RECORD_COLUMNS = (
    "seq",
    "request_id",
    "arm",
    "version",
    "score",
    "offered",
    "converted",
    "reward",
    "feedback_lost",
    "latency_ms",
    "wall",
)


class _Visits:
    """The stream's rows as the application sees them, and what the service answered."""

    def __init__(self, stream: pd.DataFrame, options: TrafficOptions) -> None:
        self.options = options
        self.rows = feature_rows(stream)
        self.seqs = stream["seq"].to_numpy()
        self.at = list(pd.to_datetime(stream["at"], utc=True))
        self.last_at = self.at[-1] if self.at else pd.Timestamp.min.tz_localize("UTC")
        # Sticky per customer and simulated day (a session): the same customer sees one
        # model within a day. Sticky for good would freeze the split at each customer's
        # first visit after an arm set changes, and the bandit could not move traffic.
        days = stream["at"].dt.strftime("%Y-%m-%d").to_numpy()
        customers = stream["customer_id"].to_numpy()
        self.units = [f"customer-{c}-{d}" for c, d in zip(customers, days, strict=True)]
        self.converted = stream["u"].to_numpy() < stream["p_true"].to_numpy()
        self.due = [
            a + pd.Timedelta(seconds=float(d))
            for a, d in zip(self.at, stream["delay_s"].to_numpy(), strict=True)
        ]
        self.lost = stream["lost"].to_numpy()
        self.records: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def seq_at(self, index: int) -> int:
        return int(self.seqs[min(max(index, 0), len(self.seqs) - 1)]) if len(self.seqs) else 0

    async def serve(self, client: Any, lo: int, hi: int, pending: PendingFeedback) -> None:
        body = [{"features": self.rows[i], "unit_id": self.units[i]} for i in range(lo, hi)]
        began = time.perf_counter()
        response = await client.post("/predict", json=body if len(body) > 1 else body[0])
        latency_ms = (time.perf_counter() - began) * 1000.0 / (hi - lo)
        if response.status_code != 200:
            raise SimulationError(
                f"/predict answered {response.status_code}: {response.text[:300]}"
            )
        answers = response.json()
        answers = answers if isinstance(answers, list) else [answers]
        cost = self.options.offer_cost
        for i, answer in zip(range(lo, hi), answers, strict=True):
            score = answer["score"] if answer["score"] is not None else answer["prediction"]
            offered, reward = offer_reward([score], [self.converted[i]], cost)
            self.records.append(
                {
                    "seq": int(self.seqs[i]),
                    "request_id": answer["request_id"],
                    "arm": answer["arm"],
                    "version": answer["model"]["version"],
                    "score": float(score),
                    "offered": bool(offered[0]),
                    "converted": bool(self.converted[i]),
                    "reward": float(reward[0]),
                    "feedback_lost": bool(self.lost[i]),
                    "latency_ms": latency_ms,
                    "wall": time.time(),
                }
            )
            if not self.lost[i]:
                sent = reward[0] if self.options.reward == "net" else offered[0] * self.converted[i]
                pending.add(self.due[i], answer["request_id"], float(sent))


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
