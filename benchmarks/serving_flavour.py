"""Benchmark the serving flavours: sklearn (cloudpickle via MLflow) against ONNX (onnxruntime).

For each shipped model family, a pipeline is fit on demo-shaped data (the generator's 11
features: 3 categorical, 8 numeric), registered through ``tasks.registry`` and given its
ONNX file through ``tasks.onnx`` -- the same path the register flow takes. Both flavours
are then loaded the way the rollout service loads them (``mlflow.sklearn.load_model`` of
the version; ``onnxruntime.InferenceSession`` on the downloaded ``banditflow.onnx_uri``, one
thread) and timed from JSON-like rows to (label, P(positive)) for 1 and 100 rows.

    .venv/bin/python benchmarks/serving_flavour.py             # 300 single-row calls each
    .venv/bin/python benchmarks/serving_flavour.py --calls 100 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORICAL = {
    "age_band": ["18-24", "25-34", "35-44", "45-54", "55+"],
    "region": ["north", "south", "east", "west", "central"],
    "signup_channel": ["organic", "paid_search", "social", "referral", "email"],
}
NUMERIC = [
    "tenure_days",
    "is_premium",
    "sessions_7d",
    "pageviews_7d",
    "cart_adds_7d",
    "minutes_7d",
    "days_since_last_purchase",
    "discount_rate_7d",
]
# Mid-space parameters of each family's default search space (tasks/models.py).
FAMILIES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0},
    "random_forest": {"n_estimators": 120, "max_depth": 10, "min_samples_leaf": 4},
    "hist_gradient_boosting": {"max_iter": 120, "max_leaf_nodes": 31, "learning_rate": 0.1},
    "mlp": {"hidden_units": 128, "layers": 2, "alpha": 1.0, "early_stopping": True},
}
Rows = Sequence[Mapping[str, Any]]


def demo_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows shaped like the demo's training set (with missing minutes), and a label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.choice(v, n) for c, v in CATEGORICAL.items()})
    frame["tenure_days"] = rng.gamma(2.0, 200.0, n)
    frame["is_premium"] = rng.integers(0, 2, n)
    frame["sessions_7d"] = rng.poisson(4, n).astype(float)
    frame["pageviews_7d"] = frame.sessions_7d * rng.gamma(3.0, 2.0, n)
    frame["cart_adds_7d"] = rng.poisson(1.2, n).astype(float)
    frame["minutes_7d"] = np.where(rng.random(n) < 0.05, np.nan, rng.gamma(2.0, 15.0, n))
    frame["days_since_last_purchase"] = rng.integers(0, 200, n).astype(float)
    frame["discount_rate_7d"] = rng.beta(1.5, 6.0, n)
    logit = (
        -2.5
        + 0.45 * np.log1p(frame.sessions_7d)
        + 0.55 * np.log1p(frame.cart_adds_7d)
        + 1.2 * frame.discount_rate_7d
        - 0.01 * frame.days_since_last_purchase
        + 0.35 * frame.is_premium
        + 0.2 * (frame.signup_channel == "referral")
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, y


@dataclass
class Timing:
    p50_ms: float
    p99_ms: float
    cpu_p50_ms: float  # this thread's CPU time: what the call costs, without waiting to run


def time_calls(predict: Callable[[Rows], Any], batches: list[Rows], warmup: int = 20) -> Timing:
    """Time each call (wall clock and thread CPU time) in milliseconds, after a warm-up."""
    for batch in batches[:warmup]:
        predict(batch)
    wall = np.empty(len(batches))
    cpu = np.empty(len(batches))
    for i, batch in enumerate(batches):
        start, start_cpu = time.perf_counter(), time.thread_time()
        predict(batch)
        wall[i] = time.perf_counter() - start
        cpu[i] = time.thread_time() - start_cpu
    return Timing(
        float(np.percentile(wall, 50) * 1e3),
        float(np.percentile(wall, 99) * 1e3),
        float(np.percentile(cpu, 50) * 1e3),
    )


def sklearn_rows(model: Any, names: list[str]) -> Callable[[Rows], tuple[Any, Any]]:
    """What the service does with a sklearn flavour: a frame from the rows, predict_proba."""
    classes = model.classes_

    def predict(rows: Rows) -> tuple[Any, Any]:
        frame = pd.DataFrame([[r.get(n) for n in names] for r in rows], columns=names)
        proba = model.predict_proba(frame)
        return classes[proba.argmax(axis=1)], proba[:, 1]

    return predict


def onnx_rows(session: Any) -> Callable[[Rows], tuple[Any, Any]]:
    """What the service does with an ONNX flavour: one [N, 1] array per input, run."""
    inputs = [(i.name, i.type) for i in session.get_inputs()]

    def predict(rows: Rows) -> tuple[Any, Any]:
        feeds = {}
        for name, kind in inputs:
            if kind == "tensor(string)":
                feeds[name] = np.array([[str(r[name])] for r in rows], dtype=object)
            else:
                feeds[name] = np.array(
                    [[np.nan if r[name] is None else float(r[name])] for r in rows],
                    dtype=np.float32,
                )
        label, proba = session.run(None, feeds)
        return label, proba[:, 1]

    return predict


def run(calls: int, batch_calls: int, train_rows: int) -> dict[str, Any]:
    import mlflow
    import onnxruntime as ort

    from contract import TAG_ONNX_FALLBACK, TAG_ONNX_URI, TAG_SERVING_FLAVOUR
    from tasks.onnx import convert_and_check, record_serving_flavour
    from tasks.registry import register_trial
    from tasks.settings import PipelineSettings
    from tasks.spec import StudySpec
    from tasks.tracking import configure_mlflow, ensure_experiment

    X, y = demo_frame(train_rows, seed=0)
    Xh, _ = demo_frame(2000, seed=1)
    names = list(X.columns)
    records = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in Xh.to_dict(orient="records")
    ]
    singles: list[Rows] = [[records[i % len(records)]] for i in range(calls)]
    hundreds: list[Rows] = [
        [records[(i * 100 + j) % len(records)] for j in range(100)] for i in range(batch_calls)
    ]

    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = PipelineSettings(home=home).ensure_dirs()
    client = configure_mlflow(settings)
    experiment_id = ensure_experiment("bench-serving", settings)

    @dataclass
    class Trial:
        trial_id: str
        params: dict[str, Any]
        values: dict[str, float]

    rows: list[dict[str, Any]] = []
    for family, params in FAMILIES.items():
        spec = StudySpec.parse({"name": f"bench-{family}", "model": {"family": family}})
        registered, model = register_trial(
            client,
            spec,
            Trial("0", params, {}),
            X,
            y,
            study="bench-serving",
            experiment_id=experiment_id,
        )
        outcome, onnx_bytes = convert_and_check(model, Xh.head(500), task="binary")
        record_serving_flavour(
            client, spec.name, registered.version, registered.run_id, outcome, onnx_bytes
        )
        tags = client.get_model_version(spec.name, registered.version).tags

        # Load both flavours as the rollout service does, timing the load too.
        start = time.perf_counter()
        sk_model = mlflow.sklearn.load_model(f"models:/{spec.name}/{registered.version}")
        sk_load = time.perf_counter() - start
        sk_predict = sklearn_rows(sk_model, names)
        entry: dict[str, Any] = {
            "family": family,
            "serving_flavour": tags[TAG_SERVING_FLAVOUR],
            "fallback_reason": tags.get(TAG_ONNX_FALLBACK),
            "sklearn_load_s": sk_load,
            "max_probability_diff": outcome.max_probability_diff,
            "onnx_bytes": outcome.onnx_bytes,
        }
        flavours: dict[str, Callable[[Rows], Any]] = {"sklearn": sk_predict}
        if TAG_ONNX_URI in tags:
            start = time.perf_counter()
            path = mlflow.artifacts.download_artifacts(tags[TAG_ONNX_URI], dst_path=str(home))
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            entry["onnx_load_s"] = time.perf_counter() - start
            flavours["onnx"] = onnx_rows(session)
            # The two flavours answer the same on the benchmark's rows.
            sk_labels, sk_p = sk_predict(hundreds[0])
            ox_labels, ox_p = flavours["onnx"](hundreds[0])
            entry["agree_100_rows"] = bool(
                (np.asarray(sk_labels) == np.asarray(ox_labels)).all()
                and np.abs(np.asarray(sk_p) - np.asarray(ox_p)).max() <= 1e-4
            )
        for batch_name, batches in (("1 row", singles), ("100 rows", hundreds)):
            for flavour, predict in flavours.items():
                timing = time_calls(predict, batches)
                entry[f"{flavour}|{batch_name}"] = {
                    "p50_ms": timing.p50_ms,
                    "p99_ms": timing.p99_ms,
                    "cpu_p50_ms": timing.cpu_p50_ms,
                }
        rows.append(entry)
        print(f"{family}: done ({entry['serving_flavour']})", flush=True)
    return {
        "rows": rows,
        "calls": {"1 row": calls, "100 rows": batch_calls},
        "train_rows": train_rows,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| family | rows | sklearn p50 ms | sklearn p99 ms | onnx p50 ms | onnx p99 ms "
        "| sklearn/onnx p50 | sklearn/onnx p99 | sklearn CPU p50 ms | onnx CPU p50 ms "
        "| CPU ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in result["rows"]:
        for batch in ("1 row", "100 rows"):
            sk = entry[f"sklearn|{batch}"]
            ox = entry.get(f"onnx|{batch}")
            if ox is None:
                lines.append(
                    f"| {entry['family']} | {batch} | {sk['p50_ms']:.3f} | {sk['p99_ms']:.3f} "
                    f"| - | - | - | - | {sk['cpu_p50_ms']:.3f} | - "
                    f"| fallback: {entry['fallback_reason']} |"
                )
                continue
            lines.append(
                f"| {entry['family']} | {batch} | {sk['p50_ms']:.3f} | {sk['p99_ms']:.3f} "
                f"| {ox['p50_ms']:.3f} | {ox['p99_ms']:.3f} "
                f"| {sk['p50_ms'] / ox['p50_ms']:.1f}x | {sk['p99_ms'] / ox['p99_ms']:.1f}x "
                f"| {sk['cpu_p50_ms']:.3f} | {ox['cpu_p50_ms']:.3f} "
                f"| {sk['cpu_p50_ms'] / max(ox['cpu_p50_ms'], 1e-6):.1f}x |"
            )
    lines += [
        "",
        "| family | serving flavour | sklearn load s | onnx load s | onnx bytes "
        "| max prob diff (hold-out) | agree on 100 rows |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for e in result["rows"]:
        onnx_load = f"{e['onnx_load_s']:.3f}" if "onnx_load_s" in e else "-"
        diff = e["max_probability_diff"]
        lines.append(
            f"| {e['family']} | {e['serving_flavour']} | {e['sklearn_load_s']:.3f} "
            f"| {onnx_load} | {e['onnx_bytes'] or '-'} "
            f"| {'-' if diff is None else f'{diff:.2e}'} | {e.get('agree_100_rows', '-')} |"
        )
    calls = result["calls"]
    lines += [
        "",
        f"Calls timed: {calls['1 row']} single-row, {calls['100 rows']} of 100 rows, after 20 "
        f"warm-up calls; from JSON-like rows to (label, P(positive)); one thread "
        f"(OMP_NUM_THREADS={result['threads']['OMP_NUM_THREADS']}, onnxruntime intra-op 1); "
        f"{result['train_rows']} training rows; {result['machine']['cpus']} CPUs shared with "
        f"other work (1-minute load average {result['machine']['load_average_1m']:.1f}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="single-row calls per flavour")
    parser.add_argument("--batch-calls", type=int, default=100, help="100-row calls per flavour")
    parser.add_argument("--train-rows", type=int, default=20_000)
    args = parser.parse_args()
    result = run(args.calls, args.batch_calls, args.train_rows)
    table = markdown(result)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_flavour.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "serving_flavour.md").write_text(
        "# Serving flavours: sklearn vs onnxruntime\n\n" + table
    )


if __name__ == "__main__":
    main()
