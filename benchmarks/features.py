"""Benchmark the feature store: Feast's point-in-time join and online lookup vs plain baselines.

(a) A training set of N label rows through Feast (DuckDB and file/Dask offline stores)
    against a pandas ``merge_asof`` doing the same point-in-time join with the views' TTLs
    on the same parquet files; the values are checked to agree.
(b) Online lookup of 1 and 100 entity keys through ``FeatureStore.get_online_features``
    against a direct SQL select (and protobuf decoding) on the same SQLite online file.
(c) The same Feast lookup on the Redis online store (the scaled profile's) against the
    SQLite one, the same data materialized into both, keys alternating between them
    (``--redis 127.0.0.1:6379``, database ``--redis-db``, flushed first and after).

    .venv/bin/python benchmarks/features.py                 # full size: 1,000,000 labels
    .venv/bin/python benchmarks/features.py --rows 50000 --file-rows 20000   # quick
    .venv/bin/python benchmarks/features.py --rows 50000 --skip-offline --redis 127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.datagen import ACTIVITY_FEATURES, PROFILE_FEATURES, GeneratorConfig, generate
from tasks.features import (
    FeatureStoreError,
    apply_repository,
    build_training_set,
    get_online_features,
    get_store,
)
from tasks.ingest import materialize_incremental
from tasks.settings import PipelineSettings

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE_TTL, ACTIVITY_TTL = timedelta(days=365), timedelta(days=2)


def pandas_training_set(labels: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """Do Feast's point-in-time join with merge_asof: latest row at or before, within TTL."""
    left = labels[["customer_id", "event_timestamp", "converted"]].copy()
    left["_row"] = np.arange(len(left))
    left = left.sort_values("event_timestamp", kind="stable")
    for name, columns, ttl in (
        ("customers", PROFILE_FEATURES, PROFILE_TTL),
        ("activity", ACTIVITY_FEATURES, ACTIVITY_TTL),
    ):
        right = pd.read_parquet(data_dir / f"{name}.parquet")
        # Ties on event time: the last-created row wins, as in Feast.
        right = right.sort_values(["event_timestamp", "created_timestamp"], kind="stable")
        left = pd.merge_asof(
            left,
            right[["customer_id", "event_timestamp", *columns]],
            on="event_timestamp",
            by="customer_id",
            direction="backward",
            tolerance=ttl,
        )
    left = left.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    return left[["customer_id", "event_timestamp", "converted", *PROFILE_FEATURES,
                 *ACTIVITY_FEATURES]]  # fmt: skip


def mismatches(a: pd.DataFrame, b: pd.DataFrame) -> int:
    """Count cells that differ (NaN equals NaN; float tolerance 1e-9)."""
    bad = 0
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(np.float64), y.to_numpy(np.float64)
            same = np.isclose(xv, yv, rtol=0, atol=1e-9) | (np.isnan(xv) & np.isnan(yv))
        elif pd.api.types.is_datetime64_any_dtype(x):
            same = (pd.to_datetime(x, utc=True) == pd.to_datetime(y, utc=True)).to_numpy()
        else:
            same = ((x == y) | (x.isna() & y.isna())).to_numpy()
        bad += int((~same).sum())
    return bad


