"""/predict throughput: two rollout replicas behind HAProxy against one, on one PostgreSQL store.

The scaled profile's serving layout (banditflow/stack_scaled.py): replicas of the rollout
service (uvicorn, 1 worker each) sharing one PostgreSQL state store, HAProxy round robin in
front. Measured side by side, in interleaved rounds, with the same load generator
(rollout_overhead.py's keep-alive client, a separate process) and the same three ONNX arms:

- 1 replica, direct;
- 1 replica behind HAProxy (what the balancer itself costs);
- 2 replicas behind HAProxy.

Needs PostgreSQL (``BANDITFLOW_POSTGRES_URL``, default postgres@127.0.0.1:5432) and haproxy.

    .venv/bin/python benchmarks/rollout_replicas.py [--seconds 8] [--rounds 2]

Writes benchmarks/results/rollout_replicas.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rollout_overhead import (  # noqa: E402 - the path above
    FEATURES,
    RESULTS,
    Server,
    build_registry,
    http_post,
    loadavg,
    markdown,
    run_load,
    server_env,
    write_requests,
)

from banditflow.stack_scaled import haproxy_bin, haproxy_config, postgres_admin_url  # noqa: E402
from banditflow.supervisor import free_port, healthy  # noqa: E402


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the run (psycopg URL); dropped afterwards."""
    import psycopg

    name = f"bf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_admin_url().rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def balancer(work: Path, replicas: list[Server]) -> Iterator[str]:
    """HAProxy (the scaled profile's configuration) in front of ``replicas``; yield its URL."""
    import time

    port = free_port()
    config = work / f"haproxy-{port}.cfg"
    config.write_text(haproxy_config(port, [r.port for r in replicas]))
    proc = subprocess.Popen([haproxy_bin(), "-db", "-f", str(config)], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not healthy(f"{url}/readyz") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def measure(work: Path, env: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    requests = write_requests(
        work / "predict.json", [http_post("/predict", {"features": FEATURES})]
    )
    layouts = ("1 replica, direct", "1 replica behind HAProxy", "2 replicas behind HAProxy")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    for round_ in range(args.rounds):  # interleaved: the machine's noise hits all alike
        for name in layouts:
            n = 2 if name.startswith("2") else 1
            servers = [Server("rollout.app:create_app", env).wait() for _ in range(n)]
            try:
                with contextlib.ExitStack() as stack:
                    url = servers[0].url
                    if "HAProxy" in name:
                        url = stack.enter_context(balancer(work, servers))
                    results[name].append(run_load(url, requests, args.seconds, args.concurrency))
            finally:
                for server in servers:
                    server.stop()
            got = results[name][-1]
            print(f"round {round_ + 1}: {name}: {got['rps']:.0f} req/s (load {loadavg()})")
    rows = []
    for name, runs in results.items():
        best = max(runs, key=lambda r: r["rps"])
        errors = sum(r["requests"] - r["ok"] for r in runs)
        rows.append({"layout": name, **{k: best[k] for k in ("rps", "p50_ms", "p99_ms")}})
        rows[-1] |= {"errors": errors, "raw": runs}
    for row in rows:
        row["ratio"] = row["rps"] / rows[0]["rps"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rollout-replicas-"))
    load_before = loadavg()
    print("building a registry with 3 ONNX arms ...", flush=True)
    build_registry(work, "onnx")
    with postgres_database() as state_url:
        env = server_env(work, BANDITFLOW_STATE_URL=state_url)
        rows = measure(work, env, args)
    columns = [
        ("layout", "layout", ""),
        ("rps", f"req/s ({args.concurrency} conns)", ".0f"),
        ("ratio", "× 1 replica direct", ".2f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("errors", "non-200", "d"),
    ]
    table = markdown(rows, columns)
    meta = (
        f"uvicorn 1 worker per replica, state on one PostgreSQL database, {args.rounds} "
        f"interleaved rounds of {args.seconds:.0f} s (best kept), load from a separate "
        f"process; {os.cpu_count()} cores shared by the load generator, HAProxy, the "
        f"replicas and PostgreSQL; load average {load_before} before, {loadavg()} after."
    )
    print(table)
    print(meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout_replicas.json").write_text(
        json.dumps({"rows": rows, "meta": meta}, indent=2)
    )
    (RESULTS / "rollout_replicas.md").write_text(table + "\n\n" + meta + "\n")


if __name__ == "__main__":
    main()
