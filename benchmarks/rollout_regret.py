"""Benchmark the rollout's bandit policies (regret) and its promotion rule (error rates).

Three parts, each side by side with its baseline in one run:

1. Regret: 3 Bernoulli arms (0.10 / 0.11 / 0.12), 100,000 pulls, 20 seeds; every policy's
   cumulative pseudo-regret as a ratio to the fixed equal split's.
2. The same with the best arm changing half-way (0.12 / 0.11 / 0.10 after 50,000 pulls):
   discounted Thompson against plain Thompson.
3. The promotion rule (``rollout.decide``) checked after every outcome, 200 seeds: a
   champion at 5 % against a worse (4 %), an equal (5 %) and a better (6 %) challenger,
   under a 50/50 split and under Thompson allocation; against the naive
   "P(best) >= 0.95 after every outcome" rule and the fixed-horizon A/B sample size.

Policies see statistics refreshed every ``--batch`` pulls (100: delayed feedback, as in
the service); discounting is applied exactly per pull within a batch, as the store does.
The rule is evaluated at every outcome: its sequential statistic is vectorised over the
whole path, and ``decide`` itself confirms each outcome where a gate opens.

    .venv/bin/python benchmarks/rollout_regret.py [--seeds 20] [--rule-seeds 200]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr
from scipy.stats import norm

from rollout.decide import DecisionRule, decide, log_superiority_evidence
from rollout.policies import ArmStats, Policy, get_policy

RESULTS = Path(__file__).parent / "results"
MEANS = [0.10, 0.11, 0.12]
MEANS_AFTER = [0.12, 0.11, 0.10]
CHAMPION_RATE = 0.05
CHALLENGER_RATES = {"worse (4 %)": 0.04, "equal (5 %)": 0.05, "better (6 %)": 0.06}
# Traffic during the decision: label -> Thompson parameters (None: a fixed 50/50 split).
ALLOCATIONS: dict[str, dict[str, Any] | None] = {
    "50/50 split": None,
    "Thompson": {},
    "Thompson, min_share 0.2": {"min_share": 0.2},
}


# --- part 1 and 2: regret ----------------------------------------------------------------


def simulate_regret(
    policy: Policy,
    means: list[float],
    *,
    pulls: int,
    batch: int,
    seed: int,
    means_after: list[float] | None = None,
) -> tuple[float, float]:
    """Return the pseudo-regret over the whole run and over its second half."""
    rng = np.random.default_rng(seed)
    k = len(means)
    names = [f"arm{i}" for i in range(k)]
    n, s = np.zeros(k), np.zeros(k)
    d = policy.discount or 1.0
    weights = d ** np.arange(batch)[::-1]
    total = second = 0.0
    for start in range(0, pulls, batch):
        late = start >= pulls // 2
        mu = np.asarray(means_after if (means_after is not None and late) else means)
        arms = [ArmStats(names[i], n[i], s[i], s[i]) for i in range(k)]
        idx = policy.choose_indices(arms, rng, batch)
        rewards = (rng.random(batch) < mu[idx]).astype(float)
        onehot = np.eye(k)[idx]
        n = n * d**batch + weights @ onehot
        s = s * d**batch + (weights * rewards) @ onehot
        regret = float((mu.max() - mu[idx]).sum())
        total += regret
        second += regret if late else 0.0
    return total, second


def regret_table(
    specs: list[tuple[str, str, dict[str, Any]]],
    *,
    means_after: list[float] | None,
    seeds: int,
    pulls: int,
    batch: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, name, params in specs:
        policy = get_policy(name, **params)
        t0 = time.perf_counter()
        runs = np.array(
            [
                simulate_regret(
                    policy, MEANS, pulls=pulls, batch=batch, seed=s, means_after=means_after
                )
                for s in range(seeds)
            ]
        )
        rows.append(
            {
                "policy": label,
                "regret": float(runs[:, 0].mean()),
                "regret_sd": float(runs[:, 0].std(ddof=1)),
                "regret_after_change": float(runs[:, 1].mean()),
                "seconds": time.perf_counter() - t0,
            }
        )
    base_total, base_late = rows[0]["regret"], rows[0]["regret_after_change"]
    for row in rows:
        row["ratio"] = row["regret"] / base_total
        row["ratio_after_change"] = row["regret_after_change"] / base_late
    return rows


# --- part 4: the best arm differs by segment ------------------------------------------------
SEGMENT_SHARE = np.array([0.4, 0.3, 0.2, 0.1])
SEGMENT_MEANS = np.array(  # P(reward | segment, arm): each segment has its own best arm
    [[0.10, 0.07, 0.06], [0.05, 0.10, 0.06], [0.05, 0.06, 0.11], [0.12, 0.06, 0.05]]
)


def simulate_segment_regret(
    policy: Any, *, contextual: bool, pulls: int, batch: int, seed: int
) -> float:
    """Return the pseudo-regret against each segment's best arm."""
    rng = np.random.default_rng(seed)
    m, k = SEGMENT_MEANS.shape
    names = [f"arm{i}" for i in range(k)]
    n, s = np.zeros((m, k)), np.zeros((m, k))
    regret = 0.0
    for _ in range(0, pulls, batch):
        seg = rng.choice(m, size=batch, p=SEGMENT_SHARE)
        pooled = [ArmStats(names[i], n[:, i].sum(), s[:, i].sum(), s[:, i].sum()) for i in range(k)]
        idx = np.empty(batch, dtype=int)
        if contextual:
            for g in range(m):
                rows = seg == g
                cell = [ArmStats(names[i], n[g, i], s[g, i], s[g, i]) for i in range(k)]
                idx[rows] = policy.choose_in_segment(cell, pooled, rng, int(rows.sum()))
        else:
            idx[:] = policy.choose_indices(pooled, rng, batch)
        mu = SEGMENT_MEANS[seg, idx]
        rewards = (rng.random(batch) < mu).astype(float)
        np.add.at(n, (seg, idx), 1.0)
        np.add.at(s, (seg, idx), rewards)
        regret += float((SEGMENT_MEANS[seg].max(axis=1) - mu).sum())
    return regret


