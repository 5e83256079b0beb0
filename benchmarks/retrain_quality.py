"""Benchmark what a retrain learns after the drift: reward per visit, old recipe against new.

On the demo's generator (the world of ``make demo --quick``: 3,000 customers, 1,500
labelled sessions a day, the drift on live day 2 at strength 2, offers cost 0.08), for the
labelled rows a retrain really has on day 1, 2 and 3 after the onset (labels arrive a day
late, so day k holds k days of post-change labels; the retrain keeps the latest 20 % as the
gates' hold-out), side by side on the same post-drift visits (those the retrained model
would serve, from the next day to the end of the live period):

  feature oracle   offer when P(convert | features) >= cost (tasks.datagen)
  never retrains   the champion: the demo's first Hyperopt study (gradient boosting) on
                   the history, searched the way the study searches
  old recipe       the champion's family and optimizer on the post-change rows,
                   warm-started from the champion's best points (what plan_retrain did)
  new recipe       tasks.retrain_family.choose_family on the same rows, then the same
                   search of the family it picks (what plan_retrain did before the prior)
  with prior       the new recipe, also fitting the 14 days of labels before the onset
                   with the searched history_weight (tasks/retrain_prior.py); "history_weight"
                   is its best trial's
  with outcomes    the prior recipe, also fitting the served outcomes known at the retrain
                   (tasks/data.py: with_outcomes, what plan_retrain does now): the offers
                   the champion made to the visits since the onset (6,000 a day; by the
                   retrain, one day more of them than of labels) and whether they converted

Reward per visit is the expected net reward of the offers a model's scores make
(``p_true - cost`` when offered), so visit noise does not blur the comparison. Each
retrained model is also gated as the registration gates it (its serving flavour, ONNX when
it converts; the champion on the same hold-out): "point" is the old verdict (values
against thresholds), "CI" the verdict of the gates as they judge now (tasks/gate_stats.py).

    .venv/bin/python benchmarks/retrain_quality.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
DAYS_AFTER_ONSET = (1, 2, 3)
VISITS_PER_DAY = 6_000
HISTORY_DAYS = 14.0  # the retrain_history_days default
NAMES = ("never", "old", "new", "prior", "outcomes")


def served(
    spec: Any, data: Any, champion: Any, truth: Path, known: Any, cost: float, folder: Path
) -> Any:
    """Return ``data`` with the outcomes of the champion's offers since the window's start.

    The visits from the window's start to ``known`` (the retrain's moment), the ones whose
    score made an offer, and whether they converted; added by the product's own
    ``with_outcomes`` (a file-source spec: these rows carry their features already).
    """
    from banditflow.simulate import build_stream
    from tasks.data import with_outcomes
    from tasks.settings import PipelineSettings

    start = spec.data.start
    days = max(1, round((known - start).total_seconds() / 86_400))
    stream = build_stream(
        truth,
        n=VISITS_PER_DAY * days,
        start=start,
        end=known,
        seed=17,
    )
    offered = stream[model_scores(champion, stream) >= cost]
    rows = offered.assign(
        converted=(offered["u"] < offered["p_true"]).astype(np.int64),
        event_timestamp=pd.to_datetime(offered["at"], utc=True),
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outcomes.parquet"
    rows[[*data.feature_columns, "converted", "event_timestamp"]].to_parquet(path)
    # The retrain's window ends when it runs (the day's feature update), not at its newest
    # label: every outcome known by then is in it.
    update = {"source": "file", "path": str(path), "outcomes": str(path), "end": known}
    file_data = spec.data.model_copy(update=update)
    as_file = spec.model_copy(update={"data": file_data})
    return with_outcomes(data, as_file, PipelineSettings(home=folder))


def search(spec: Any, data: Any, warm: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    """Search ``spec``'s family as the study does: defaults, warm starts, then the optimizer.

    Returns the best trial's pipeline refitted on the training rows, and the completed
    trials (for the warm start of a later retrain).
    """
    from tasks.evaluate import EvalConfig, evaluate_trial
    from tasks.metrics import sign
    from tasks.models import build_model, default_space, fit_model
    from tasks.optimizers import get_optimizer
    from tasks.study_meta import library_defaults

    metric, direction = spec.primary_objective
    space = (
        {k: v.model_dump(exclude_none=True) for k, v in spec.model.space.items()}
        if spec.model.space
        else default_space(spec.model.family)
    )
    optimizer = get_optimizer(spec.optimizer, space, dict(spec.objectives), seed=spec.seed)
    point, _ = library_defaults(spec.model.family, optimizer.space, spec.task, spec.seed)
    for p in [point, *warm]:
        optimizer.enqueue(p)
    config = EvalConfig.from_spec(spec)
    done = []
    for _ in range(spec.budget.max_trials):
        (trial,) = optimizer.ask(1)
        outcome = evaluate_trial(config, trial.params, data)
        ok = outcome.status == "completed" and math.isfinite(outcome.values.get(metric, math.nan))
        optimizer.tell(trial.id, {metric: outcome.values[metric]} if ok else None)
        if ok:
            done.append((sign(direction) * outcome.values[metric], trial))
    done.sort(key=lambda pair: pair[0])
    best = done[0][1].params
    model = build_model(
        spec.model.family, best, task=spec.task, feature_types=data.feature_types, seed=spec.seed
    )
    return fit_model(model, data.X_train, data.y_train, best, data.history), [t for _, t in done]


def reward_per_visit(scores: np.ndarray, stream: pd.DataFrame, cost: float) -> float:
    """Expected net reward per visit of offering when the score is at least the cost."""
    return float(np.mean((scores >= cost) * (stream["p_true"].to_numpy() - cost)))


def model_scores(model: Any, stream: pd.DataFrame) -> np.ndarray:
    from tasks.data import clean_features

    columns = [str(c) for c in model.feature_names_in_]
    return np.asarray(model.predict_proba(clean_features(stream[columns]))[:, 1])


def gate_verdicts(spec: Any, model: Any, data: Any, champion: Any) -> dict[str, Any]:
    """Gate ``model`` as registration does; return the point and the CI verdicts."""
    from tasks.gates import holdout_from, run_gates
    from tasks.onnx import serving_flavour

    holdout = holdout_from(data, spec.gates)
    serving = serving_flavour(
        model, holdout.X, task=spec.task, feature_types=data.feature_types, timing_calls=20
    )
    report = run_gates(
        spec.gates,
        model,
        holdout,
        task=spec.task,
        champion=champion,
        latency_calls=20,
        serving=serving,
    )
    point = [
        r.name
        for r in report.results
        if not (r.value <= r.threshold if r.comparison == "<=" else r.value >= r.threshold)
    ]
    return {"flavour": serving.name, "point_failures": point, "ci_failures": report.failures}


def verdict(failures: list[str]) -> str:
    return "pass" if not failures else "fail: " + ", ".join(f.split(".")[-1] for f in failures)


def run_seed(seed: int, folder: Path) -> list[dict[str, Any]]:
    """Return one row per day after the onset for one seed of the quick world."""
    from banditflow.demo import DemoPlan
    from banditflow.simulate import build_stream
    from banditflow.studies import demo_specs
    from tasks.data import attach_history, split_study_data
    from tasks.datagen import feature_oracle_probability, generate, labelled_sessions
    from tasks.models import HISTORY_WEIGHT
    from tasks.retrain_family import choose_family, top_points, with_family
    from tasks.retrain_prior import with_prior

    plan = DemoPlan.quick()
    plan = replace(plan, world=replace(plan.world, seed=seed))
    world, cost = plan.world, plan.world.offer_cost
    config = world.generator()
    truth = folder / f"world-{seed}"
    generate(config, truth)
    frame = labelled_sessions(truth)
    spec = next(s for s in demo_specs(plan, "conversion", "log_loss") if "hyperopt" in s.name)

    def window(start: Any, end: Any) -> Any:
        data = spec.data.model_copy(update={"start": start, "end": end})
        return spec.model_copy(update={"data": data})

    history = window(None, world.live_start)
    began = time.perf_counter()
    champion, champion_trials = search(history, split_study_data(frame, history), [])
    print(f"seed {seed}: champion searched in {time.perf_counter() - began:.0f} s", flush=True)
    warm = top_points(champion_trials, spec, 3)
    rows = []
    for k in DAYS_AFTER_ONSET:
        assert world.drift_at is not None
        retrain = window(world.drift_at, world.drift_at + timedelta(days=k))
        data = split_study_data(frame, retrain)
        began = time.perf_counter()
        old, _ = search(retrain, data, warm)
        old_s = time.perf_counter() - began
        began = time.perf_counter()
        choice = choose_family(retrain, data, warm)
        new, _ = search(with_family(retrain, choice), data, choice.warm_start)
        new_s = time.perf_counter() - began
        began = time.perf_counter()
        prior_spec, prior_warm = with_prior(
            with_family(retrain, choice), choice.warm_start, HISTORY_DAYS
        )
        before = window(world.drift_at - timedelta(days=HISTORY_DAYS), world.drift_at)
        prior_data = attach_history(data, split_study_data(frame, before))
        prior, prior_trials = search(prior_spec, prior_data, prior_warm)
        prior_s = time.perf_counter() - began
        weight = prior_trials[0].params.get(HISTORY_WEIGHT, 0.0)  # the best trial's
        began = time.perf_counter()
        known = world.drift_at + timedelta(days=k + 1)
        served_data = served(
            prior_spec, prior_data, champion, truth, known, cost, folder / f"served-{seed}-{k}"
        )
        served_model, _ = search(prior_spec, served_data, prior_warm)
        served_s = time.perf_counter() - began
        serve_from = world.drift_at + timedelta(days=k + 1)
        days = (world.day_start(world.live_days) - serve_from).days
        stream = build_stream(
            truth, n=VISITS_PER_DAY * days, start=serve_from, end=world.day_start(world.live_days)
        )
        oracle = reward_per_visit(
            feature_oracle_probability(stream, stream["at"], config), stream, cost
        )
        rewards = {
            name: reward_per_visit(model_scores(m, stream), stream, cost)
            for name, m in (
                ("never", champion),
                ("old", old),
                ("new", new),
                ("prior", prior),
                ("outcomes", served_model),
            )
        }
        gates = {
            name: gate_verdicts(retrain, m, data, champion)
            for name, m in (("old", old), ("new", new))
        }
        rows.append(
            {
                "seed": seed,
                "day": k,
                "train rows": len(data.X_train),
                "hold-out rows": len(data.X_test),
                "hold-out conversions": int(data.y_test.sum()),
                "feature oracle": oracle,
                **{f"{n} / f.o.": rewards[n] / oracle for n in NAMES},
                "new family": choice.family,
                "prior rows": prior_data.history_rows,
                "history_weight": round(float(weight), 4),
                "outcome rows": served_data.outcome_rows,
                **{f"{n} gates (point)": verdict(gates[n]["point_failures"]) for n in gates},
                **{f"{n} gates (CI)": verdict(gates[n]["ci_failures"]) for n in gates},
                "old s": round(old_s, 1),
                "new s": round(new_s, 1),
                "prior s": round(prior_s, 1),
                "outcomes s": round(served_s, 1),
                "screen": choice.detail(),
            }
        )
        print(json.dumps(rows[-1], default=str), flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    columns = [f"{n} / f.o." for n in NAMES]
    means = frame.groupby("day")[columns].mean()
    means = means.reset_index().assign(seed="mean")
    return pd.concat([frame, means], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    facts: dict[str, Any] = {"seeds": args.seeds, "load average before": _load()}
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="retrain-quality-") as tmp:
        for seed in args.seeds:
            rows += run_seed(seed, Path(tmp))
            facts |= {"load average after": _load(), "wall s": time.perf_counter() - began}
            markdown = write(rows, facts)  # each seed's rows survive a later failure
    print(markdown)
    print(facts)


def _load() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def write(rows: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    """Write the JSON and Markdown results; return the Markdown table."""
    shown = summarize(rows).drop(columns=["screen"]).round(3)
    markdown = shown.to_markdown(index=False)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrain_quality.json").write_text(
        json.dumps({"facts": facts, "rows": rows}, indent=2, default=str) + "\n"
    )
    screens = "\n".join(f"- seed {r['seed']} day {r['day']}: {r['screen']}" for r in rows)
    (RESULTS / "retrain_quality.md").write_text(
        f"{markdown}\n\n{json.dumps(facts, default=str)}\n\nScreens:\n{screens}\n"
    )
    return markdown


if __name__ == "__main__":
    main()
