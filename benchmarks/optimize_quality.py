"""Bayesmark-style quality of the optimizers: best CV score after N trials, normalised.

For each (model family x sklearn dataset) problem, each method (ours: hyperopt, ax, random;
hyperopt's own ``fmin`` loop, Optuna's TPE and GP samplers and Ax's own ``Client`` loop,
``ax-own``, as the outside references) runs studies of
the largest budget with q points per round (ask q, tell q) over several seeds. The score
at a budget is normalised per problem: 0 = random search's mean best at that budget,
100 = the best value any method found on the problem.
Writes benchmarks/results/optimize_quality.{json,md}.

    .venv/bin/python benchmarks/optimize_quality.py --quick
    nice -n 10 .venv/bin/python benchmarks/optimize_quality.py --seeds 5 --trials 16,32
    # the TPE comparison sized to minutes (about 6 min on 2 busy cores):
    nice -n 10 .venv/bin/python benchmarks/optimize_quality.py --seeds 10 --trials 16,32 \
        --problems logreg-breast_cancer,rf-wine --methods random,hyperopt,hyperopt-fmin,optuna-tpe \
        --out benchmarks/results/tpe
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402 - after the thread settings above

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.optimizers import get_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "optimize_quality"


@dataclass(frozen=True)
class Problem:
    """A model family on a dataset: its space and a CV score to maximize."""

    name: str
    space: dict[str, dict[str, Any]]
    build: Callable[[dict[str, Any]], Any]
    dataset: str
    scoring: str


def _logreg(p: dict[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=p["C"],
            class_weight=p["class_weight"],
            fit_intercept=p["fit_intercept"],
            tol=p["tol"],
            max_iter=300,
        ),
    )


def _forest(p: dict[str, Any]) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=p["n_estimators"],
        max_depth=p["max_depth"],
        max_features=p["max_features"],
        min_samples_leaf=p["min_samples_leaf"],
        criterion=p["criterion"],
        n_jobs=1,
        random_state=0,
    )


def _hgb(p: dict[str, Any]) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        learning_rate=p["learning_rate"],
        max_iter=p["max_iter"],
        max_leaf_nodes=p["max_leaf_nodes"],
        min_samples_leaf=p["min_samples_leaf"],
        l2_regularization=p["l2_regularization"],
        early_stopping=False,
        random_state=0,
    )


LOGREG_SPACE: dict[str, dict[str, Any]] = {
    "C": {"type": "float", "low": 1e-4, "high": 1e2, "log": True},
    "tol": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "class_weight": {"type": "categorical", "choices": [None, "balanced"]},
    "fit_intercept": {"type": "categorical", "choices": [True, False]},
}
FOREST_SPACE: dict[str, dict[str, Any]] = {
    "n_estimators": {"type": "int", "low": 5, "high": 30},
    "max_depth": {"type": "int", "low": 1, "high": 20},
    "max_features": {"type": "float", "low": 0.05, "high": 1.0},
    "min_samples_leaf": {"type": "int", "low": 1, "high": 20, "log": True},
    "criterion": {"type": "categorical", "choices": ["gini", "entropy"]},
}
HGB_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "max_iter": {"type": "int", "low": 10, "high": 100},
    "max_leaf_nodes": {"type": "int", "low": 2, "high": 64, "log": True},
    "min_samples_leaf": {"type": "int", "low": 1, "high": 100, "log": True},
    "l2_regularization": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
}

PROBLEMS = {
    p.name: p
    for p in [
        Problem("logreg-breast_cancer", LOGREG_SPACE, _logreg, "breast_cancer", "neg_log_loss"),
        Problem("rf-wine", FOREST_SPACE, _forest, "wine", "neg_log_loss"),
        Problem("rf-digits", FOREST_SPACE, _forest, "digits", "accuracy"),  # slowest
        Problem("hgb-breast_cancer", HGB_SPACE, _hgb, "breast_cancer", "neg_log_loss"),
    ]
}
QUICK_PROBLEMS = ["logreg-breast_cancer", "hgb-breast_cancer"]


class Evaluator:
    """Cross-validate a problem's model; same params -> same score (cached)."""

    def __init__(self, problem: Problem) -> None:
        from sklearn import datasets

        self.problem = problem
        loader = getattr(datasets, f"load_{problem.dataset}")
        self.X, self.y = loader(return_X_y=True)
        if len(self.y) > 1000:  # digits: keep a trial well under a second
            self.X, self.y = self.X[:1000], self.y[:1000]
        self.cache: dict[str, float] = {}
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, params: dict[str, Any]) -> float:
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        key = json.dumps(params, sort_keys=True, default=str)
        if key not in self.cache:
            start = time.perf_counter()
            cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings of small max_iter
                scores = cross_val_score(
                    self.problem.build(params), self.X, self.y, cv=cv, scoring=self.problem.scoring
                )
            self.cache[key] = float(np.mean(scores))
            self.seconds += time.perf_counter() - start
            self.calls += 1
        return self.cache[key]


