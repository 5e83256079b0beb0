"""Benchmark the closed loop: the demo's world driven against the deployed stack, per seed.

Each run is ``banditflow demo --fresh`` in its own data folder (its own stack on free
ports), knob on (the drift) and knob off (a stationary world), several seeds. Read back
from each run's report (summary.json, built from Prefect's and the registry's records):

  live / feature oracle        total reward over the live days, and from the drift on
  best a day late / f.o.       the feature oracle from the day after the onset (the stale
                               champion on that day): the most a system can earn whose
                               labels and outcomes of the new world arrive at a day's end
  drift -> detected            simulated days from the drift onset to drift.detected
  drift -> retrain running     ... to the first retrain study's optimize subflow
  drift -> challenger serving  ... to the first visit a post-drift version served
  drift -> new champion        ... to the first day a post-drift version was champion
  knob off                     retrains, promotions and rollbacks (a stationary world
                               should see no drift-triggered retrain and no promotion of
                               a worse arm)

``--hog`` repeats the first seed with a CPU hog beside it (a busy process per core) and
compares the champion day by day: in lock-step the same seed must tell the same story.

    .venv/bin/python benchmarks/closed_loop.py --seeds 0 1 2          # ~15 min per run
    .venv/bin/python benchmarks/closed_loop.py --seeds 0 --hog --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from banditflow.report import DAY_LATE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BANDITFLOW = Path(sys.executable).parent / "banditflow"


@contextmanager
def cpu_hog(processes: int) -> Iterator[list[int]]:
    """Run ``processes`` busy loops beside the benchmark; stop exactly those by pid."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(processes)
    ]
    try:
        yield [h.pid for h in hogs]
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait(timeout=30)


def run_demo(home: Path, seed: int, *, drift: bool, quick: bool) -> tuple[dict[str, Any], float]:
    """Run one demo in ``home``; return its summary.json and its wall seconds."""
    args = [str(BANDITFLOW), "demo", "--fresh", "--seed", str(seed)]
    args += ["--quick"] if quick else []
    args += [] if drift else ["--no-drift"]
    env = os.environ | {"BANDITFLOW_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    began = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"demo seed={seed} drift={drift} failed:\n{done.stdout[-3000:]}")
    return json.loads((home / "report" / "summary.json").read_text()), took


def row_of(summary: dict[str, Any], seed: int, drift: bool, took: float) -> dict[str, Any]:
    """Return the benchmark row of one run."""
    systems = {s["system"]: s for s in summary["systems"]}
    live = systems["live system"]
    others = {k: v for k, v in systems.items() if k != "live system"}
    never: dict[str, Any] = next((v for k, v in others.items() if k.startswith("never")), {})
    split: dict[str, Any] = next((v for k, v in others.items() if k.startswith("fixed")), {})
    loop = summary.get("loop_days", {})
    history = [e["label"] for e in summary.get("events", [])]
    timeline = summary.get("timeline_counts", {})
    return {
        "seed": seed,
        "knob": "on" if drift else "off",
        "live / feature oracle": live.get("vs reference"),
        "after drift": live.get("vs reference after drift"),
        "never retrains / f.o.": never.get("vs reference"),
        "fixed split / f.o.": split.get("vs reference"),
        # The most a system that learns at the onset day's end can earn (banditflow/report.py).
        "best a day late / f.o.": others.get(DAY_LATE, {}).get("vs reference"),
        "days to detected": loop.get("to_detected"),
        "to retrain running": loop.get("to_retrain_running"),
        "to challenger serving": loop.get("to_challenger_serving"),
        "to new champion": loop.get("to_new_champion"),
        "retrains": timeline.get("retrain studies"),
        "promotions": sum(label.startswith("promoted") for label in history),
        "rollbacks": sum(label.startswith("rolled_back") for label in history),
        "wall s": round(took),
        "decisions": summary.get("decisions", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the CI-sized world")
    parser.add_argument("--hog", action="store_true", help="repeat seed 1 with a CPU hog")
    parser.add_argument("--knobs", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    hog_check: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        knobs = [knob == "on" for knob in args.knobs]
        for seed in args.seeds:
            for drift in knobs:
                home = Path(tmp) / f"s{seed}-{'on' if drift else 'off'}"
                summary, took = run_demo(home, seed, drift=drift, quick=args.quick)
                rows.append(row_of(summary, seed, drift, took))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "decisions"}))
                write(rows, hog_check, args)  # partial results survive a later failure
        if args.hog:
            seed = args.seeds[0]
            with cpu_hog(os.cpu_count() or 2):
                summary, took = run_demo(Path(tmp) / "hog", seed, drift=True, quick=args.quick)
            hogged = row_of(summary, seed, True, took) | {"knob": "on + CPU hog"}
            rows.append(hogged)
            quiet = next((r for r in rows if r["seed"] == seed and r["knob"] == "on"), None)
            if quiet is not None:
                hog_check = {
                    "seed": seed,
                    "quiet": quiet["decisions"],
                    "hog": hogged["decisions"],
                    "same": quiet["decisions"] == hogged["decisions"],
                }
    print(write(rows, hog_check, args))


def write(rows: list[dict[str, Any]], hog_check: dict[str, Any], args: Any) -> str:
    """Write results/closed_loop[-tag].json and .md; return the markdown table."""
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "decisions"} for r in rows])
    RESULTS.mkdir(exist_ok=True)
    stem = "closed_loop" + (f"-{args.tag}" if args.tag else "")
    facts = {"machine": platform.platform(), "cpus": os.cpu_count(), "quick": args.quick}
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"facts": facts, "runs": rows, "hog": hog_check}, indent=2, default=str)
    )
    text = table.to_markdown(index=False, floatfmt=".3f")
    if hog_check:
        verdict = "the same" if hog_check["same"] else "DIFFERENT"
        text += f"\n\nSeed {hog_check['seed']} with a CPU hog: champion day by day {verdict}."
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
