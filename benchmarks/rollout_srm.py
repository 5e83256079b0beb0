"""Benchmark the sequential sample-ratio test: false alarms on a true split, detection delay.

A stated 50/50 split, checked after every batch of 100 units (continuous checking):

1. the true split is 50/50: the share of seeds with any alarm over 200,000 units
   (target <= 0.1 %, the test's ``alpha_level``);
2. the true split is 48/52 (and 45/55): units until the alarm, per seed.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--units", type=int, default=200_000)
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
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    wall = time.perf_counter() - start
    (RESULTS / "rollout_srm.json").write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=2))
    (RESULTS / "rollout_srm.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