def bench_offline(settings: PipelineSettings, labels: pd.DataFrame, stores: dict[str, int]):
    rows = []
    for store, n in stores.items():
        subset = labels.iloc[:n].reset_index(drop=True)
        # Warm-up on a few rows: DuckDB/ibis and Dask import lazily on the first join.
        build_training_set(subset.head(100), settings=settings, offline_store=store)  # type: ignore[arg-type]
        start = time.perf_counter()
        try:
            feast_frame = build_training_set(subset, settings=settings, offline_store=store)  # type: ignore[arg-type]
        except FeatureStoreError as exc:  # the file store can drop rows: report, go on
            print(f"{store} at {n:,} rows failed: {exc}", flush=True)
            rows.append({"store": store, "label_rows": n, "error": str(exc)})
            continue
        feast_s = time.perf_counter() - start
        start = time.perf_counter()
        pandas_frame = pandas_training_set(subset, settings.data_dir)
        pandas_s = time.perf_counter() - start
        bad = mismatches(feast_frame, pandas_frame)
        rows.append(
            {
                "store": store,
                "label_rows": n,
                "feast_s": round(feast_s, 3),
                "pandas_merge_asof_s": round(pandas_s, 3),
                "ratio": round(feast_s / pandas_s, 2),
                "mismatched_cells": bad,
            }
        )
        print(rows[-1], flush=True)
    return rows


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_online(settings: PipelineSettings, ids: np.ndarray, repeats: int) -> list[dict]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = get_store(settings)
    service = store.get_feature_service("conversion_model_v1")
    db = sqlite3.connect(settings.feast_dir / "online_store.db")
    tables = ["banditflow_customer_profile", "banditflow_customer_activity"]
    rng = np.random.default_rng(0)

    def sql_lookup(keys: list[int]) -> dict[int, dict[str, Any]]:
        blobs = [
            serialize_entity_key(
                EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=k)]),
                entity_key_serialization_version=3,
            )
            for k in keys
        ]
        marks = ",".join("?" * len(blobs))
        out: dict[bytes, dict[str, Any]] = {b: {} for b in blobs}
        for table in tables:
            query = (
                f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN ({marks})"
            )
            for key, feature, value in db.execute(query, blobs):
                proto = Value.FromString(value)
                kind = proto.WhichOneof("val")
                out[key][feature] = getattr(proto, kind) if kind else None
        return {k: out[b] for k, b in zip(keys, blobs, strict=True)}

    # Both paths return the same values.
    probe = [int(i) for i in ids[:5]]
    via_feast = get_online_features([{"customer_id": k} for k in probe], settings=settings)
    via_sql = sql_lookup(probe)
    for k, row in zip(probe, via_feast.to_dict("records"), strict=True):
        for feature in ("sessions_7d", "age_band", "discount_rate_7d"):
            assert row[feature] == via_sql[k][feature], (k, feature)

    results = []
    for n_keys in (1, 100):
        feast_t, sql_t = [], []
        for _ in range(repeats):
            keys = [int(k) for k in rng.choice(ids, size=n_keys, replace=False)]
            rows = [{"customer_id": k} for k in keys]
            start = time.perf_counter()
            store.get_online_features(features=service, entity_rows=rows).to_dict()
            feast_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            sql_lookup(keys)
            sql_t.append(time.perf_counter() - start)
        f50, f99 = _percentiles(feast_t)
        s50, s99 = _percentiles(sql_t)
        results.append(
            {
                "keys": n_keys,
                "repeats": repeats,
                "feast_p50_ms": round(f50, 3),
                "feast_p99_ms": round(f99, 3),
                "sql_p50_ms": round(s50, 3),
                "sql_p99_ms": round(s99, 3),
                "p50_ratio": round(f50 / s50, 2),
            }
        )
        print(results[-1], flush=True)
    db.close()
    return results


def bench_redis_vs_sqlite(
    settings: PipelineSettings, ids: np.ndarray, repeats: int, redis: str, db: int
) -> list[dict]:
    """Feast lookups on Redis and on SQLite, same data and keys, alternating; p50/p99."""
    import shutil

    import redis as redis_client

    host, _, port = redis.partition(":")
    flush = redis_client.Redis(host=host, port=int(port or 6379), db=db).flushdb
    flush()
    home = settings.home / "redis-home"
    shutil.copytree(settings.data_dir, home / "data")
    yaml_path = home / "feature_store.yaml"
    yaml_path.write_text(f"online_store:\n  type: redis\n  connection_string: '{redis},db={db}'\n")
    on_redis = PipelineSettings(home=home, feature_store_yaml=yaml_path).ensure_dirs()
    apply_repository(on_redis)
    materialize_incremental(datetime.now(UTC), settings=on_redis)
    stores = {"sqlite": get_store(settings), "redis": get_store(on_redis)}
    service = stores["sqlite"].get_feature_service("conversion_model_v1")
    probe = [{"customer_id": int(k)} for k in ids[:20]]
    answers = {n: s.get_online_features(features=service, entity_rows=probe).to_dict()
               for n, s in stores.items()}  # fmt: skip
    assert answers["sqlite"] == answers["redis"], "Redis and SQLite disagree"
    rng, results = np.random.default_rng(1), []
    try:
        for n_keys in (1, 100):
            times: dict[str, list[float]] = {name: [] for name in stores}
            for _ in range(repeats):
                rows = [{"customer_id": int(k)} for k in rng.choice(ids, n_keys, replace=False)]
                for name, store in stores.items():
                    start = time.perf_counter()
                    store.get_online_features(features=service, entity_rows=rows).to_dict()
                    times[name].append(time.perf_counter() - start)
            (r50, r99), (s50, s99) = _percentiles(times["redis"]), _percentiles(times["sqlite"])
            results.append(
                {"keys": n_keys, "repeats": repeats, "redis_p50_ms": round(r50, 3)}
                | {"redis_p99_ms": round(r99, 3), "sqlite_p50_ms": round(s50, 3)}
                | {"sqlite_p99_ms": round(s99, 3), "p50_ratio": round(r50 / s50, 2)}
            )
            print(results[-1], flush=True)
    finally:
        flush()
    return results


