"""Benchmark the multi-metric rule: family-wise false promotions with 3 guardrail metrics.

A 6 % challenger against a 5 % champion (better on the success metric) under a 50/50 split,
checked every 1,000 outcomes per arm up to 30,000, with three guardrails: latency (lower
is better, margin 2 ms, sd 10 ms), error rate (lower, margin 0.5 point on 1 %), a basket
value (higher, margin 0.05, sd 1). Cases: every guardrail equal (a promotion is right);
one guardrail worse by exactly its margin (the least favourable null: any promotion is
wrong); worse by twice the margin. Stated family-wise false-promotion rate: 5 %.

Then the guardrails as the live service declares them (``rollout.multimetric.from_settings``
over the store's counts): error rate, and the share of predictions slower than a fixed
threshold read from the latency histogram (``rollout.store_health``), with a basket value
as the third: the champion's share above the threshold is 1 % (its p99 sits at it), and a
challenger's share worse by exactly the margin is the least favourable null.

    .venv/bin/python benchmarks/rollout_multimetric.py [--seeds 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rollout.decide import DecisionRule, decide
from rollout.multimetric import GuardrailMetric, from_settings, guardrail_blocker, live_stats
from rollout.policies import ArmStats, get_policy

RESULTS = Path(__file__).parent / "results"
METRICS = [
    GuardrailMetric("latency_ms", margin=2.0, better="lower"),
    GuardrailMetric("error_rate", margin=0.005, better="lower", kind="bernoulli"),
    GuardrailMetric("basket", margin=0.05, better="higher"),
]
RULE = DecisionRule(min_outcomes=500, draws=200)


def cumulative(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.arange(1, len(x) + 1, dtype=float), np.cumsum(x), np.cumsum(x * x)


def run(seed: int, gaps: dict[str, float], checks: int = 30, step: int = 1000) -> int | None:
    """Return outcomes per arm at the promotion (None: never promoted)."""
    gen = np.random.default_rng(seed)
    n = checks * step
    base = {
        "latency_ms": lambda g: gen.normal(20.0 + g, 10.0, n),
        "error_rate": lambda g: (gen.random(n) < 0.01 + g).astype(float),
        "basket": lambda g: gen.normal(1.0 - g, 1.0, n),
    }
    series = {
        "a": {"reward": (gen.random(n) < 0.05).astype(float)}
        | {m: f(0.0) for m, f in base.items()},
        "b": {"reward": (gen.random(n) < 0.06).astype(float)}
        | {m: f(gaps.get(m, 0.0)) for m, f in base.items()},
    }
    sums = {a: {k: cumulative(v) for k, v in d.items()} for a, d in series.items()}
    policy = get_policy("thompson")

    def at(arm: str, key: str, i: int) -> ArmStats:
        c, s, q = sums[arm][key]
        return ArmStats(arm, c[i], s[i], q[i])

    for check in range(1, checks + 1):
        i = check * step - 1
        stats = {m.name: {a: at(a, m.name, i) for a in ("a", "b")} for m in METRICS}
        block = guardrail_blocker(METRICS, stats, "a", RULE, challengers=1)
        (d,) = decide(
            at("a", "reward", i), [at("b", "reward", i)], RULE, gen, policy=policy, blocker=block
        )
        if d.action == "promote":
            return check * step
    return None


THRESHOLD_MS = 50.0
LIVE = [
    *from_settings({"error_rate": {"margin": 0.01}, "latency_p99": {"margin": 0.01}}, THRESHOLD_MS),
    GuardrailMetric("basket", margin=0.05, better="higher"),
]


def latencies(gen: np.random.Generator, n: int, share_above: float) -> np.ndarray:
    """Log-normal latencies (ms) with ``share_above`` of them above THRESHOLD_MS' bucket edge."""
    from scipy.stats import norm

    from rollout.store_health import slower_than

    edge = slower_than({}, THRESHOLD_MS)[1]
    z = norm.ppf(1.0 - share_above)
    return np.asarray(edge * np.exp(0.6 * (gen.standard_normal(n) - z)))


