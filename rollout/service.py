"""The rollout service's core: cached state, the allocation, and the predict path.

The hot path (``predict``) reads only memory: arm statistics and the runtime configuration
are cached and refreshed from the store on a background task, the request id is a signed
token naming the arm, and decisions reach the database through a background writer
(rollout.writer). The other jobs live in their own modules and take the service as their
first argument: feedback, reports, decisions, admin, shadow, sticky, lookup, guardrails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import numpy as np

import contract
from rollout import baselines, decisions, feedback, lifecycle, scoring, segments
from rollout.errors import BadInput, NoModelAvailable
from rollout.guardrails import Guardrails
from rollout.lookup import EntityLookup
from rollout.metrics import Metrics
from rollout.policies import ArmStats, Policy, PolicyError, get_policy
from rollout.pool import ModelPool, PoolSnapshot, ServingModel
from rollout.request_ids import ClientIds
from rollout.schemas import (
    PredictRequest,
    PredictResponse,
    Recommendation,
)
from rollout.settings import RolloutSettings
from rollout.shadow import maybe_shadow
from rollout.sticky import StickyUnits
from rollout.store import Store, StoredStats
from rollout.tokens import RequestTokens
from rollout.writer import GroupCommitWriter

_log = logging.getLogger(__name__)
_DRAW_BATCH = 256  # policy choices drawn at once from one snapshot of the statistics
Clock = Callable[[], float]


class RolloutService:
    """Everything the routes call. Build with settings; ``await start()`` before use.

    ``clock`` (epoch seconds) stamps decisions and feedback and closes feedback windows:
    tests pass one they advance by hand.
    """

    def __init__(
        self,
        settings: RolloutSettings,
        *,
        pool: ModelPool | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = Store(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        self.pool = pool or ModelPool(
            model_name=settings.model_name,
            tracking_uri=settings.tracking_uri,
            registry_uri=settings.registry_uri,
            cache_dir=settings.home / "rollout-models",
            retry_base_s=settings.model_retry_base_s,
            retry_max_s=settings.model_retry_max_s,
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
        self.guardrails = Guardrails(
            max_error_rate=settings.guardrail_max_error_rate,
            max_p99_ms=settings.guardrail_max_p99_ms,
            min_requests=settings.guardrail_min_requests,
            min_failures=settings.guardrail_min_failures,
        )
        self.units = StickyUnits(self.store, cache_size=settings.unit_cache_size)
        self.client_ids = ClientIds(self.store, cache_size=settings.unit_cache_size)
        self.lookup = EntityLookup(
            settings.feast_repo_path, settings.feast_feature_service, home=settings.home
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.background_tasks: set[asyncio.Task[Any]] = set()
        self.tokens: RequestTokens | None = None
        self.writer: GroupCommitWriter | None = None
        self.started = False
        self.store_error: str | None = None
        self.rule: Any = None

    # --- lifecycle (rollout.lifecycle) -------------------------------------------------------
    async def start(self) -> None:
        """Create the schema, load models and state, and start the background tasks."""
        await lifecycle.start(self)

    async def stop(self) -> None:
        await lifecycle.stop(self)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background (awaited at stop)."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a sync caller): run it now
            asyncio.run(coro)
            return
        self.background_tasks.add(task)
        task.add_done_callback(self.background_tasks.discard)

    async def settle(self) -> None:
        """Wait until the background work spawned so far (shadow scoring, ...) has finished."""
        while self.background_tasks:
            await asyncio.gather(*list(self.background_tasks), return_exceptions=True)

    # --- cached state ------------------------------------------------------------------------
    def load_state(self) -> None:
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
        await asyncio.to_thread(self.load_state)
        self._update_allocation()

    async def refresh_models(self) -> None:
        if await asyncio.to_thread(self.pool.refresh):
            self._update_allocation()
            await asyncio.to_thread(baselines.notice, self)  # a challenger joined: its pair

    async def reload(self) -> None:
        """Re-read state and aliases after an admin write, and recompute the allocation."""
        await asyncio.to_thread(self.load_state)
        await asyncio.to_thread(self.pool.refresh)
        self.reallocate()
        await asyncio.to_thread(baselines.notice, self)

    def set_stats(self, stats: dict[str, StoredStats]) -> None:
        self.stats = stats
        self._draws = []
        self._update_allocation()

    def use_policy(self, policy: Policy, stored: Any) -> None:
        self.policy, self._policy_source = policy, stored
        self._draws = []
        self.reallocate()

    def arm_stats(self, arms: Sequence[str]) -> list[ArmStats]:
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

    def anchor(self, snap: PoolSnapshot) -> ServingModel | None:
        """The arm every fallback goes to: the champion, or while it cannot load the best
        loaded arm in rotation (highest mean reward so far); None when nothing can serve."""
        model = snap.champion_model()
        if model is not None or snap.champion is None:
            return model
        loaded = [a for a in snap.rotation if a != snap.champion]
        if not loaded:
            return None
        best = max(loaded, key=lambda a: (self._mean(a), a))
        return snap.arms[best].model

    def _mean(self, arm: str) -> float:
        s = self.stats.get(arm)
        return s.reward_sum / s.pulls if s is not None and s.pulls > 0 else float("-inf")

    def serving_arms(self, snap: PoolSnapshot) -> list[str]:
        anchor = self.anchor(snap)
        if anchor is None:
            return []
        if self.frozen:
            return [anchor.arm]
        return snap.rotation

    def reallocate(self) -> None:
        """Recompute the allocation even if nothing it depends on seems to have changed."""
        self._allocation_key = None
        self._update_allocation()

    def _update_allocation(self) -> None:
        snap = self.pool.snapshot
        arms = self.serving_arms(snap)
        key = (tuple(arms), tuple(self.arm_stats(arms)), repr(self.policy))
        if key == self._allocation_key or not arms:
            if not arms:
                self.allocation = {}
            return
        try:
            self.allocation = self.policy.allocation(self.arm_stats(arms), self.rng)
        except PolicyError as exc:
            _log.error("policy %r cannot allocate over %s: %s", self.policy, arms, exc)
            anchor = self.anchor(snap)
            self.allocation = {anchor.arm: 1.0} if anchor is not None else {}
        self._allocation_key = key

    # --- predict ---------------------------------------------------------------------------
    async def predict(self, req: PredictRequest) -> PredictResponse:
        return (await self.predict_many([req]))[0]

    async def predict_many(self, reqs: Sequence[PredictRequest]) -> list[PredictResponse]:
        """Route each row to an arm, score it, and queue the decisions; 422 names bad rows."""
        snap = self.pool.snapshot
        anchor = self.anchor(snap)
        if anchor is None:
            self.metrics.errors.labels("no_model", "").inc()
            raise NoModelAvailable(self.no_model_reason(snap))
        rows = await self._checked_rows(snap, anchor, reqs)
        serving = self.serving_arms(snap)
        arms = await self._choose_many(serving, anchor.arm, reqs, rows)
        reused = await self.client_ids.reuse(reqs, arms, serving, anchor.arm)
        chosen = list(arms)  # the policy's choices, before any failure re-routes a row
        predictions, scores, served = scoring.score_by_arm(self, snap, anchor, rows, arms)
        now = self.clock()
        out = []
        assert self.tokens is not None and self.writer is not None
        for i, req in enumerate(reqs):
            arm = arms[i]
            request_id = req.request_id or self.tokens.issue(arm, now)
            if i not in reused:  # one decision per request id: a reused id is not served twice
                self.writer.add_decision(
                    segments.decision(self, request_id, arm, now, req, rows[i], chosen[i])
                )
                scoring.arm_metrics(self, arm).pulls.inc()
                if req.request_id is not None:
                    self.client_ids.remember(request_id, arm, now)
            # Every field is built here from checked values: no second validation.
            out.append(
                PredictResponse.model_construct(
                    request_id=request_id,
                    arm=arm,
                    model=served[i].ref,
                    prediction=predictions[i],
                    score=scores[i],
                )
            )
        maybe_shadow(self, snap, rows, out)
        return out

    async def _checked_rows(
        self, snap: PoolSnapshot, champion: ServingModel, reqs: Sequence[PredictRequest]
    ) -> list[dict[str, Any]]:
        """Resolve entities and check every row against the models; 422 names the bad row."""
        rows: list[dict[str, Any]] = []
        names = [c.name for c in champion.columns]
        entities = [r.entity for r in reqs if r.features is None]
        looked_up = iter(await self.lookup.features_many(entities, names) if entities else [])
        for i, req in enumerate(reqs):
            features = req.features if req.features is not None else next(looked_up)
            try:
                snap.check_row(features, champion)
            except BadInput as exc:
                if len(reqs) > 1:
                    exc.message = f"row {i}: {exc.message}"
                raise
            rows.append(features)
        return rows

    def pull(self, arm: str, reason: str) -> None:
        """Take an arm out of rotation at once, here and (through the store) in every replica."""
        if self.pool.pull(arm, reason):
            _log.warning("arm %s out of rotation: %s", arm, reason)
            self.metrics.out_of_rotation.labels(arm).set(1)
            self.metrics.errors.labels("pulled", arm).inc()
            self._update_allocation()
            pulled = dict(self.pool.pulled)
            self.spawn(asyncio.to_thread(self.store.set_config, "pulled", pulled))

    def no_model_reason(self, snap: PoolSnapshot) -> str:
        if snap.champion is None:
            why = snap.registry_error or (
                f"registered model {self.settings.model_name!r} has no {contract.CHAMPION!r} alias"
            )
            return f"no champion to serve: {why}"
        entry = snap.arms.get(snap.champion)
        return (
            f"the champion ({snap.champion}) cannot serve: {entry.error if entry else 'not loaded'}"
        )

    async def _choose_many(
        self,
        arms: list[str],
        anchor: str,
        reqs: Sequence[PredictRequest],
        rows: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """Return the arm of each row among ``arms`` (``serving_arms`` of the request):
        a unit's sticky arm (the request's units in one trip to the store), else the
        policy's choice, drawn in row order."""
        if len(arms) == 1:
            return [arms[0]] * len(reqs)
        sticky = [i for i, r in enumerate(reqs) if r.unit_id is not None]
        units = [str(reqs[i].unit_id) for i in sticky]
        held = await self.units.arms_for(units, arms, self.allocation, anchor) if units else []
        chosen = dict(zip(sticky, held, strict=True))
        return [
            chosen[i] if i in chosen else self._choose(arms, anchor, rows[i])
            for i in range(len(reqs))
        ]

    def _choose(self, arms: list[str], anchor: str, row: Mapping[str, Any]) -> str:
        """Return the policy's arm for one row without a unit id."""
        try:
            return segments.contextual_choice(self, arms, row) or self._next_choice(arms)
        except PolicyError as exc:
            self.metrics.errors.labels("policy", "").inc()
            _log.error("policy %r failed to choose, serving the champion: %s", self.policy, exc)
            return anchor

    def _next_choice(self, arms: list[str]) -> str:
        """Return the policy's next choice from the cached statistics.

        Between two refreshes the statistics do not change, so independent choices can be
        drawn in one vectorised call and handed out one per request (same distribution as
        one ``choose`` per request, a fraction of the cost).
        """
        key = tuple(arms)  # new statistics or a new policy empty self._draws
        if key != self._draw_key or not self._draws:
            stats = self.arm_stats(arms)
            choose_many = getattr(self.policy, "choose_indices", None)
            if choose_many is None:  # a third-party policy with only choose()
                return self.policy.choose(stats, self.rng)
            indices = choose_many(stats, self.rng, _DRAW_BATCH)
            self._draws = [arms[int(i)] for i in indices]
            self._draw_key = key
        return self._draws.pop()

    # --- the other jobs, for the background loops -------------------------------------------
    async def expire_decisions(self) -> int:
        """Settle decisions past the feedback window, and forget sticky units past their TTL."""
        await asyncio.to_thread(self.units.expire, self.clock() - self.settings.unit_ttl_s)
        return await feedback.expire_decisions(self)

    async def run_decisions(self) -> list[Recommendation]:
        return await decisions.run_decisions(self)