def to_markdown(result: dict) -> str:
    lines = [
        f"# Feature store benchmark ({result['when']}, {result['machine']})",
        "",
        f"Data: {result['customers']:,} customers x {result['days']} days of activity "
        f"({result['customers'] * result['days']:,} rows). Seconds measured once each on a "
        "shared 2-core machine (load average at start "
        f"{result['load_average']}).",
        "",
        "## (a) Point-in-time training set: Feast vs pandas merge_asof (same TTLs)",
        "",
        "| offline store | label rows | Feast s | pandas s | Feast / pandas | mismatched cells |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["offline"]:
        if "error" in row:
            lines.append(f"| {row['store']} | {row['label_rows']:,} | failed: {row['error']} |")
            continue
        lines.append(
            f"| {row['store']} | {row['label_rows']:,} | {row['feast_s']:.2f} | "
            f"{row['pandas_merge_asof_s']:.2f} | {row['ratio']:.2f}x | {row['mismatched_cells']} |"
        )
    lines += [
        "",
        "## (b) Online lookup: Feast get_online_features vs direct SQL on the SQLite file",
        "",
        "| keys | Feast p50 ms | Feast p99 ms | SQL p50 ms | SQL p99 ms | Feast / SQL (p50) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["online"]:
        lines.append(
            f"| {row['keys']} | {row['feast_p50_ms']:.2f} | {row['feast_p99_ms']:.2f} | "
            f"{row['sql_p50_ms']:.2f} | {row['sql_p99_ms']:.2f} | {row['p50_ratio']:.2f}x |"
        )
    if result.get("online_redis"):
        lines += [
            "",
            "## (c) Online lookup through Feast: Redis online store vs SQLite (same data, keys)",
            "",
            "| keys | Redis p50 ms | Redis p99 ms | SQLite p50 ms | SQLite p99 ms "
            "| Redis / SQLite (p50) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['keys']} | {r['redis_p50_ms']:.2f} | {r['redis_p99_ms']:.2f} | "
            f"{r['sqlite_p50_ms']:.2f} | {r['sqlite_p99_ms']:.2f} | {r['p50_ratio']:.2f}x |"
            for r in result["online_redis"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="label rows (DuckDB)")
    parser.add_argument(
        "--file-rows",
        type=int,
        nargs="*",
        default=[60_000, 200_000],
        help="label rows for the file (Dask) store, which scales worse; 0 skips it",
    )
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=300, help="online lookups per size")
    parser.add_argument("--home", type=Path, default=None, help="data folder (default: a tmp)")
    parser.add_argument("--skip-offline", action="store_true", help="online lookups only")
    parser.add_argument("--redis", default="", help="host:port: also measure Redis (c)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database (flushed)")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="banditflow-bench-"))
    settings = PipelineSettings(home=home).ensure_dirs()
    config = GeneratorConfig(n_customers=args.customers, rows=args.rows)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    start = time.perf_counter()
    generate(config, settings.data_dir)
    print(f"generated {args.rows:,} labels in {time.perf_counter() - start:.1f} s", flush=True)
    apply_repository(settings)
    labels = pd.read_parquet(settings.data_dir / "sessions.parquet")

    stores = {"duckdb": args.rows}
    offline = [] if args.skip_offline else bench_offline(settings, labels, stores)
    for n in [n for n in args.file_rows if n > 0 and not args.skip_offline]:
        offline += bench_offline(settings, labels, {"file": n})
        offline += bench_offline(settings, labels, {"duckdb": n})

    materialize_incremental(datetime.now(UTC), settings=settings)
    ids = pd.read_parquet(settings.data_dir / "customers.parquet")["customer_id"].to_numpy()
    online = bench_online(settings, ids, args.repeats)
    on_redis = []
    if args.redis:
        on_redis = bench_redis_vs_sqlite(settings, ids, args.repeats, args.redis, args.redis_db)

    result = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": load,
        "customers": args.customers,
        "days": config.days,
        "offline": offline,
        "online": online,
        "online_redis": on_redis,
        "load_average_end": "/".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.skip_offline:  # a partial run keeps the full run's files
        (RESULTS / "features-online.md").write_text(to_markdown(result))
        (RESULTS / "features-online.json").write_text(json.dumps(result, indent=2) + "\n")
        print(to_markdown(result))
        return
    (RESULTS / "features.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (RESULTS / "features.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