def run_live(seed: int, gaps: dict[str, float], checks: int = 30, step: int = 1000) -> int | None:
    """The live metrics: histogram buckets and failure counts, as the store keeps them."""
    from rollout.store_health import latency_bucket

    gen = np.random.default_rng(seed)
    n = checks * step
    first_slow = latency_bucket(THRESHOLD_MS)
    arms: dict[str, dict[str, np.ndarray]] = {}
    for arm, rate, g in (("a", 0.05, {}), ("b", 0.06, gaps)):
        slow = [latency_bucket(x) >= first_slow for x in latencies(gen, n, 0.01 + g.get("lat", 0))]
        arms[arm] = {
            "reward": np.cumsum(gen.random(n) < rate),
            "failed": np.cumsum(gen.random(n) < 0.01 + g.get("err", 0.0)),
            "slow": np.cumsum(slow),
            "basket": gen.normal(1.0 - g.get("basket", 0.0), 1.0, n),
        }
    policy = get_policy("thompson")
    for check in range(1, checks + 1):
        i = check * step - 1
        made = {a: (i + 1, int(d["failed"][i])) for a, d in arms.items()}
        # The histogram's count above the threshold's edge is all the test reads of it.
        hist = {
            a: {first_slow: int(d["slow"][i]), 0: i + 1 - int(d["slow"][i])}
            for a, d in arms.items()
        }
        stats = live_stats(LIVE[:2], made, hist)
        basket = {a: d["basket"][: i + 1] for a, d in arms.items()}
        stats["basket"] = {
            a: ArmStats(a, float(i + 1), float(x.sum()), float((x * x).sum()))
            for a, x in basket.items()
        }
        block = guardrail_blocker(LIVE, stats, "a", RULE, challengers=1)
        reward = {
            a: ArmStats(a, float(i + 1), float(d["reward"][i]), float(d["reward"][i]))
            for a, d in arms.items()
        }
        (d,) = decide(reward["a"], [reward["b"]], RULE, gen, policy=policy, blocker=block)
        if d.action == "promote":
            return check * step
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    cases = {
        "all guardrails equal (promotion right)": {},
        "latency worse by its margin (null)": {"latency_ms": 2.0},
        "error rate worse by its margin (null)": {"error_rate": 0.005},
        "basket worse by its margin (null)": {"basket": 0.05},
        "latency worse by twice its margin": {"latency_ms": 4.0},
    }
    rows = []
    for label, gaps in cases.items():
        found = [run(seed, gaps) for seed in range(args.seeds)]
        hits = [f for f in found if f is not None]
        rows.append(
            {
                "case": label,
                "promoted": len(hits) / args.seeds,
                "median_outcomes": float(np.median(hits)) if hits else None,
            }
        )
    live_cases = {
        "live: all guardrails equal (promotion right)": {},
        "live: share above 50 ms worse by its margin, 2 % vs 1 % (null)": {"lat": 0.01},
        "live: error rate worse by its margin, 2 % vs 1 % (null)": {"err": 0.01},
        "live: basket worse by its margin (null)": {"basket": 0.05},
        "live: share above 50 ms worse by twice its margin": {"lat": 0.02},
    }
    for label, gaps in live_cases.items():
        found = [run_live(seed, gaps) for seed in range(args.seeds)]
        hits = [f for f in found if f is not None]
        rows.append(
            {
                "case": label,
                "promoted": len(hits) / args.seeds,
                "median_outcomes": float(np.median(hits)) if hits else None,
            }
        )
    lines = [
        f"Success 6 % vs 5 %, 50/50 split, checked every 1,000 outcomes per arm to 30,000, "
        f"{args.seeds} seeds; stated family-wise false-promotion rate 5 %.",
        "",
        "| case | promoted | median outcomes per arm at promotion |",
        "|---|---|---|",
    ]
    for r in rows:
        med = "-" if r["median_outcomes"] is None else f"{r['median_outcomes']:,.0f}"
        lines.append(f"| {r['case']} | {r['promoted']:.1%} | {med} |")
    with open("/proc/loadavg") as f:
        lines += ["", f"load average at the end: {f.read().split()[0]}"]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    wall = time.perf_counter() - start
    (RESULTS / "rollout_multimetric.json").write_text(
        json.dumps({"rows": rows, "wall_s": wall}, indent=2)
    )
    (RESULTS / "rollout_multimetric.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