def segment_table(*, seeds: int, pulls: int, batch: int) -> list[dict[str, Any]]:
    specs = [
        ("Thompson, pooled (baseline)", get_policy("thompson"), False),
        ("contextual Thompson (per segment)", get_policy("contextual-thompson"), True),
        ("fixed equal split", get_policy("fixed"), False),
    ]
    rows: list[dict[str, Any]] = []
    for label, policy, contextual in specs:
        runs = np.array(
            [
                simulate_segment_regret(
                    policy, contextual=contextual, pulls=pulls, batch=batch, seed=seed
                )
                for seed in range(seeds)
            ]
        )
        rows.append(
            {"policy": label, "regret": float(runs.mean()), "regret_sd": float(runs.std(ddof=1))}
        )
    for row in rows:
        row["ratio"] = row["regret"] / rows[0]["regret"]
    return rows


def segment_markdown(rows: list[dict[str, Any]], *, seeds: int, pulls: int) -> str:
    out = [
        "",
        f"## The best arm differs by segment (4 segments, 3 arms, {pulls:,} pulls, {seeds} seeds)",
        "",
        "| policy | regret (mean ± sd) | ratio to pooled Thompson |",
        "|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['policy']} | {r['regret']:.1f} ± {r['regret_sd']:.1f} | {r['ratio']:.2f} |"
        )
    return "\n".join(out) + "\n"


# --- part 3: the promotion rule under continuous checking ---------------------------------


def ab_sample_size(p1: float, p2: float, *, alpha: float, power: float, sides: int) -> int:
    """Return the per-arm sample size of a fixed-horizon two-proportion z-test."""
    z = norm.ppf(1 - alpha / sides) + norm.ppf(power)
    return math.ceil(z**2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)


