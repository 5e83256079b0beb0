"""Plot a finished study's Pareto set, every pair of objectives, to ``examples/<study>-pareto.png``.

.venv/bin/python examples/plot_pareto.py three-objectives
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract import TAG_ROLE  # noqa: E402
from tasks.study_record import child_runs, load_study_result, record_from_run  # noqa: E402
from tasks.study_report import pareto_figure  # noqa: E402
from tasks.tracking import configure_mlflow  # noqa: E402


def main(study: str) -> Path:
    result = load_study_result(study)
    client = configure_mlflow()
    runs = child_runs(client, result.experiment_id, result.parent_run_id)
    # The trials' runs (stage runs and registered candidates are children of the study too).
    records = [record_from_run(r) for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    out = Path(__file__).resolve().parent / f"{study}-pareto.png"
    pareto_figure(result, records).savefig(out, dpi=110)
    print(f"{len(result.pareto)} trials in the Pareto set of {len(records)}: {out}")
    for r in sorted(result.pareto, key=lambda r: -r.values[next(iter(result.objectives))]):
        values = ", ".join(f"{k}={r.values[k]:.4g}" for k in result.objectives)
        print(f"  trial {r.trial_id}: {values}  {r.params}")
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "three-objectives")