class OptunaTPE:
    """Optuna's TPE or GP sampler (the references) through its ask/tell API; benchmark only."""

    def __init__(
        self, space: dict[str, dict[str, Any]], seed: int, q: int, sampler_name: str = "tpe"
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler: Any
        if sampler_name == "gp":
            # Optuna's Gaussian-process sampler (logEI), with as many random start-up points
            # as the Ax adapter's Sobol phase, so the two GP methods start alike.
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
        else:
            # The same 10 random start-up points as our hyperopt default; a constant liar
            # for batches, as Optuna recommends for parallel workers.
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=10, constant_liar=q > 1
            )
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.distributions: dict[str, Any] = {}
        for name, spec in space.items():
            if spec["type"] == "categorical":
                self.distributions[name] = optuna.distributions.CategoricalDistribution(
                    spec["choices"]
                )
            elif spec["type"] == "int":
                self.distributions[name] = optuna.distributions.IntDistribution(
                    int(spec["low"]), int(spec["high"]), log=spec.get("log", False)
                )
            else:
                self.distributions[name] = optuna.distributions.FloatDistribution(
                    spec["low"], spec["high"], log=spec.get("log", False)
                )
        self.trials: dict[str, Any] = {}

    def ask(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for _ in range(n):
            trial = self.study.ask(self.distributions)
            self.trials[str(trial.number)] = trial
            out.append((str(trial.number), dict(trial.params)))
        return out

    def tell(self, trial_id: str, value: float) -> None:
        self.study.tell(self.trials.pop(trial_id), value)


class AxOwn:
    """Ax's own loop (the reference for the adapter): its ``Client`` with its defaults.

    The same 8 Sobol points as the adapter, Ax's own generation strategy and acquisition
    optimizer; trials in flight stay pending in Ax's experiment, so a batch is Ax's own
    batch generation. Categorical choices go to Ax by index (Ax takes no ``None``).
    """

    def __init__(self, space: dict[str, dict[str, Any]], seed: int) -> None:
        from ax import ChoiceParameterConfig, Client, RangeParameterConfig

        self.space = space
        self.client = Client(random_seed=seed)
        parameters: list[Any] = []
        for name, p in space.items():
            if p["type"] == "categorical":
                values = [str(i) for i in range(len(p["choices"]))]
                parameters.append(
                    ChoiceParameterConfig(name=name, parameter_type="str", values=values)
                )
            else:
                cast = int if p["type"] == "int" else float
                parameters.append(
                    RangeParameterConfig(
                        name=name,
                        parameter_type=p["type"],
                        bounds=(cast(p["low"]), cast(p["high"])),
                        scaling="log" if p.get("log") else "linear",
                    )
                )
        self.client.configure_experiment(parameters=parameters)
        self.client.configure_optimization(objective="score")
        self.client.configure_generation_strategy(initialization_budget=8)

    def ask(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for index, params in self.client.get_next_trials(max_trials=n).items():
            decoded = {
                name: (
                    self.space[name]["choices"][int(str(value))]
                    if self.space[name]["type"] == "categorical"
                    else value
                )
                for name, value in params.items()
            }
            out.append((str(index), decoded))
        return out

    def tell(self, trial_id: str, value: float) -> None:
        self.client.complete_trial(int(trial_id), raw_data={"score": value})


def run_fmin(problem: Problem, evaluate: Evaluator, seed: int, budget: int) -> dict[str, Any]:
    """Hyperopt's own loop: ``fmin`` with TPE and hyperopt's defaults, on the same space."""
    import logging

    from hyperopt import STATUS_OK, Trials, fmin, tpe

    from tasks.optimizers.hyperopt import _flatten, build_hyperopt_space
    from tasks.optimizers.space import normalise_space

    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    space = normalise_space(problem.space)
    trace: list[float] = []
    ask_seconds: list[float] = []
    last = [time.perf_counter()]

    def objective(sample: dict[str, Any]) -> dict[str, Any]:
        ask_seconds.append(time.perf_counter() - last[0])
        value = evaluate(space.validate_point(_flatten(sample, {}), clip=True))
        trace.append(max(value, trace[-1]) if trace else value)
        last[0] = time.perf_counter()
        return {"loss": -value, "status": STATUS_OK}  # fmin minimizes

    fmin(
        objective,
        build_hyperopt_space(space),
        algo=tpe.suggest,
        max_evals=budget,
        trials=Trials(),
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return {"trace": trace, "ask_seconds": ask_seconds, "model_ask_seconds": []}


def run_study(
    method: str,
    problem: Problem,
    evaluate: Evaluator,
    seed: int,
    q: int,
    budget: int,
    loop: str = "async",
) -> dict[str, Any]:
    """Run one study to ``budget`` trials with q in flight; return the best-so-far trace.

    ``loop="async"`` is the optimize flow's loop: q trials in flight, and as each finishes
    (the oldest first) it is told and one more is asked for, with q - 1 still pending.
    ``loop="batch"`` asks for q, tells all q, then asks again (synchronous rounds).
    """
    if method == "hyperopt-fmin":
        return run_fmin(problem, evaluate, seed, budget)
    trace: list[float] = []
    ask_seconds: list[float] = []
    model_ask_seconds: list[float] = []
    best = -math.inf
    reference: Any = None  # a library's own loop: Optuna's or Ax's
    if method.startswith("optuna-"):
        reference = OptunaTPE(problem.space, seed, q, method.split("-", 1)[1])
    elif method == "ax-own":
        reference = AxOwn(problem.space, seed)
    elif method == "ax-default-acqf":  # the adapter with Ax's own acquisition optimizer
        optimizer = get_optimizer(
            "ax",
            problem.space,
            {"score": "maximize"},
            seed=seed,
            num_restarts=20,
            raw_samples=1024,
            maxiter=200,
        )
    else:
        optimizer = get_optimizer(method, problem.space, {"score": "maximize"}, seed=seed)
    stalls = handed = 0
    in_flight: list[tuple[str, dict[str, Any]]] = []
    while len(trace) < budget:
        room = q - len(in_flight) if loop == "async" or not in_flight else 0
        n = min(room, budget - handed)
        if n > 0:
            start = time.perf_counter()
            if reference is not None:
                asked = reference.ask(n)
            else:
                asked = [(t.id, t.params) for t in optimizer.ask(n)]
            elapsed = time.perf_counter() - start
            ask_seconds.append(elapsed)
            if method.startswith("ax") and handed >= 8:  # past the Sobol points
                model_ask_seconds.append(elapsed)
            in_flight += asked
            handed += len(asked)
        if not in_flight:  # a backend may hand out fewer points; none at all twice is a bug
            stalls += 1
            if stalls > 1:
                raise RuntimeError(f"{method} returned no trial twice with nothing pending")
            continue
        told = in_flight if loop == "batch" else in_flight[:1]
        in_flight = [] if loop == "batch" else in_flight[1:]
        for trial_id, params in told:
            value = evaluate(params)
            if reference is not None:
                reference.tell(trial_id, value)
            else:
                optimizer.tell(trial_id, {"score": value})
            best = max(best, value)
            trace.append(best)
    return {
        "trace": trace,
        "ask_seconds": ask_seconds,
        "model_ask_seconds": model_ask_seconds,
    }


def summarise(
    runs: list[dict[str, Any]], budgets: list[int], problems: list[str]
) -> dict[str, Any]:
    """Normalise each (method, q) per problem and budget; average over problems."""
    by_key: dict[tuple[str, int, str, int], list[float]] = {}
    best_any: dict[str, float] = {}
    for run in runs:
        for budget in budgets:
            value = run["trace"][budget - 1]
            by_key.setdefault((run["method"], run["q"], run["problem"], budget), []).append(value)
        best_any[run["problem"]] = max(best_any.get(run["problem"], -math.inf), run["trace"][-1])
    methods = sorted({(r["method"], r["q"]) for r in runs})
    table: dict[str, Any] = {}
    for method, q in methods:
        row: dict[str, Any] = {"method": method, "q": q}
        row["seeds"] = len({r["seed"] for r in runs if (r["method"], r["q"]) == (method, q)})
        for budget in budgets:
            scores = []
            raw = {}
            for problem in problems:
                values = by_key.get((method, q, problem, budget))
                baseline = by_key.get(("random", 1, problem, budget))
                if not values or not baseline:
                    continue
                base, top = float(np.mean(baseline)), best_any[problem]
                scale = top - base
                score = 100.0 * (float(np.mean(values)) - base) / scale if scale > 0 else 0.0
                scores.append(score)
                raw[problem] = {"mean_best": float(np.mean(values)), "score": score}
            row[f"score@{budget}"] = float(np.mean(scores)) if scores else float("nan")
            # Standard error over seeds: each seed's score averaged over the problems.
            per_seed: dict[int, list[float]] = {}
            for run in runs:
                if (run["method"], run["q"]) != (method, q) or run["problem"] not in raw:
                    continue
                baseline = by_key[("random", 1, run["problem"], budget)]
                base, top = float(np.mean(baseline)), best_any[run["problem"]]
                scale = top - base
                value = run["trace"][budget - 1]
                score = 100.0 * (value - base) / scale if scale > 0 else 0.0
                per_seed.setdefault(run["seed"], []).append(score)
            seed_scores = [float(np.mean(v)) for v in per_seed.values()]
            row[f"se@{budget}"] = (
                float(np.std(seed_scores, ddof=1) / np.sqrt(len(seed_scores)))
                if len(seed_scores) > 1
                else float("nan")
            )
            row[f"problems@{budget}"] = raw
        asks = [s for r in runs if (r["method"], r["q"]) == (method, q) for s in r["ask_seconds"]]
        model = [
            s for r in runs if (r["method"], r["q"]) == (method, q) for s in r["model_ask_seconds"]
        ]
        row["ask_seconds_mean"] = float(np.mean(asks)) if asks else float("nan")
        row["model_ask_seconds_mean"] = float(np.mean(model)) if model else None
        row["model_ask_seconds_per_point"] = float(np.mean(model)) / q if model else None
        table[f"{method} q={q}"] = row
    return {"rows": table, "best_any": best_any}


def to_markdown(summary: dict[str, Any], budgets: list[int], meta: dict[str, Any]) -> str:
    lines = [
        f"# {NAME}",
        "",
        f"Problems: {', '.join(meta['problems'])}; seeds: {meta['seeds']}; "
        f"3-fold CV; score = 100 x (mean best - random's mean best) / "
        f"(best found by any method - random's mean best), averaged over problems; "
        "± one standard error over seeds. "
        f"Loop for q > 1: {meta.get('loop', 'batch')} ("
        + (
            "q trials in flight, one asked as each finishes: the optimize flow's loop"
            if meta.get("loop") == "async"
            else "ask q, tell q, then ask again"
        )
        + ").",
        "",
        "| method | q | seeds | " + " | ".join(f"score @{b}" for b in budgets) + " | ask s (mean) "
        "| model ask s/round | model ask s/point |",
        "|---|---|---|" + "---|" * len(budgets) + "---|---|---|",
    ]
    for row in summary["rows"].values():
        model = row["model_ask_seconds_mean"]
        per_point = row["model_ask_seconds_per_point"]
        lines.append(
            f"| {row['method']} | {row['q']} | {row['seeds']} | "
            + " | ".join(f"{row[f'score@{b}']:.1f} ± {row[f'se@{b}']:.1f}" for b in budgets)
            + f" | {row['ask_seconds_mean']:.3f} | "
            + (f"{model:.2f}" if model is not None else "-")
            + " | "
            + (f"{per_point:.2f}" if per_point is not None else "-")
            + " |"
        )
    lines += ["", f"Per problem (mean best CV score at {budgets[-1]} trials):", ""]
    problems = meta["problems"]
    lines.append("| method | q | " + " | ".join(problems) + " |")
    lines.append("|---|---|" + "---|" * len(problems))
    for row in summary["rows"].values():
        raw = row[f"problems@{budgets[-1]}"]
        cells = [f"{raw[p]['mean_best']:.4f}" if p in raw else "-" for p in problems]
        lines.append(f"| {row['method']} | {row['q']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Wall time: {meta['seconds']:.0f} s; evaluation time: {meta['eval_seconds']:.0f} s.",
        f"Load average (1, 5, 15 min): {meta.get('load_start', '-')} at the start, "
        f"{meta.get('load_end', '-')} at the end.",
    ]
    return "\n".join(lines) + "\n"


def write_results(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> str:
    """Summarise ``runs``; write the JSON and markdown results; return the markdown."""
    summary = summarise(runs, meta["budgets"], meta["problems"])
    markdown = to_markdown(summary, meta["budgets"], meta)
    (out / f"{NAME}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1)
    )
    (out / f"{NAME}.md").write_text(markdown)
    return markdown


def combine(paths: list[Path], out: Path) -> int:
    """Merge runs saved by several invocations (e.g. problems split over two processes)."""
    runs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"problems": [], "seconds": 0.0, "eval_seconds": 0.0}
    seen: set[tuple[str, int, str, int]] = set()
    for path in paths:
        saved = json.loads(path.read_text())
        for run in saved["runs"]:  # the random baseline may be in several files
            key = (run["problem"], run["seed"], run["method"], run["q"])
            if key not in seen:
                seen.add(key)
                runs.append(run)
        for field in ("budgets", "qs", "loop"):
            meta[field] = saved["meta"].get(field, "batch")
        meta["problems"] += [p for p in saved["meta"]["problems"] if p not in meta["problems"]]
        meta["seconds"] += saved["meta"]["seconds"]
        meta["eval_seconds"] += saved["meta"]["eval_seconds"]
    meta["seeds"] = len({r["seed"] for r in runs})
    out.mkdir(parents=True, exist_ok=True)
    print(write_results(runs, meta, out))
    return 0


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # not Linux
        return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="to split seeds over processes")
    parser.add_argument("--trials", default="16,32", help="budgets, comma-separated")
    parser.add_argument("--problems", default=",".join(p for p in PROBLEMS if p != "rf-digits"))
    parser.add_argument("--methods", default="random,hyperopt,hyperopt-fmin,optuna-tpe,ax")
    parser.add_argument("--q", default="1,4", help="points per round, comma-separated")
    parser.add_argument(
        "--loop",
        choices=["async", "batch"],
        default="async",
        help="q>1: the flow's loop (q in flight, one asked as each finishes) or rounds of q",
    )
    parser.add_argument("--quick", action="store_true", help="2 problems, 2 seeds, 8/16 trials")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--combine",
        default="",
        help="summarise these saved JSON files (comma-separated) instead of running",
    )
    args = parser.parse_args(argv)
    if args.combine:
        return combine([Path(p) for p in args.combine.split(",")], Path(args.out))
    if args.quick:
        args.seeds, args.trials, args.problems = 2, "8,16", ",".join(QUICK_PROBLEMS)
    budgets = sorted(int(b) for b in args.trials.split(","))
    problems = args.problems.split(",")
    unknown = sorted(set(problems) - set(PROBLEMS))
    if unknown:
        parser.error(f"unknown problems {unknown}; choose from {sorted(PROBLEMS)}")
    methods = args.methods.split(",")
    qs = [int(q) for q in args.q.split(",")]
    if "random" not in methods:
        methods.insert(0, "random")  # the baseline of the normalised score
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"problems": problems, "seeds": args.seeds, "budgets": budgets}
    meta |= {"qs": qs, "loop": args.loop, "load_start": _load_average()}
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    evaluators = {name: Evaluator(PROBLEMS[name]) for name in problems}
    # Seeds outermost: an interrupted run still covers every problem with its first seeds.
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in problems:
            for method in methods:
                # random search does not depend on q, and fmin is sequential: one run each
                sequential = ("random", "hyperopt-fmin", "optuna-gp")
                for q in [1] if method in sequential else qs:
                    t0 = time.perf_counter()
                    result = run_study(
                        method, PROBLEMS[name], evaluators[name], seed, q, budgets[-1], args.loop
                    )
                    result.update(problem=name, seed=seed, method=method, q=q)
                    result["seconds"] = time.perf_counter() - t0
                    runs.append(result)
                    print(
                        f"{name} seed={seed} {method} q={q}: best {result['trace'][-1]:.4f} "
                        f"in {result['seconds']:.1f} s",
                        flush=True,
                    )
            # Partial results survive an interrupted run.
            meta["seconds"] = time.perf_counter() - start
            meta["eval_seconds"] = sum(e.seconds for e in evaluators.values())
            (out / f"{NAME}.partial.json").write_text(json.dumps({"meta": meta, "runs": runs}))
    meta["seconds"] = time.perf_counter() - start
    meta["eval_seconds"] = sum(e.seconds for e in evaluators.values())
    meta["load_end"] = _load_average()
    markdown = write_results(runs, meta, out)
    (out / f"{NAME}.partial.json").unlink(missing_ok=True)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