def outcome_paths(
    p_champion: float,
    p_challenger: float,
    *,
    policy: Policy | None,
    horizon: int,
    batch: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """Return cumulative (n_a, s_a, n_b, s_b) after each outcome (a: champion).

    ``policy`` None is a 50/50 split (vectorised); else the policy routes each batch.
    """
    p = np.array([p_champion, p_challenger])
    if policy is None:
        arm = (rng.random(horizon) < 0.5).astype(int)
        reward = rng.random(horizon) < p[arm]
    else:
        arm = np.empty(horizon, dtype=int)
        reward = np.empty(horizon, dtype=bool)
        n, s = np.zeros(2), np.zeros(2)
        for start in range(0, horizon, batch):
            stats = [
                ArmStats("champion", n[0], s[0], s[0]),
                ArmStats("challenger", n[1], s[1], s[1]),
            ]
            idx = policy.choose_indices(stats, rng, min(batch, horizon - start))
            r = rng.random(len(idx)) < p[idx]
            arm[start : start + len(idx)], reward[start : start + len(idx)] = idx, r
            n += np.bincount(idx, minlength=2)
            s += np.bincount(idx, weights=r, minlength=2)
    b = arm == 1
    n_b, s_b = np.cumsum(b), np.cumsum(reward & b)
    n_a = np.arange(1, horizon + 1) - n_b
    s_a = np.cumsum(reward & ~b)
    return n_a.astype(float), s_a.astype(float), n_b.astype(float), s_b.astype(float)


def first_decision(
    paths: tuple[np.ndarray, ...], rule: DecisionRule, rng: np.random.Generator
) -> tuple[str, int]:
    """Return (action, outcomes) of the first non-"keep" decision along the path.

    Equivalent to calling ``decide`` after every outcome: the sequential gates (cheap,
    vectorised) say where a decision is possible, and ``decide`` confirms it there.
    """
    n_a, s_a, n_b, s_b = paths
    a, b = (n_a, s_a, s_a), (n_b, s_b, s_b)
    scale = rule.mixture_scale
    up = log_superiority_evidence(
        a, b, reward_kind="bernoulli", mixture_scale=scale, margin=rule.min_improvement
    )
    down = log_superiority_evidence(b, a, reward_kind="bernoulli", mixture_scale=scale)
    enough = np.minimum(n_a, n_b) >= rule.min_outcomes
    open_gate = enough & (
        (up >= math.log(1 / rule.false_promotion_rate))
        | (down >= math.log(1 / rule.false_retirement_rate))
    )
    for t in np.flatnonzero(open_gate)[:500]:
        champion = ArmStats("champion", n_a[t], s_a[t], s_a[t])
        challenger = ArmStats("challenger", n_b[t], s_b[t], s_b[t])
        (d,) = decide(champion, [challenger], rule, rng, reward_kind="bernoulli")
        if d.action != "keep":
            return d.action, int(t + 1)
    return "keep", len(n_a)


def naive_first_promotion(paths: tuple[np.ndarray, ...], min_outcomes: int = 100) -> int | None:
    """Return when "P(best) >= 0.95, checked after every outcome" first promotes, if ever.

    P(best) of two Beta(1 + s, 1 + f) posteriors by their normal approximation.
    """
    n_a, s_a, n_b, s_b = paths
    ma, mb = (1 + s_a) / (2 + n_a), (1 + s_b) / (2 + n_b)
    va, vb = ma * (1 - ma) / (3 + n_a), mb * (1 - mb) / (3 + n_b)
    p_best = ndtr((mb - ma) / np.sqrt(va + vb))
    hits = np.flatnonzero((np.minimum(n_a, n_b) >= min_outcomes) & (p_best >= 0.95))
    return int(hits[0] + 1) if hits.size else None


def rule_table(rule: DecisionRule, *, seeds: int, horizon: int, batch: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for allocation, params in ALLOCATIONS.items():
        # Built once: get_policy scans every installed distribution's entry points.
        policy = None if params is None else get_policy("thompson", **params)
        for label, rate in CHALLENGER_RATES.items():
            t0 = time.perf_counter()
            actions, when, naive = [], [], []
            for seed in range(seeds):
                rng = np.random.default_rng([seed, int(rate * 1000)])
                paths = outcome_paths(
                    CHAMPION_RATE,
                    rate,
                    policy=policy,
                    horizon=horizon,
                    batch=batch,
                    rng=rng,
                )
                action, t = first_decision(paths, rule, rng)
                actions.append(action)
                when.append(t)
                naive.append(naive_first_promotion(paths))
            acts, at = np.array(actions), np.array(when)
            promoted = acts == "promote"
            retired = acts == "retire"
            rows.append(
                {
                    "allocation": allocation,
                    "challenger": label,
                    "promoted": float(promoted.mean()),
                    "retired": float(retired.mean()),
                    "median_outcomes_to_promote": float(np.median(at[promoted]))
                    if promoted.any()
                    else None,
                    "median_outcomes_to_retire": float(np.median(at[retired]))
                    if retired.any()
                    else None,
                    "naive_promoted": float(np.mean([x is not None for x in naive])),
                    "naive_median_outcomes": float(np.median([x for x in naive if x is not None]))
                    if any(x is not None for x in naive)
                    else None,
                    "seconds": time.perf_counter() - t0,
                }
            )
    return rows


# --- report ------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "–" if x is None else format(x, spec)


def targets(result: dict[str, Any]) -> list[str]:
    """Return one line per target of the issue, with the measured figure and PASS/MISS."""

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    lines = []
    thompson = [r for r in result["stationary"] if r["policy"].startswith("Thompson (Beta")]
    if thompson:
        ratio = thompson[0]["ratio"]
        lines.append(f"{mark(ratio <= 0.35)} Thompson regret {ratio:.3f}× fixed split (<= 0.35×)")
    discounted = [r for r in result["change"] if "discount" in r["policy"]]
    if discounted:
        late = discounted[0]["ratio_after_change"]
        lines.append(
            f"{mark(late <= 0.5)} discounted Thompson after the change {late:.3f}× fixed split "
            "(<= 0.5×)"
        )
    ab_total = 2 * result["ab_sample_size"]["two_sided_per_arm"]
    for r in result["decisions"]:
        if r["challenger"].startswith("worse"):
            lines.append(
                f"{mark(r['promoted'] <= 0.05)} {r['allocation']}: worse challenger promoted "
                f"{r['promoted']:.1%} (<= 5 %; naive rule {r['naive_promoted']:.1%})"
            )
        if r["challenger"].startswith("better"):
            med = r["median_outcomes_to_promote"]
            ratio = math.inf if med is None else med / ab_total
            lines.append(
                f"{mark(ratio <= 1.5)} {r['allocation']}: median outcomes to promote the better "
                f"challenger {ratio:.2f}× the A/B sample size (<= 1.5×; promoted "
                f"{r['promoted']:.1%} within the horizon)"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    out = [
        f"## Regret: arms {MEANS}, {cfg['pulls']:,} pulls, {cfg['seeds']} seeds "
        f"(statistics refreshed every {cfg['batch']} pulls)",
        "",
        "| policy | regret (mean ± sd) | ratio to fixed split |",
        "|---|---:|---:|",
    ]
    for r in result["stationary"]:
        out.append(
            f"| {r['policy']} | {r['regret']:,.0f} ± {r['regret_sd']:,.0f} | {r['ratio']:.3f} |"
        )
    out += [
        "",
        f"## Best arm changes half-way: {MEANS} then {MEANS_AFTER}",
        "",
        "| policy | regret, whole run | ratio | regret after the change | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["change"]:
        out.append(
            f"| {r['policy']} | {r['regret']:,.0f} ± {r['regret_sd']:,.0f} | {r['ratio']:.3f} "
            f"| {r['regret_after_change']:,.0f} | {r['ratio_after_change']:.3f} |"
        )
    ab = result["ab_sample_size"]
    rule = result["rule"]
    out += [
        "",
        f"## Promotion rule checked after every outcome: champion 5 %, {cfg['rule_seeds']} seeds, "
        f"horizon {cfg['horizon']:,} outcomes",
        "",
        f"Rule: min {rule['min_outcomes']:,} outcomes per arm, P(best) >= "
        f"{rule['p_best_threshold']}, expected loss <= {rule['max_expected_loss']}, "
        f"one-sided mSPRT at false-promotion rate {rule['false_promotion_rate']} "
        f"(mixture scale {rule['mixture_scale']}), retire at P(best) <= {rule['retire_p_best']} "
        f"with false-retirement rate {rule['false_retirement_rate']}. "
        f"Naive: P(best) >= 0.95 after every outcome, min 100 per arm.",
        "",
        f"Fixed-horizon A/B for 5 % vs 6 % (alpha 0.05, power 0.8): "
        f"{ab['two_sided_per_arm']:,} per arm two-sided = {2 * ab['two_sided_per_arm']:,} "
        f"outcomes; {ab['one_sided_per_arm']:,} per arm one-sided = "
        f"{2 * ab['one_sided_per_arm']:,}.",
        "",
        "| allocation | challenger | promoted | retired | median outcomes to promote "
        "(× A/B two-sided) | median outcomes to retire | naive rule promoted |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ab_total = 2 * ab["two_sided_per_arm"]
    for r in result["decisions"]:
        med = r["median_outcomes_to_promote"]
        ratio = "" if med is None else f" ({med / ab_total:.2f}×)"
        out.append(
            f"| {r['allocation']} | {r['challenger']} | {r['promoted']:.1%} | {r['retired']:.1%} "
            f"| {_fmt(med)}{ratio} | {_fmt(r['median_outcomes_to_retire'])} "
            f"| {r['naive_promoted']:.1%} |"
        )
    out += [
        "",
        f"Rates over {cfg['rule_seeds']} seeds: binomial standard error about "
        f"{math.sqrt(0.05 * 0.95 / max(cfg['rule_seeds'], 1)):.1%} near 5 %. "
        "Traffic routed in batches of "
        f"{cfg['batch']} outcomes; the rule is checked after every single outcome.",
        "",
        "### Targets",
        "",
        *(f"- {line}" for line in targets(result)),
        "",
        f"Total time {result['seconds']:.1f} s.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pulls", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rule-seeds", type=int, default=200)
    parser.add_argument("--discount", type=float, default=0.9999)
    parser.add_argument("--parts", default="regret,change,rule,segments")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    rule = DecisionRule()
    ab_two = ab_sample_size(0.05, 0.06, alpha=0.05, power=0.8, sides=2)
    ab_one = ab_sample_size(0.05, 0.06, alpha=0.05, power=0.8, sides=1)
    horizon = 4 * 2 * ab_two
    specs = [
        ("fixed equal split (baseline)", "fixed", {}),
        ("Thompson (Beta 1,1)", "thompson", {}),
        ("Thompson, min_share 0.2", "thompson", {"min_share": 0.2}),
        ("UCB1", "ucb1", {}),
        ("epsilon-greedy 0.1", "epsilon-greedy", {"epsilon": 0.1}),
        ("Thompson Gaussian (NIG)", "thompson-gaussian", {}),
    ]
    change_specs = [
        ("fixed equal split (baseline)", "fixed", {}),
        ("Thompson, plain", "thompson", {}),
        (f"Thompson, discount {args.discount}", "thompson", {"discount": args.discount}),
    ]
    kw = {"seeds": args.seeds, "pulls": args.pulls, "batch": args.batch}
    result: dict[str, Any] = {
        "config": {**kw, "rule_seeds": args.rule_seeds, "horizon": horizon},
        "rule": rule.__dict__,
        "ab_sample_size": {"two_sided_per_arm": ab_two, "one_sided_per_arm": ab_one},
        "stationary": regret_table(specs, means_after=None, **kw) if "regret" in parts else [],
        "change": regret_table(change_specs, means_after=MEANS_AFTER, **kw)
        if "change" in parts
        else [],
        "decisions": rule_table(rule, seeds=args.rule_seeds, horizon=horizon, batch=args.batch)
        if "rule" in parts
        else [],
    }
    if "segments" in parts:
        result["segments"] = segment_table(
            seeds=args.seeds, pulls=args.pulls // 2, batch=args.batch
        )
    result["seconds"] = time.perf_counter() - t0
    table = markdown(result)
    if "segments" in parts:
        table += segment_markdown(result["segments"], seeds=args.seeds, pulls=args.pulls // 2)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout_regret.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "rollout_regret.md").write_text(table)


if __name__ == "__main__":
    main()
