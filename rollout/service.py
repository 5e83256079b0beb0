"""The rollout logic between the routes and the store: route, record, learn, decide.

The hot path (``predict``) reads only memory: arm statistics and the runtime configuration
are cached and refreshed from the store on a background task, the request id is a signed
token naming the arm, and decisions reach the database through a background writer. The
feedback path awaits a group commit: one transaction for every feedback queued meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import sys
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

import contract
from rollout.errors import (
    BadInput,
    Conflict,
    EntityLookupError,
    FeedbackWindowClosed,
    NoModelAvailable,
    RewardOutOfRange,
    UnknownArm,
    UnknownRequest,
)
from rollout.metrics import Metrics
from rollout.policies import ArmStats, Policy, PolicyError, get_policy
from rollout.pool import ModelPool, PoolSnapshot, ServingModel, arm_name, version_of
from rollout.schemas import (
    ArmReport,
    ArmsResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelRef,
    PredictRequest,
    PredictResponse,
    Recommendation,
    ShadowComparison,
)
from rollout.settings import RolloutSettings
from rollout.store import DecisionRow, FeedbackRow, ShadowRow, Store, StoredStats
from rollout.tokens import RequestTokens

_log = logging.getLogger(__name__)
_DRAW_BATCH = 256  # policy choices drawn at once from one snapshot of the statistics


def unit_point(unit_id: str, fingerprint: str) -> float:
    """Map a unit to a fixed point in [0, 1) for this arm set (same in every process)."""
    digest = hashlib.sha256(f"{fingerprint}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_set_fingerprint(arms: Sequence[str]) -> str:
    """Identify an arm set: sticky assignments hold while it is unchanged."""
    return hashlib.sha256(",".join(sorted(arms)).encode()).hexdigest()[:16]


def arm_at(point: float, allocation: Mapping[str, float]) -> str:
    """Return the arm whose slice of [0, 1) holds ``point`` (slices in arm-name order)."""
    arms = sorted(allocation)
    total = sum(allocation[a] for a in arms)
    if total <= 0:
        return arms[0]
    edge = 0.0
    for arm in arms:
        edge += allocation[arm] / total
        if point < edge:
            return arm
    return arms[-1]


class GroupCommitWriter:
    """Write decisions, shadow rows and feedback in batches, one transaction per batch.

    Feedback futures resolve only after their transaction committed, so an acknowledged
    feedback is durable; everything queued while a commit runs goes into the next one.
    """

    def __init__(
        self,
        store: Store,
        *,
        discount: Any,
        max_batch: int,
        linger_s: float = 0.05,
    ) -> None:
        self.store = store
        self._discount = discount  # a callable returning the policy's discount now
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._decisions: list[DecisionRow] = []
        self._shadows: list[ShadowRow] = []
        self._feedback: list[tuple[FeedbackRow, asyncio.Future[tuple[str, str | None]]]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add_decision(self, row: DecisionRow) -> None:
        self._decisions.append(row)
        self._wake.set()

    def add_shadow(self, row: ShadowRow) -> None:
        self._shadows.append(row)
        self._wake.set()

    async def submit_feedback(self, rows: Sequence[FeedbackRow]) -> list[tuple[str, str | None]]:
        """Queue feedback and wait until it is committed; return (status, arm) per row."""
        loop = asyncio.get_running_loop()
        futures = []
        for row in rows:
            fut: asyncio.Future[tuple[str, str | None]] = loop.create_future()
            self._feedback.append((row, fut))
            futures.append(fut)
        self._wake.set()
        self._urgent.set()
        return list(await asyncio.gather(*futures))

    async def flush(self) -> None:
        """Commit everything queued so far (decisions included)."""
        await self.submit_feedback([])
        while self._decisions or self._shadows or self._feedback:
            self._urgent.set()
            self._wake.set()
            await asyncio.sleep(0.005)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._feedback and not self._closing:
                # Only decisions: linger so that they go in a few large transactions.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.linger_s)
            self._urgent.clear()
            decisions, self._decisions = self._decisions, []
            shadows, self._shadows = self._shadows, []
            batch, self._feedback = (
                self._feedback[: self.max_batch],
                self._feedback[self.max_batch :],
            )
            if self._feedback:
                self._wake.set()
            if not (decisions or shadows or batch):
                if self._closing:
                    return
                continue
            rows = [row for row, _ in batch]
            loop = asyncio.get_running_loop()
            try:
                statuses = await loop.run_in_executor(
                    self._executor,
                    functools.partial(
                        self.store.apply_batch,
                        decisions,
                        rows,
                        shadows,
                        discount=self._discount(),
                    ),
                )
            except Exception as exc:
                self.failures += 1
                _log.exception("group commit of %d feedback failed", len(batch))
                # Decisions are retried with the next batch; feedback callers get the error.
                self._decisions[:0] = decisions[-100_000:]
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                await asyncio.sleep(0.1)
                self._wake.set()
                continue
            self.commits += 1
            for (_, fut), status in zip(batch, statuses, strict=True):
                if not fut.done():
                    fut.set_result(status)
            if self._closing and not (self._decisions or self._shadows or self._feedback):
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)
        self._executor.shutdown(wait=True)


@dataclass
class _Guard:
    """Recent outcomes of one arm's predictions, for the guardrails."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    failures: deque[bool] = field(default_factory=lambda: deque(maxlen=500))
    since_check: int = 0


