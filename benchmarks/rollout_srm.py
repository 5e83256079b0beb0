"""Benchmark the sequential sample-ratio test: false alarms on a true split, detection delay.

A stated 50/50 split, checked after every batch of 100 units (continuous checking):

1. the true split is 50/50: the share of seeds with any alarm over 200,000 units
   (target <= 0.1 %, the test's ``alpha_level``);
2. the true split is 48/52 (and 45/55): units until the alarm, per seed;
3. sticky units (each makes 1 + Poisson(4) requests, all on its arm): the test counting
   every request (clustered draws: the multinomial's variance is too small by the mean
   cluster size) against counting each unit once, as the service does.

    .venv/bin/python benchmarks/rollout_srm.py [--seeds 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rollout.srm import SampleRatioTest

RESULTS = Path(__file__).parent / "results"


def run(seed: int, true_share: float, units: int, batch: int = 100) -> int | None:
    gen = np.random.default_rng(seed)
    test = SampleRatioTest()
    for i in range(units // batch):
        a = int(gen.binomial(batch, true_share))
        if test.update({"a": a, "b": batch - a}, {"a": 0.5, "b": 0.5}):
            return (i + 1) * batch
    return None


def run_sticky(
    seed: int, true_share: float, units: int, *, per_request: bool, batch: int = 100
) -> int | None:
    """Units assigned by ``true_share``, each returning 1 + Poisson(4) times; stated 50/50."""
    gen = np.random.default_rng(seed)
    test = SampleRatioTest()
    for i in range(units // batch):
        on_a = gen.random(batch) < true_share
        visits = 1 + gen.poisson(4.0, batch) if per_request else np.ones(batch, dtype=int)
        a, b = int(visits[on_a].sum()), int(visits[~on_a].sum())
        if test.update({"a": a, "b": b}, {"a": 0.5, "b": 0.5}):
            return (i + 1) * batch
    return None


def sticky_rows(seeds: int, units: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for per_request in (True, False):
        for share in (0.50, 0.48):
            found = [run_sticky(s, share, units, per_request=per_request) for s in range(seeds)]
            hits = np.array([f for f in found if f is not None], dtype=float)
            rows.append(
                {
                    "counted": "each request" if per_request else "each unit (the service)",
                    "true_share": share,
                    "seeds": seeds,
                    "alarm_rate": len(hits) / seeds,
                    "median_units": float(np.median(hits)) if len(hits) else None,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--sticky-seeds", type=int, default=300)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for share in (0.50, 0.48, 0.45):
        found = [run(s, share, args.units) for s in range(args.seeds)]
        hits = np.array([f for f in found if f is not None], dtype=float)
        rows.append(
            {
                "true_share": share,
                "seeds": args.seeds,
                "alarm_rate": len(hits) / args.seeds,
                "median_units": float(np.median(hits)) if len(hits) else None,
                "p90_units": float(np.percentile(hits, 90)) if len(hits) else None,
                "max_units": float(hits.max()) if len(hits) else None,
            }
        )
    lines = [
        f"Stated split 50/50, checked every 100 units up to {args.units:,} units, "
        f"{args.seeds} seeds, alpha_level 0.001, concentration 1000.",
        "",
        "| true split | seeds with an alarm | median units to alarm | p90 | max |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        lines.append(
            f"| {r['true_share']:.2f}/{1 - r['true_share']:.2f} | {r['alarm_rate']:.2%} | "
            f"{fmt(r['median_units'])} | {fmt(r['p90_units'])} | {fmt(r['max_units'])} |"
        )
    sticky = sticky_rows(args.sticky_seeds, args.units)
    lines += [
        "",
        f"Sticky units (1 + Poisson(4) requests each, all on the unit's arm), stated 50/50, "
        f"{args.sticky_seeds} seeds, up to {args.units:,} units:",
        "",
        "| what the test counts | true split | seeds with an alarm | median units to alarm |",
        "|---|---|---|---|",
    ]
    for r in sticky:
        median = "-" if r["median_units"] is None else f"{r['median_units']:,.0f}"
        share = float(r["true_share"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['counted']} | {share:.2f}/{1 - share:.2f} | "
            f"{float(r['alarm_rate']):.2%} | {median} |"  # type: ignore[arg-type]
        )
    with open("/proc/loadavg") as f:
        lines += ["", f"load average at the end: {f.read().split()[0]}"]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    wall = time.perf_counter() - start
    (RESULTS / "rollout_srm.json").write_text(
        json.dumps({"rows": rows, "sticky": sticky, "wall_s": wall}, indent=2)
    )
    (RESULTS / "rollout_srm.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
