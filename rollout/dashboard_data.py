"""What the dashboard shows beyond /arms: each challenger against the champion, the registry's
promotions and rollbacks, MLflow links, and posterior curves, all computed server-side.

Every number comes from the functions the decision rule itself uses (``rollout.decide``:
the policy's posterior draws, the head-to-head P(best), the mSPRT evidence), on the same
plain sums (``rollout.decisions.plain``), so the page shows what the rule sees.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from fastapi import Request

import contract
from rollout import admin, decisions
from rollout.models import arm_name

if TYPE_CHECKING:
    from rollout.policies import ArmStats
    from rollout.service import RolloutService

_log = logging.getLogger(__name__)
REGISTRY_TTL_S = 5.0  # the registry is read at most this often per service (MLflow is slow)
CURVE_BINS = 60
INTERVAL = (0.025, 0.975)


@dataclass
class _RegistryCache:
    read_at: float = -math.inf
    value: dict[str, Any] = field(default_factory=dict)


_CACHE: weakref.WeakKeyDictionary[Any, _RegistryCache] = weakref.WeakKeyDictionary()


async def route(request: Request) -> dict[str, Any]:
    """Each challenger against the champion, the registry's decisions and links (the page)."""
    return await dashboard_data(request.app.state.service)


async def dashboard_data(svc: RolloutService) -> dict[str, Any]:
    """Return the challengers' comparison, the registry markers and links, the curves."""
    stats = await asyncio.to_thread(svc.store.read_stats)
    svc.set_stats(stats)
    snap = svc.pool.snapshot
    registry = await _registry(svc)
    champion = snap.champion
    serving = svc.serving_arms(snap)
    comparisons: list[dict[str, Any]] = []
    curves: dict[str, Any] = {"x": [], "density": {}}
    error = None
    try:  # like /arms, the page never fails on the Monte-Carlo step: it says why instead
        if champion is not None and champion in serving:
            replaced = decisions._watched(svc, champion).get("replaced")
            challengers = [a for a in snap.rotation if a not in (champion, replaced)]
            comparisons = [compare(svc, champion, ch, len(challengers)) for ch in challengers]
        curves = posterior_curves(svc, serving)
    except Exception as exc:
        _log.error("dashboard: posterior step failed: %s", exc)
        error = f"posterior unavailable ({type(exc).__name__}: {str(exc)[:200]})"
    return decisions._finite(
        {
            "now": svc.clock(),
            "model_name": svc.settings.model_name,
            "champion": champion,
            "rule": _rule_dict(svc),
            "comparisons": comparisons,
            "curves": curves,
            "posterior_error": error,
            "markers": registry.get("markers", []),
            "links": registry.get("links", {}),
            "registry_error": registry.get("error"),
        }
    )


def _rule_dict(svc: RolloutService) -> dict[str, Any]:
    rule = svc.rule
    return {
        "min_outcomes": rule.min_outcomes,
        "p_best_threshold": rule.p_best_threshold,
        "max_expected_loss": rule.max_expected_loss,
        "false_promotion_rate": rule.false_promotion_rate,
    }


def compare(svc: RolloutService, champion: str, challenger: str, n_challengers: int) -> dict:
    """Return a challenger's uplift, chance to beat the champion and progress to a decision.

    Chance to beat is the head-to-head P(best) the rule promotes on; the evidence is the
    rule's mSPRT e-value against its bar ``n_challengers / false_promotion_rate`` (the
    Bonferroni split of ``rollout.decide.decide``).
    """
    from rollout.decide import (
        log_promotion_bar,
        log_superiority_evidence,
        posterior_draws,
        posterior_summary,
    )

    rule = svc.rule
    a, b = decisions.plain(svc, champion), decisions.plain(svc, challenger)
    rng = np.random.default_rng(svc.settings.seed or 0)
    pair = [a, b]
    summary = posterior_summary(pair, rng=rng, draws=rule.draws, policy=svc.policy)
    draws = posterior_draws(pair, rng=rng, draws=rule.draws, policy=svc.policy)
    diff = draws[:, 1] - draws[:, 0]
    base = draws[:, 0]
    relative = np.where(np.abs(base) > 1e-12, diff / np.where(base == 0, 1.0, np.abs(base)), 0.0)
    log_e = float(
        log_superiority_evidence(
            a,
            b,
            reward_kind=svc.policy.reward_kind,
            mixture_scale=rule.mixture_scale,
            margin=rule.min_improvement,
        )
    )
    log_bar = log_promotion_bar(rule, n_challengers)
    outcomes = min(a.pulls, b.pulls)
    return {
        "arm": challenger,
        "champion": champion,
        "uplift": _interval(diff),
        "relative_uplift": _interval(relative),
        "chance_to_beat": summary[challenger].p_best,
        "expected_loss": summary[challenger].expected_loss,
        "outcomes": {"challenger": b.pulls, "champion": a.pulls, "needed": rule.min_outcomes},
        "progress": {
            "outcomes": min(outcomes / rule.min_outcomes, 1.0),
            # log e-value over the log bar: 1 is the promotion threshold (0 below no evidence).
            "evidence": max(log_e, 0.0) / log_bar if log_bar > 0 else None,
            "e_value": math.exp(min(log_e, 700.0)),
            "bar": math.exp(log_bar),
        },
        "recommendation": _recommendation_of(svc, challenger),
    }