class RolloutService:
    """Everything the routes call. Build with settings; ``await start()`` before use."""

    def __init__(self, settings: RolloutSettings, *, pool: ModelPool | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        self.pool = pool or ModelPool(
            model_name=settings.model_name,
            tracking_uri=settings.tracking_uri,
            registry_uri=settings.registry_uri,
            cache_dir=settings.home / "rollout-models",
        )
        self.metrics = Metrics()
        self.rng = np.random.default_rng(settings.seed)
        self.policy: Policy = get_policy(settings.policy, **settings.policy_params)
        self._policy_source: Any = None  # the stored policy config the current one came from
        self.stats: dict[str, StoredStats] = {}
        self.config: dict[str, Any] = {}
        self.frozen = False
        self.allocation: dict[str, float] = {}
        self._allocation_key: Any = None
        self._draws: list[str] = []
        self._draw_key: Any = None
        self.recommendations: list[Recommendation] = []
        self.errors_by_arm: dict[str, int] = defaultdict(int)
        self._guards: dict[str, _Guard] = defaultdict(_Guard)
        self._units: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.tokens: RequestTokens | None = None
        self.writer: GroupCommitWriter | None = None
        self.feast: Any = None
        self.started = False
        self.store_error: str | None = None
        self.rule: Any = None

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the schema, load models and state, and start the background tasks."""
        # The group-commit thread releases the GIL at every SQL statement; with the default
        # 5 ms switch interval a busy event loop makes it wait ~5 ms to get it back each
        # time, so one commit took ~100 ms under load. 1 ms keeps commits short.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        await asyncio.to_thread(self._start_blocking)
        self.writer = GroupCommitWriter(
            self.store,
            discount=lambda: self.policy.discount,
            max_batch=self.settings.writer_max_batch,
        )
        self.writer.start()
        if self.settings.background:
            s = self.settings
            self._every(s.stats_refresh_ms / 1000.0, self.refresh_state)
            self._every(s.alias_poll_s, self.refresh_models)
            self._every(s.expiry_interval_s, self.expire_decisions)
            self._every(s.decision_interval_s, self.run_decisions)
        self.started = True

    def _start_blocking(self) -> None:
        self.rule = self.decision_rule()  # invalid decision_params fail here, at start-up
        self.store.create_schema()
        secret = self.settings.token_secret or self.store.get_or_create_secret()
        self.tokens = RequestTokens(secret)
        self._load_state()
        self.pool.refresh(force=True)
        self._update_allocation()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
        self.store.dispose()

    def _every(self, period: float, job: Any) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("background job %s failed", getattr(job, "__name__", job))

        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    # --- cached state ------------------------------------------------------------------------
    def _load_state(self) -> None:
        """Read statistics and runtime configuration from the store (a worker thread)."""
        try:
            stats = self.store.read_stats()
            config = self.store.read_config()
            self.store_error = None
        except Exception as exc:
            self.store_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        self.stats = stats
        self._draws = []
        self._apply_config(config)

    def _apply_config(self, config: dict[str, Any]) -> None:
        self.config = config
        stored_policy = config.get("policy")
        if stored_policy is not None and stored_policy != self._policy_source:
            try:
                self.policy = get_policy(stored_policy["name"], **stored_policy.get("params", {}))
                self._draws = []
            except (PolicyError, KeyError, TypeError) as exc:
                _log.error(
                    "stored policy %r is invalid, keeping %r: %s", stored_policy, self.policy, exc
                )
            self._policy_source = stored_policy
        self.frozen = bool(config.get("frozen", False))
        shadow = [str(v) for v in config.get("shadow", [])]
        if shadow != self.pool.shadow_versions:
            self.pool.shadow_versions = shadow
            self.pool.refresh()
        pulled = {str(k): str(v) for k, v in config.get("pulled", {}).items()}
        if pulled != self.pool.pulled:
            self.pool.set_pulled(pulled)

    async def refresh_state(self) -> None:
        await asyncio.to_thread(self._load_state)
        self._update_allocation()

    async def refresh_models(self) -> None:
        if await asyncio.to_thread(self.pool.refresh):
            self._update_allocation()

    def _arm_stats(self, arms: Sequence[str]) -> list[ArmStats]:
        out = []
        for arm in arms:
            s = self.stats.get(arm)
            if s is None:
                out.append(ArmStats(arm))
            else:
                out.append(
                    ArmStats(arm, max(s.pulls, 0.0), s.reward_sum, max(s.reward_sq_sum, 0.0))
                )
        return out

    def serving_arms(self, snap: PoolSnapshot) -> list[str]:
        if snap.champion_model() is None:
            return []
        if self.frozen:
            return [snap.champion]  # type: ignore[list-item]
        return snap.rotation

    def _update_allocation(self) -> None:
        snap = self.pool.snapshot
        arms = self.serving_arms(snap)
        key = (tuple(arms), tuple(self._arm_stats(arms)), repr(self.policy))
        if key == self._allocation_key or not arms:
            if not arms:
                self.allocation = {}
            return
        try:
            self.allocation = self.policy.allocation(self._arm_stats(arms), self.rng)
        except PolicyError as exc:
            _log.error("policy %r cannot allocate over %s: %s", self.policy, arms, exc)
            self.allocation = {snap.champion: 1.0} if snap.champion else {}
        self._allocation_key = key

    # --- predict ---------------------------------------------------------------------------
    async def predict(self, req: PredictRequest) -> PredictResponse:
        return (await self.predict_many([req]))[0]

    async def predict_many(self, reqs: Sequence[PredictRequest]) -> list[PredictResponse]:
        """Route each row to an arm, score it, and queue the decisions; 422 names bad rows."""
        snap = self.pool.snapshot
        champion_model = snap.champion_model()
        if champion_model is None:
            self.metrics.errors.labels("no_model", "").inc()
            raise NoModelAvailable(self._no_model_reason(snap))
        rows: list[dict[str, Any]] = []
        for i, req in enumerate(reqs):
            features = req.features if req.features is not None else await self._lookup(req.entity)
            try:
                snap.check_row(features, champion_model)
            except BadInput as exc:
                if len(reqs) > 1:
                    exc.message = f"row {i}: {exc.message}"
                raise
            rows.append(features)
        arms = [await self._choose(snap, req.unit_id) for req in reqs]
        by_arm: dict[str, list[int]] = defaultdict(list)
        for i, arm in enumerate(arms):
            by_arm[arm].append(i)
        predictions: list[Any] = [None] * len(reqs)
        scores: list[float | None] = [None] * len(reqs)
        served: list[ServingModel] = [champion_model] * len(reqs)
        for arm, idx in by_arm.items():
            model = snap.arms[arm].model
            assert model is not None
            try:
                preds, scs = self._score(model, [rows[i] for i in idx], len(reqs))
            except Exception as exc:
                if arm == snap.champion:
                    self.metrics.errors.labels("predict", arm).inc()
                    raise NoModelAvailable(
                        f"the champion ({arm}) failed to predict: {type(exc).__name__}: {exc}"
                    ) from exc
                self._pull(arm, f"failed to predict: {type(exc).__name__}: {exc}")
                # Its traffic goes to the champion, now and from here on.
                preds, scs = self._score(champion_model, [rows[i] for i in idx], len(reqs))
                for i in idx:
                    arms[i] = champion_model.arm
            for j, i in enumerate(idx):
                predictions[i], scores[i] = preds[j], scs[j]
                served[i] = snap.arms[arms[i]].model or champion_model
        now = time.time()
        out = []
        assert self.tokens is not None and self.writer is not None
        for i, req in enumerate(reqs):
            arm = arms[i]
            request_id = req.request_id or self.tokens.issue(arm, now)
            self.writer.add_decision(DecisionRow(request_id, arm, now, req.unit_id))
            self.metrics.pulls.labels(arm).inc()
            out.append(
                PredictResponse(
                    request_id=request_id,
                    arm=arm,
                    model=ModelRef(name=served[i].name, version=served[i].version),
                    prediction=predictions[i],
                    score=scores[i],
                )
            )
        self._maybe_shadow(snap, reqs, rows, out)
        return out

    def _score(
        self, model: ServingModel, rows: Sequence[Mapping[str, Any]], batch: int
    ) -> tuple[list[Any], list[float | None]]:
        start = time.perf_counter()
        ok = False
        try:
            result = model.predict(rows)
            ok = True
            return result
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.model_latency.labels(model.arm).observe(elapsed)
            self._guard(model.arm, elapsed / max(len(rows), 1), ok, max(len(rows), 1))

    def _no_model_reason(self, snap: PoolSnapshot) -> str:
        if snap.champion is None:
            why = snap.registry_error or (
                f"registered model {self.settings.model_name!r} has no {contract.CHAMPION!r} alias"
            )
            return f"no champion to serve: {why}"
        entry = snap.arms.get(snap.champion)
        return (
            f"the champion ({snap.champion}) cannot serve: {entry.error if entry else 'not loaded'}"
        )

    async def _choose(self, snap: PoolSnapshot, unit_id: str | None) -> str:
        arms = self.serving_arms(snap)
        if len(arms) == 1:
            return arms[0]
        if unit_id is not None:
            return await self._sticky_arm(snap, arms, unit_id)
        try:
            return self._next_choice(arms)
        except PolicyError as exc:
            self.metrics.errors.labels("policy", "").inc()
            _log.error("policy %r failed to choose, serving the champion: %s", self.policy, exc)
            return snap.champion  # type: ignore[return-value]

    def _next_choice(self, arms: list[str]) -> str:
        """Return the policy's next choice from the cached statistics.

        Between two refreshes the statistics do not change, so independent choices can be
        drawn in one vectorised call and handed out one per request (same distribution as
        one ``choose`` per request, a fraction of the cost).
        """
        key = tuple(arms)  # new statistics or a new policy empty self._draws
        if key != self._draw_key or not self._draws:
            stats = self._arm_stats(arms)
            choose_many = getattr(self.policy, "choose_indices", None)
            if choose_many is None:  # a third-party policy with only choose()
                return self.policy.choose(stats, self.rng)
            indices = choose_many(stats, self.rng, _DRAW_BATCH)
            self._draws = [arms[int(i)] for i in indices]
            self._draw_key = key
        return self._draws.pop()

    async def _sticky_arm(self, snap: PoolSnapshot, arms: list[str], unit_id: str) -> str:
        """Same unit, same arm (while the arm set holds); new units follow the allocation."""
        fingerprint = arm_set_fingerprint(arms)
        key = (unit_id, fingerprint)
        arm = self._units.get(key)
        if arm is None:
            arm = await asyncio.to_thread(self.store.unit_arm, unit_id, fingerprint)
            if arm is None:
                allocation = {a: self.allocation.get(a, 0.0) for a in arms}
                if sum(allocation.values()) <= 0:
                    allocation = dict.fromkeys(arms, 1.0)
                chosen = arm_at(unit_point(unit_id, fingerprint), allocation)
                # The first writer wins, so replicas agree even when they race.
                arm = await asyncio.to_thread(self.store.assign_unit, unit_id, fingerprint, chosen)
            self._units[key] = arm
            if len(self._units) > self.settings.unit_cache_size:
                self._units.popitem(last=False)
        return arm if arm in arms else snap.champion  # type: ignore[return-value]

    async def _lookup(self, entity: Mapping[str, Any] | None) -> dict[str, Any]:
        """Resolve an entity key to features through the Feast online store."""
        s = self.settings
        if s.feast_repo is None or not s.feast_feature_service:
            raise EntityLookupError(
                "entity lookups are not configured: set BANDITFLOW_FEAST_REPO and "
                "BANDITFLOW_FEAST_FEATURE_SERVICE, or send 'features' inline"
            )
        if self.feast is None:
            self.feast = await asyncio.to_thread(self._open_feast)
        store, service = self.feast

        def lookup() -> dict[str, Any]:
            result = store.get_online_features(features=service, entity_rows=[dict(entity or {})])
            return {k.split("__")[-1]: v[0] for k, v in result.to_dict().items()}

        values = await asyncio.to_thread(lookup)
        model = self.pool.snapshot.champion_model()
        names = [c.name for c in model.columns] if model else list(values)
        features = {n: values.get(n) for n in names}
        missing = [n for n, v in features.items() if v is None]
        if missing and model is not None:
            raise EntityLookupError(
                f"entity {dict(entity or {})} has no online values for {', '.join(missing)}",
                missing=missing,
            )
        return features

    def _open_feast(self) -> Any:
        from feast import FeatureStore  # lazy: importing Feast takes ~10 s

        store = FeatureStore(repo_path=str(self.settings.feast_repo))
        return store, store.get_feature_service(self.settings.feast_feature_service)

    # --- shadow ----------------------------------------------------------------------------
    def _maybe_shadow(
        self,
        snap: PoolSnapshot,
        reqs: Sequence[PredictRequest],
        rows: list[dict[str, Any]],
        out: list[PredictResponse],
    ) -> None:
        if not snap.shadows or self.settings.shadow_fraction <= 0:
            return
        picks = [i for i in range(len(reqs)) if self.rng.random() < self.settings.shadow_fraction]
        if not picks:
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow_score(snap, [rows[i] for i in picks], [out[i] for i in picks])
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow_score(
        self, snap: PoolSnapshot, rows: Sequence[Mapping[str, Any]], served: list[PredictResponse]
    ) -> None:
        for arm in snap.shadows:
            model = snap.arms[arm].model
            if model is None:
                continue
            try:
                model.check(rows[0])
                preds, scores = await asyncio.to_thread(model.predict, rows)
            except Exception as exc:
                self.metrics.errors.labels("shadow_predict", arm).inc()
                self.errors_by_arm[arm] += 1
                _log.warning("shadow arm %s failed to predict: %s", arm, exc)
                continue
            now = time.time()
            assert self.writer is not None
            for resp, pred, score in zip(served, preds, scores, strict=True):
                self.writer.add_shadow(
                    ShadowRow(
                        resp.request_id,
                        resp.arm,
                        arm,
                        resp.prediction,
                        pred,
                        resp.score,
                        score,
                        now,
                    )
                )
            self.metrics.shadow.labels(arm).inc(len(rows))

    # --- guardrails --------------------------------------------------------------------------
    def _guard(self, arm: str, latency_s: float, ok: bool, rows: int = 1) -> None:
        """Record ``rows`` predictions of one arm; pull it when it breaks a limit."""
        g = self._guards[arm]
        g.latencies.extend([latency_s] * min(rows, 500))
        g.failures.extend([not ok] * min(rows, 500))
        if not ok:
            self.errors_by_arm[arm] += 1
            self.metrics.errors.labels("predict", arm).inc()
        g.since_check += rows
        s = self.settings
        if g.since_check < 25 or len(g.latencies) < s.guardrail_min_requests:
            return
        g.since_check = 0
        error_rate = sum(g.failures) / len(g.failures)
        p99_ms = float(np.percentile(np.fromiter(g.latencies, float), 99)) * 1000
        snap = self.pool.snapshot
        if arm == snap.champion:
            return  # the champion is the fallback: report, never pull it
        if error_rate > s.guardrail_max_error_rate:
            self._pull(
                arm, f"guardrail: error rate {error_rate:.3f} > {s.guardrail_max_error_rate}"
            )
        elif p99_ms > s.guardrail_max_p99_ms:
            self._pull(arm, f"guardrail: p99 latency {p99_ms:.1f} ms > {s.guardrail_max_p99_ms} ms")

    def _pull(self, arm: str, reason: str) -> None:
        """Take an arm out of rotation at once, here and (through the store) in every replica."""
        if self.pool.pull(arm, reason):
            _log.warning("arm %s out of rotation: %s", arm, reason)
            self.metrics.out_of_rotation.labels(arm).set(1)
            self.metrics.errors.labels("pulled", arm).inc()
            self._update_allocation()
            pulled = dict(self.pool.pulled)
            self._spawn(asyncio.to_thread(self.store.set_config, "pulled", pulled))

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a sync caller): run it now
            asyncio.run(coro)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- feedback ----------------------------------------------------------------------------
    def check_reward(self, reward: float) -> None:
        if not math.isfinite(reward):
            raise RewardOutOfRange(f"reward must be a finite number, got {reward}")
        bounds = self.policy.reward_range
        if bounds is not None and not (bounds[0] <= reward <= bounds[1]):
            raise RewardOutOfRange(
                f"reward {reward} is outside [{bounds[0]}, {bounds[1]}], the range of policy "
                f"{self.policy.name!r} ({self.policy.reward_kind} rewards)"
            )

    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        result = (await self.feedback_many([req]))[0]
        if result.status == "unknown":
            raise UnknownRequest(
                f"unknown request_id {req.request_id!r}: no prediction was recorded under it"
            )
        if result.status == "window_closed":
            raise FeedbackWindowClosed(
                f"feedback for {req.request_id!r} came after the "
                f"{self.settings.feedback_window_s:.0f} s window closed"
            )
        return result

    async def feedback_many(self, reqs: Sequence[FeedbackRequest]) -> list[FeedbackResponse]:
        """Record rewards durably (one group commit) and say, per row, what happened."""
        for i, req in enumerate(reqs):
            try:
                self.check_reward(req.reward)
            except RewardOutOfRange as exc:
                if len(reqs) > 1:
                    exc.message = f"row {i}: {exc.message}"
                raise
        assert self.tokens is not None and self.writer is not None
        now = time.time()
        results: list[FeedbackResponse | None] = [None] * len(reqs)
        to_write: list[tuple[int, FeedbackRow]] = []
        for i, req in enumerate(reqs):
            token = self.tokens.verify(req.request_id)
            arm = None
            if token is not None:
                arm, issued = token
                if now - issued > self.settings.feedback_window_s:
                    results[i] = FeedbackResponse(
                        request_id=req.request_id, status="window_closed", arm=arm
                    )
                    continue
            to_write.append((i, FeedbackRow(req.request_id, float(req.reward), arm, now)))
        if to_write:
            statuses = await self.writer.submit_feedback([row for _, row in to_write])
            for (i, row), (status, arm) in zip(to_write, statuses, strict=True):
                results[i] = FeedbackResponse(
                    request_id=row.request_id,
                    status=status,  # type: ignore[arg-type]
                    arm=arm,
                )
                if status == "accepted" and arm is not None:
                    self.metrics.feedback.labels(arm).inc()
                    self.metrics.rewards.labels(arm).inc(max(row.reward, 0.0))
                elif status == "duplicate":
                    self.metrics.duplicates.inc()
        return [r for r in results if r is not None]

    async def expire_decisions(self) -> int:
        s = self.settings
        return await asyncio.to_thread(
            self.store.expire,
            time.time() - s.feedback_window_s,
            mode=s.expired,
            default_reward=s.expired_reward,
            discount=self.policy.discount,
        )

    # --- reports -----------------------------------------------------------------------------
    async def arms_report(self) -> ArmsResponse:
        stats, traffic, shadow = await asyncio.to_thread(self._report_reads)
        self.stats = stats
        self._draws = []
        snap = self.pool.snapshot
        self._update_allocation()
        serving = self.serving_arms(snap)
        summary = self._posterior(serving)
        total_traffic = sum(traffic.get(a, 0) for a in snap.arms) or 0
        reports = []
        for arm, entry in sorted(snap.arms.items()):
            s = stats.get(arm)
            sm = summary.get(arm, {})
            reports.append(
                ArmReport(
                    arm=arm,
                    model=ModelRef(name=self.settings.model_name, version=entry.version),
                    role=entry.role,
                    in_rotation=arm in serving,
                    out_of_rotation_reason=entry.error,
                    served=s.served if s else 0,
                    pulls=s.pulls if s else 0.0,
                    outcomes=s.outcomes if s else 0,
                    reward_sum=s.reward_sum if s else 0.0,
                    mean=(s.reward_sum / s.pulls) if s and s.pulls > 0 else None,
                    traffic_share=(traffic.get(arm, 0) / total_traffic) if total_traffic else None,
                    intended_share=self.allocation.get(arm, 0.0) if arm in serving else 0.0,
                    p_best=sm.get("p_best"),
                    expected_loss=sm.get("expected_loss"),
                    errors=self.errors_by_arm.get(arm, 0),
                    shadow=ShadowComparison(**shadow[arm]) if arm in shadow else None,
                )
            )
        return ArmsResponse(
            model_name=self.settings.model_name,
            policy=self.policy.name,
            policy_params=_jsonable(self.policy.params),
            frozen=self.frozen,
            auto_decisions=self.settings.auto_decisions,
            share_window_s=self.settings.share_window_s,
            arms=reports,
            recommendations=self.recommendations,
        )

    def _report_reads(self) -> tuple[dict[str, StoredStats], dict[str, int], dict[str, Any]]:
        since = time.time() - self.settings.share_window_s
        return self.store.read_stats(), self.store.traffic(since), self.store.shadow_summary()

    def _posterior(self, arms: Sequence[str]) -> dict[str, dict[str, float]]:
        if not arms:
            return {}
        from rollout.decide import posterior_summary

        try:
            summary = posterior_summary(
                self._arm_stats(arms),
                reward_kind=self.policy.reward_kind,
                rng=np.random.default_rng(0),
            )
        except Exception as exc:  # a report never fails on the Monte-Carlo step
            _log.error("posterior summary failed: %s", exc)
            return {}
        return {arm: _summary_dict(value) for arm, value in _items(summary)}

    async def history(self, minutes: float, buckets: int) -> dict[str, Any]:
        """Traffic share over time and cumulative reward per arm, for the dashboard."""
        bucket_s = max(minutes * 60.0 / max(buckets, 1), 1.0)
        since = time.time() - minutes * 60.0
        raw = await asyncio.to_thread(self.store.history, since, bucket_s)
        served: dict[float, dict[str, int]] = defaultdict(dict)
        for t, arm, n in raw["served"]:
            served[t][arm] = n
        cumulative = dict(raw["reward_before"])
        rewards: list[dict[str, Any]] = []
        by_time: dict[float, list[tuple[str, float]]] = defaultdict(list)
        for t, arm, total, _n in raw["rewards"]:
            by_time[t].append((arm, total))
        for t in sorted(by_time):
            for arm, total in by_time[t]:
                cumulative[arm] = cumulative.get(arm, 0.0) + total
            rewards.append({"t": t, "cumulative": dict(cumulative)})
        share = []
        for t in sorted(served):
            total = sum(served[t].values())
            share.append({"t": t, "share": {a: n / total for a, n in served[t].items()}})
        return {"bucket_s": bucket_s, "traffic": share, "rewards": rewards}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        snap = self.pool.snapshot
        store_ok = True
        store_detail = "ok"
        try:
            self.store.ping()
        except Exception as exc:
            store_ok, store_detail = False, f"{type(exc).__name__}: {exc}"[:300]
        models = {
            arm: {
                "version": e.version,
                "role": e.role,
                "loaded": e.model is not None,
                "in_rotation": e.serving,
                "error": e.error,
                "flavour": e.model.flavour if e.model else None,
            }
            for arm, e in sorted(snap.arms.items())
        }
        champion_ok = snap.champion_model() is not None
        ready = store_ok and champion_ok and self.started
        detail: dict[str, Any] = {
            "ready": ready,
            "champion": snap.champion,
            "models": models,
            "store": store_detail,
        }
        if not champion_ok:
            detail["reason"] = self._no_model_reason(snap)
        if snap.registry_error:
            detail["registry"] = snap.registry_error
        return ready, detail

    # --- decisions ---------------------------------------------------------------------------
    def decision_rule(self) -> Any:
        from rollout.decide import DecisionRule

        return DecisionRule(**self.settings.decision_params)

    async def run_decisions(self) -> list[Recommendation]:
        """Apply the decision rule; act on it when automatic decisions are on."""
        from rollout.decide import decide

        await self.refresh_state()
        snap = self.pool.snapshot
        if snap.champion is None or self.frozen:
            self.recommendations = []
            return []
        challengers = [a for a in snap.rotation if a != snap.champion]
        if not challengers:
            self.recommendations = []
            return []
        stats = {s.arm: s for s in self._arm_stats([snap.champion, *challengers])}
        decisions = decide(
            stats[snap.champion],
            [stats[a] for a in challengers],
            self.rule,
            np.random.default_rng(self.settings.seed),
            reward_kind=self.policy.reward_kind,
        )
        recs = []
        for d in decisions:
            rec = Recommendation(action=str(d.action), arm=d.arm, reason=d.reason)
            if self.settings.auto_decisions and rec.action in ("promote", "retire", "rollback"):
                try:
                    await self._act(rec)
                    rec.applied = True
                except Exception as exc:
                    _log.error("could not %s %s: %s", rec.action, rec.arm, exc)
            recs.append(rec)
        self.recommendations = recs
        return recs

    async def _act(self, rec: Recommendation) -> None:
        if rec.action == "promote":
            await self.promote(rec.arm, f"auto: {rec.reason}")
        elif rec.action == "retire":
            await self.retire_arm(rec.arm, f"auto: {rec.reason}")
        elif rec.action == "rollback":
            await self.rollback(f"auto: {rec.reason}")

    # --- admin -------------------------------------------------------------------------------
    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(
            tracking_uri=self.settings.tracking_uri, registry_uri=self.settings.registry_uri
        )

    def _version_exists(self, version: str) -> None:
        try:
            self._client().get_model_version(self.settings.model_name, version)
        except Exception as exc:
            raise UnknownArm(
                f"model {self.settings.model_name!r} has no version {version}: {exc}"
            ) from exc

    async def add_arm(self, version: str, *, shadow: bool) -> dict[str, Any]:
        """Add a version as the next challenger (live traffic) or as a shadow arm."""
        version = version_of(version)
        arm = arm_name(version)
        snap = self.pool.snapshot
        if arm in snap.arms and snap.arms[arm].role != "shadow" and not shadow:
            raise Conflict(f"{arm} is already in the rollout as {snap.arms[arm].role}")

        def work() -> dict[str, Any]:
            self._version_exists(version)
            config = self.store.read_config()
            pulled = {k: v for k, v in config.get("pulled", {}).items() if k != arm}
            self.store.set_config("pulled", pulled)
            shadows = [str(v) for v in config.get("shadow", []) if str(v) != version]
            if shadow:
                if snap.arms.get(arm) is not None and snap.arms[arm].role != "shadow":
                    raise Conflict(f"{arm} takes live traffic; retire it before shadowing it")
                self.store.set_config("shadow", [*shadows, version])
                return {"arm": arm, "role": "shadow"}
            self.store.set_config("shadow", shadows)
            client = self._client()
            aliases = contract.aliases_of(client, self.settings.model_name)
            taken = {int(a.split("-")[1]) for a in aliases if contract.is_challenger_alias(a)}
            n = next(i for i in range(1, len(taken) + 2) if i not in taken)
            alias = contract.challenger_alias(n)
            client.set_registered_model_alias(self.settings.model_name, alias, version)
            client.set_model_version_tag(
                self.settings.model_name, version, contract.TAG_ROLE, alias
            )
            contract.record_event(
                client, self.settings.model_name, version, "added", f"rollout: {alias}"
            )
            return {"arm": arm, "role": alias}

        result = await asyncio.to_thread(work)
        await self._reload()
        return result

    async def retire_arm(self, arm: str, reason: str) -> dict[str, Any]:
        """Remove a challenger (its alias) or a shadow arm from the rollout."""
        version = version_of(arm)
        arm = arm_name(version)
        snap = self.pool.snapshot
        entry = snap.arms.get(arm)
        if entry is None:
            raise UnknownArm(f"{arm} is not in the rollout; arms: {', '.join(sorted(snap.arms))}")
        if entry.role == contract.CHAMPION:
            raise Conflict(f"{arm} is the champion: promote another version or roll back first")

        def work() -> None:
            if entry.role == "shadow":
                config = self.store.read_config()
                shadows = [str(v) for v in config.get("shadow", []) if str(v) != version]
                self.store.set_config("shadow", shadows)
                return
            client = self._client()
            for alias, held in contract.aliases_of(client, self.settings.model_name).items():
                if held == version and contract.is_challenger_alias(alias):
                    client.delete_registered_model_alias(self.settings.model_name, alias)
            client.set_model_version_tag(
                self.settings.model_name, version, contract.TAG_ROLE, "retired"
            )
            contract.record_event(client, self.settings.model_name, version, "retired", reason)

        await asyncio.to_thread(work)
        await self._reload()
        return {"arm": arm, "retired": True, "reason": reason}

    async def promote(self, arm: str, reason: str) -> dict[str, Any]:
        version = version_of(arm)
        await asyncio.to_thread(self._version_exists, version)
        result = await asyncio.to_thread(
            contract.promote, self._client(), self.settings.model_name, version, reason
        )
        await self._reload()
        await self._emit(contract.EVENT_ROLLOUT_PROMOTED, version, reason, result)
        return result

    async def rollback(self, reason: str) -> dict[str, Any]:
        try:
            result = await asyncio.to_thread(
                contract.rollback, self._client(), self.settings.model_name, reason
            )
        except contract.NoChampionToRestore as exc:
            raise Conflict(str(exc)) from exc
        await self._reload()
        await self._emit(contract.EVENT_ROLLOUT_ROLLED_BACK, result["champion"], reason, result)
        return result

    async def set_policy(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            policy = get_policy(name, **params)
        except PolicyError as exc:
            raise BadInput(str(exc)) from exc
        stored = {"name": name, "params": params}
        await asyncio.to_thread(self.store.set_config, "policy", stored)
        self.policy, self._policy_source = policy, stored
        self._draws = []
        self._allocation_key = None
        self._update_allocation()
        return {"policy": name, "params": _jsonable(policy.params)}

    async def set_frozen(self, frozen: bool) -> dict[str, Any]:
        await asyncio.to_thread(self.store.set_config, "frozen", frozen)
        self.frozen = frozen
        self._allocation_key = None
        self._update_allocation()
        return {"frozen": frozen}

    async def restore_arm(self, arm: str) -> dict[str, Any]:
        """Put a pulled arm back into rotation."""
        arm = arm_name(version_of(arm))
        if arm not in self.pool.pulled:
            raise Conflict(f"{arm} is not out of rotation")

        def work() -> None:
            config = self.store.read_config()
            pulled = {k: v for k, v in config.get("pulled", {}).items() if k != arm}
            self.store.set_config("pulled", pulled)

        await asyncio.to_thread(work)
        self._guards.pop(arm, None)
        self.metrics.out_of_rotation.labels(arm).set(0)
        await self._reload()
        return {"arm": arm, "in_rotation": True}

    async def _reload(self) -> None:
        await asyncio.to_thread(self._load_state)
        await asyncio.to_thread(self.pool.refresh)
        self._allocation_key = None
        self._update_allocation()

    async def _emit(self, event: str, version: str, reason: str, result: dict[str, Any]) -> None:
        """POST a Prefect event to <api>/events (no Prefect import); failures are logged."""
        url = self.settings.prefect_api_url
        if not url:
            return
        import httpx

        body = [
            {
                "occurred": datetime.now(UTC).isoformat(),
                "event": event,
                "resource": {
                    "prefect.resource.id": contract.model_resource_id(
                        self.settings.model_name, version
                    ),
                    "prefect.resource.name": self.settings.model_name,
                },
                "related": [],
                "payload": {"reason": reason, **_jsonable(result)},
                "id": str(uuid.uuid4()),
            }
        ]
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(url.rstrip("/") + "/events", json=body)
                response.raise_for_status()
        except Exception as exc:
            self.metrics.errors.labels("event", "").inc()
            _log.error("could not emit %s to %s: %s", event, url, exc)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _items(summary: Any) -> list[tuple[str, Any]]:
    if isinstance(summary, Mapping):
        return list(summary.items())
    return [(getattr(s, "arm"), s) for s in summary]  # noqa: B009


def _summary_dict(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {k: float(v) for k, v in value.items() if isinstance(v, int | float)}
    return {
        k: float(getattr(value, k))
        for k in ("mean", "p_best", "expected_loss")
        if hasattr(value, k)
    }
