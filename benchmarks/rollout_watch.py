"""Benchmark the champion's watches: false alarms and detection delay, rollback delay.

1. The live performance watch (``RewardWatch``) on a stationary 5 % stream checked every
   50 outcomes (false alarms per 10,000 checks; stated: at most 1 on average, plus the 1 %
   chance of a reference that came out too high), and on a stream that falls after the
   5,000-outcome reference (outcomes from the fall to the alarm).
2. The rollback watch (``ChampionWatch``) after a promotion: the replaced champion had
   20,000 outcomes at 5 %; the new one is worse (4 %) or equal (5 %); outcomes since the
   promotion until the rollback, checked every 100 outcomes, horizon 50,000.

    .venv/bin/python benchmarks/rollout_watch.py [--seeds 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rollout.policies import ArmStats
from rollout.watch import ChampionWatch, RewardWatch

RESULTS = Path(__file__).parent / "results"


def watch_run(seed: int, before: float, after: float, checks: int, batch: int = 50) -> int | None:
    """Return outcomes after the 5,000-outcome reference at the alarm (None: no alarm)."""
    gen = np.random.default_rng(seed)
    watch = RewardWatch()
    seen = 0
    for _ in range(checks):
        rate = before if seen < watch.reference_outcomes else after
        s = float(gen.binomial(batch, rate))
        seen += batch
        if watch.update(batch, s, s):
            return seen - watch.reference_outcomes
    return None


def rollback_run(seed: int, rate: float, watch: ChampionWatch) -> int | None:
    gen = np.random.default_rng(seed)
    replaced = ArmStats("v1", 20_000, 1_000, 1_000)
    n = s = 0
    while n < watch.horizon_outcomes:
        k = int(gen.binomial(100, rate))
        n, s = n + 100, s + k
        if watch.check(ArmStats("v2", n, s, s), replaced, reward_kind="bernoulli"):
            return n
    return None


def summary(label: str, found: list[int | None], seeds: int) -> dict[str, object]:
    hits = np.array([f for f in found if f is not None], dtype=float)
    return {
        "case": label,
        "alarm_share": len(hits) / seeds,
        "median": float(np.median(hits)) if len(hits) else None,
        "p90": float(np.percentile(hits, 90)) if len(hits) else None,
        "max": float(hits.max()) if len(hits) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    stationary = [watch_run(s, 0.05, 0.05, args.checks) for s in range(args.seeds)]
    rows.append(summary("performance watch, stationary 5 %", stationary, args.seeds))
    for after in (0.04, 0.035, 0.025):
        found = [watch_run(1000 + s, 0.05, after, args.checks) for s in range(args.seeds)]
        rows.append(summary(f"performance watch, 5 % -> {after:.1%}", found, args.seeds))
    watch = ChampionWatch()
    for rate in (0.04, 0.045, 0.05):
        found = [rollback_run(s, rate, watch) for s in range(args.seeds)]
        rows.append(summary(f"rollback watch, new champion {rate:.1%} vs 5 %", found, args.seeds))
    alarms = sum(f is not None for f in stationary)
    per_10k = alarms / (args.seeds * args.checks) * 10_000
    lines = [
        f"{args.seeds} seeds; performance watch checked every 50 outcomes for {args.checks:,} "
        f"checks after a 5,000-outcome reference (threshold 10,000, reference at its 99 % lower "
        f"bound); rollback watch checked every 100 outcomes, wrong-rollback rate 0.05.",
        "",
        "| case | seeds with an alarm | median outcomes | p90 | max |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        lines.append(
            f"| {r['case']} | {r['alarm_share']:.1%} | {fmt(r['median'])} | {fmt(r['p90'])} "
            f"| {fmt(r['max'])} |"
        )
    lines += ["", f"Stationary false alarms: {per_10k:.2f} per 10,000 checks (stated: <= 1, +1 %)."]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    wall = time.perf_counter() - start
    result = {"rows": rows, "false_alarms_per_10k_checks": per_10k, "wall_s": wall}
    (RESULTS / "rollout_watch.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "rollout_watch.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