def _interval(x: np.ndarray) -> dict[str, float]:
    low, high = np.quantile(x, INTERVAL)
    return {"mean": float(x.mean()), "low": float(low), "high": float(high)}


def _recommendation_of(svc: RolloutService, arm: str) -> str | None:
    for rec in svc.recommendations:
        if rec.arm == arm:
            return f"{rec.action}{' (applied)' if rec.applied else ''}: {rec.reason}"
    return None


def posterior_curves(svc: RolloutService, arms: list[str]) -> dict[str, Any]:
    """Return each arm's posterior density of its mean reward on one shared grid.

    A histogram of the policy's own posterior draws (``rollout.decide.posterior_draws``),
    so the page draws the posterior the bandit samples from, for any reward kind.
    """
    from rollout.decide import posterior_draws

    if not arms:
        return {"x": [], "density": {}}
    stats: list[ArmStats] = [decisions.plain(svc, a) for a in arms]
    rng = np.random.default_rng(0)
    draws = posterior_draws(stats, rng=rng, draws=svc.rule.draws, policy=svc.policy)
    low, high = np.quantile(draws, [0.001, 0.999])
    if not high > low:
        high = low + 1e-6
    edges = np.linspace(low, high, CURVE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    density = {
        arm: np.histogram(draws[:, i], bins=edges, density=True)[0].tolist()
        for i, arm in enumerate(arms)
    }
    return {"x": centres.tolist(), "density": density}


async def _registry(svc: RolloutService) -> dict[str, Any]:
    """Return the registry's history markers and links, re-read at most every few seconds."""
    cache = _CACHE.setdefault(svc, _RegistryCache())
    if time.monotonic() - cache.read_at >= REGISTRY_TTL_S:
        try:
            cache.value = await asyncio.to_thread(read_registry, svc)
        except Exception as exc:  # the registry down: the page still shows the arms
            _log.warning("dashboard: cannot read the registry: %s", exc)
            cache.value = {**cache.value, "error": f"registry unavailable ({type(exc).__name__})"}
        cache.read_at = time.monotonic()
    return cache.value


def read_registry(svc: RolloutService) -> dict[str, Any]:
    """Read every version's history (the audit log) and its MLflow version and gate links."""
    client, name = admin._client(svc), svc.settings.model_name
    markers = [
        {
            "at": e.at.timestamp(),
            "version": e.version,
            "arm": arm_name(e.version),
            "action": e.action,
            "reason": e.reason[:300],
        }
        for e in contract.read_history(client, name)
    ]
    ui = svc.settings.mlflow_ui_url.rstrip("/")
    links: dict[str, dict[str, Any]] = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        links[arm_name(mv.version)] = _links_of(client, ui, name, mv)
    return {"markers": markers, "links": links}


def _links_of(client: Any, ui: str, name: str, mv: Any) -> dict[str, Any]:
    version_url = f"{ui}/#/models/{quote(name, safe='')}/versions/{mv.version}"
    gate_url = None
    if mv.run_id:
        try:
            experiment = client.get_run(mv.run_id).info.experiment_id
            gate_url = (
                f"{ui}/#/experiments/{experiment}/runs/{mv.run_id}/artifacts/"
                f"{contract.GATE_ARTIFACT_DIR}/gate_report.html"
            )
        except Exception as exc:  # a deleted run: the version link still works
            _log.info("no run for version %s: %s", mv.version, exc)
    return {
        "version": version_url,
        "gate_report": gate_url,
        "gates": (mv.tags or {}).get(contract.TAG_GATES),
    }
