"""Sustained acknowledged feedback per second, durable before the response (group commit).

Each configuration serves the rollout app under uvicorn; ids come from batch /predict
calls, then a separate process sends one distinct feedback per request over 64 keep-alive
connections. Every 200 is a feedback committed to the store (SQLite with
``synchronous=FULL``, or PostgreSQL); the store's own count is checked against the acks.
The baseline is the same server's ceiling for a trivial route (GET /healthz).

    .venv/bin/python benchmarks/rollout_feedback.py [--seconds 6]

Writes benchmarks/results/rollout_feedback.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from rollout_overhead import (
    FEATURES,
    FLAVOURS,
    RESULTS,
    Server,
    build_registry,
    http_post,
    loadavg,
    markdown,
    run_load,
    run_load_cpu,
    server_env,
    write_requests,
)

POSTGRES_ADMIN = os.environ.get(
    "BANDITFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def issue_ids(url: str, n: int) -> list[str]:
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        while len(ids) < n:
            rows = [{"features": FEATURES} for _ in range(min(1000, n - len(ids)))]
            response = client.post("/predict", json=rows)
            response.raise_for_status()
            ids += [r["request_id"] for r in response.json()]
    return ids


def postgres_database() -> tuple[str, str] | None:
    """Create a fresh database; return (url, name), or None when PostgreSQL is not there."""
    try:
        import psycopg

        name = f"bf_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name, name
    except Exception as exc:  # no server: the SQLite rows still stand
        print(f"PostgreSQL skipped: {exc}")
        return None


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stored_outcomes(state_url: str) -> int:
    from rollout.store import Store

    store = Store(state_url)
    try:
        return sum(s.outcomes for s in store.read_stats().values())
    finally:
        store.dispose()


def measure(
    name: str,
    home: Path,
    state_url: str,
    workers: int,
    seconds: float,
    ids_needed: int,
    batch: int = 1,
) -> dict[str, Any]:
    env = server_env(home, BANDITFLOW_STATE_URL=state_url)
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-prom-")
    server = Server("rollout.app:create_app", env, workers=workers).wait()
    try:
        ceiling_req = write_requests(
            home / "healthz.json", [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
        )
        ceiling = run_load(server.url, ceiling_req, seconds / 2, 64, warmup=0.5)
        ids = issue_ids(server.url, ids_needed)
        before = stored_outcomes(state_url)
        bodies: list[Any] = [{"request_id": rid, "reward": i % 2} for i, rid in enumerate(ids)]
        if batch > 1:  # the batch form: one call carries ``batch`` feedbacks
            bodies = [bodies[i : i + batch] for i in range(0, len(bodies), batch)]
        feedback = write_requests(
            home / f"feedback-{uuid.uuid4().hex[:6]}.json",
            [http_post("/feedback", body) for body in bodies],
        )
        result = run_load_cpu(server, feedback, seconds, 64, warmup=0.0, once=True)
    finally:
        server.stop()
    stored = stored_outcomes(state_url) - before
    distinct = result["ok"] * batch  # each id is sent once: every ack is a distinct feedback
    return {
        "config": name,
        "workers": workers,
        "batch": batch,
        "acked_per_s": result["rps"] * batch,
        "ceiling_per_s": ceiling["rps"],
        "ratio": result["rps"] / ceiling["rps"],
        "cpu_us": result["cpu_us_per_request"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "acked": result["ok"] * batch,
        "stored": stored,
        "lost": max(distinct - stored, 0),
        "non_200": result["requests"] - result["ok"],
        "ids_issued": len(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--ids", type=int, default=30_000, help="distinct request ids per run")
    parser.add_argument("--flavour", choices=FLAVOURS, default="onnx", help="the arms' flavour")
    parser.add_argument("--sqlite-only", action="store_true", help="skip the PostgreSQL rows")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rollout-feedback-"))
    rows = []
    try:
        load_before = loadavg()
        print("building a registry with 3 arms ...", flush=True)
        build_registry(work, args.flavour)
        sqlite = "SQLite WAL, synchronous=FULL"
        configs: list[tuple[str, str, int, str | None, int]] = [
            (sqlite, f"sqlite:///{work / 'state-1.db'}", 1, None, 1),
            (sqlite, f"sqlite:///{work / 'state-2.db'}", 2, None, 1),
            (sqlite, f"sqlite:///{work / 'state-3.db'}", 1, None, 50),
        ]
        for workers in () if args.sqlite_only else (1, 2):
            pg = postgres_database()
            if pg is not None:
                configs.append(("PostgreSQL", pg[0], workers, pg[1], 1))
        for name, url, workers, db, batch in configs:
            try:
                row = measure(name, work, url, workers, args.seconds, args.ids, batch)
            finally:
                if db is not None:
                    drop_database(db)
            rows.append(row)
            print(
                f"{name}, {workers} worker(s), batch {batch}: {row['acked_per_s']:.0f}/s",
                flush=True,
            )
        columns = [
            ("config", "store", ""),
            ("workers", "uvicorn workers", "d"),
            ("batch", "feedbacks per call", "d"),
            ("acked_per_s", "acked feedback/s", ".0f"),
            ("ceiling_per_s", "GET /healthz/s (ceiling)", ".0f"),
            ("ratio", "calls/s ÷ ceiling", ".2f"),
            ("cpu_us", "server CPU µs/call", ".0f"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("acked", "acked", "d"),
            ("lost", "acked but not stored", "d"),
        ]
        table = markdown(rows, columns)
        single = max(
            r["acked_per_s"] for r in rows if r["config"].startswith("SQLite") and r["batch"] == 1
        )
        batched = max(
            (r["acked_per_s"] for r in rows if r["config"].startswith("SQLite") and r["batch"] > 1),
            default=float("nan"),
        )
        verdict = (
            "Target: ≥ 2,000 acknowledged feedback/s on SQLite "
            f"(one feedback per call: {single:.0f}/s; batch form: {batched:.0f}/s)."
        )
        meta = (
            f"{args.flavour} arms; "
            f"up to {args.seconds:.0f} s per run (less when the {args.ids} ids run out), "
            "64 keep-alive connections from a separate process, each request id sent once; "
            f"Python {platform.python_version()}, "
            f"{os.cpu_count()} cores shared with the load generator and other work; "
            f"load average {load_before} before, {loadavg()} after."
        )
        print(table)
        print(verdict)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "rollout_feedback.json").write_text(
            json.dumps({"rows": rows, "meta": meta}, indent=2)
        )
        (RESULTS / "rollout_feedback.md").write_text(
            f"# Durable feedback throughput\n\n{table}\n\n{verdict}\n\n{meta}\n"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
