"""Shadow scoring: shadow arms score a fraction of requests off the response path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout.pool import PoolSnapshot
from rollout.schemas import PredictResponse
from rollout.store import ShadowRow

if TYPE_CHECKING:
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)


def maybe_shadow(
    svc: RolloutService,
    snap: PoolSnapshot,
    rows: list[dict[str, Any]],
    out: list[PredictResponse],
) -> None:
    """Pick the rows shadow arms score (``shadow_fraction``) and score them in the background."""
    if not snap.shadows or svc.settings.shadow_fraction <= 0:
        return
    picks = [i for i in range(len(rows)) if svc.rng.random() < svc.settings.shadow_fraction]
    if picks:
        svc.spawn(shadow_score(svc, snap, [rows[i] for i in picks], [out[i] for i in picks]))


async def shadow_score(
    svc: RolloutService,
    snap: PoolSnapshot,
    rows: Sequence[Mapping[str, Any]],
    served: list[PredictResponse],
) -> None:
    """Score ``rows`` with every shadow arm and queue one comparison row per pair."""
    assert svc.writer is not None
    for arm in snap.shadows:
        model = snap.arms[arm].model
        if model is None:
            continue
        try:
            model.check(rows[0])
            preds, scores = await asyncio.to_thread(model.predict, rows)
        except Exception as exc:
            svc.metrics.errors.labels("shadow_predict", arm).inc()
            svc.errors_by_arm[arm] += 1
            _log.warning("shadow arm %s failed to predict: %s", arm, exc)
            continue
        now = svc.clock()
        for resp, pred, score in zip(served, preds, scores, strict=True):
            svc.writer.add_shadow(
                ShadowRow(
                    resp.request_id, resp.arm, arm, resp.prediction, pred, resp.score, score, now
                )
            )
        svc.metrics.shadow.labels(arm).inc(len(rows))
