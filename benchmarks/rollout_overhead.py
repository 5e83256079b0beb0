"""Measure what the bandit costs on /predict: the rollout with 3 arms vs a bare endpoint.

Both servers run under the same uvicorn settings (1 worker), serve the same model (ONNX
through onnxruntime, and the sklearn pipeline) through the same loader and feature check,
and take load from a separate process on loopback (a small keep-alive HTTP/1.1 client on
asyncio streams, cheaper than httpx so the client is not the bottleneck). Throughput at 16
connections; latency at 1 and 16.

    .venv/bin/python benchmarks/rollout_overhead.py [--seconds 8] [--rounds 2]
        [--flavours onnx sklearn]

Writes benchmarks/results/rollout_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "bench-conversion"
FEATURES = {"x1": 0.5, "x2": -1.0, "region": "north"}
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


# --- a registry with three small pipelines ---------------------------------------------------
FLAVOURS = ("onnx", "sklearn")


def build_registry(home: Path, flavour: str = "onnx") -> None:
    """Log three logistic-regression pipelines; champion=1, challenger-1=2, challenger-2=3.

    ``flavour="onnx"``: each version also carries its ONNX file and the serving-flavour tags
    registration writes (tasks.onnx), so every server loads it with onnxruntime.
    """
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = mlflow.create_experiment(
        "rollout-bench", artifact_location=(home / "mlartifacts").as_uri()
    )
    for seed, c in enumerate((1.0, 0.1, 10.0)):
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame(
            {
                "x1": rng.normal(size=500),
                "x2": rng.normal(size=500),
                "region": rng.choice(["north", "south", "east"], size=500),
            }
        )
        y = (frame["x1"] - frame["x2"] + rng.normal(size=500) > 0).astype(int)
        prep = ColumnTransformer(
            [
                ("num", StandardScaler(), ["x1", "x2"]),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
            ]
        )
        model = Pipeline([("prep", prep), ("model", LogisticRegression(C=c))]).fit(frame, y)
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(frame.head(5), model.predict(frame.head(5))),
                serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
                registered_model_name=MODEL,
            )
        if flavour == "onnx":
            from tasks.onnx import OnnxOutcome, record_serving_flavour, to_onnx

            onnx_bytes = to_onnx(model, frame.head(5))
            version = str(info.registered_model_version)
            outcome = OnnxOutcome("onnx", "", converted=True)
            record_serving_flavour(client, MODEL, version, run.info.run_id, outcome, onnx_bytes)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger-1", "2")
    client.set_registered_model_alias(MODEL, "challenger-2", "3")


# --- the baseline: the same model, no routing ----------------------------------------------------
def bare_app() -> Any:
    """A FastAPI app serving the champion through the same loader and feature check."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from rollout.errors import RolloutError
    from rollout.pool import load_version

    home = Path(os.environ["BANDITFLOW_HOME"])
    uri = f"sqlite:///{home / 'mlflow.db'}"
    model = load_version(uri, uri, MODEL, "1", home / "bare-models")
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: dict[str, Any]) -> Any:
        features = body["features"]
        try:
            model.check(features)
        except RolloutError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        predictions, scores = model.predict([features])
        return {"prediction": predictions[0], "score": scores[0]}

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


# --- load generator ----------------------------------------------------------------------------
async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    until: float,
    latencies: list[float],
    once: bool = False,
) -> int:
    """Send requests round-robin on one keep-alive connection until ``until``; count 200s.

    ``once``: send each request at most once (distinct feedback must not repeat).
    """
    reader, writer = await asyncio.open_connection(host, port)
    ok = 0
    i = 0
    try:
        while time.perf_counter() < until and not (once and i >= len(requests)):
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if head.startswith(b"HTTP/1.1 200"):
                ok += 1
    finally:
        writer.close()
    return ok


def http_post(path: str, body: Any, host: str = "127.0.0.1") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def _load(
    url: str,
    requests: list[bytes],
    seconds: float,
    concurrency: int,
    warmup: float,
    once: bool = False,
) -> dict[str, Any]:
    host, port = url.split("//")[1].split(":")
    warm: list[float] = []
    if warmup > 0:
        until = time.perf_counter() + warmup
        await asyncio.gather(
            *[_connection(host, int(port), requests, until, warm) for _ in range(concurrency)]
        )
    latencies: list[float] = []
    start = time.perf_counter()
    until = start + seconds
    oks = await asyncio.gather(
        *[
            _connection(
                host, int(port), requests[i::concurrency] or requests, until, latencies, once
            )
            for i in range(concurrency)
        ]
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "warmup_requests": len(warm),
        "ok": sum(oks),
        "seconds": elapsed,
        "rps": sum(oks) / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
    }


def run_load(
    url: str,
    requests_file: Path,
    seconds: float,
    concurrency: int,
    warmup: float = 1.0,
    once: bool = False,
) -> dict[str, Any]:
    """Run the load generator in a separate process (so it never shares the server's GIL)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
            "--requests-file",
            str(requests_file),
            "--seconds",
            str(seconds),
            "--concurrency",
            str(concurrency),
            "--warmup",
            str(warmup),
            *(["--once"] if once else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load_cpu(
    server: Server,
    requests_file: Path,
    seconds: float,
    concurrency: int,
    warmup: float = 1.0,
    once: bool = False,
) -> dict[str, Any]:
    """``run_load`` and the server's CPU time per answered request (warm-up requests included).

    CPU per request holds on a shared machine where requests per second move with the load.
    """
    before = cpu_seconds(server.proc.pid)
    result = run_load(server.url, requests_file, seconds, concurrency, warmup, once)
    used = cpu_seconds(server.proc.pid) - before
    answered = result["requests"] + result.get("warmup_requests", 0)
    result["cpu_us_per_request"] = 1e6 * used / answered if answered else None
    return result


def write_requests(path: Path, requests: list[bytes]) -> Path:
    path.write_text(json.dumps([r.decode() for r in requests]))
    return path


# --- servers -----------------------------------------------------------------------------------
class Server:
    """A uvicorn process (default loop/http) for one app factory."""

    def __init__(
        self, factory: str, env: dict[str, str], app_dir: Path | None = None, workers: int = 1
    ) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(self.port),
               "--log-level", "warning", "--no-access-log", "--workers", str(workers)]  # fmt: skip
        if app_dir is not None:
            cmd += ["--app-dir", str(app_dir)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)

    def wait(self, timeout: float = 120) -> Server:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "BANDITFLOW_HOME": str(home),
            "BANDITFLOW_MODEL_NAME": os.environ.get("BENCH_MODEL", MODEL),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("–" if value is None else format(value, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages (what else the 2 cores were doing)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def measure_flavour(work: Path, flavour: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bare endpoint and rollout on one registry of ``flavour`` models, interleaved rounds."""
    home = work / flavour
    home.mkdir()
    print(f"building a registry with 3 {flavour} arms ...", flush=True)
    build_registry(home, flavour)
    requests = write_requests(
        home / "predict.json", [http_post("/predict", {"features": FEATURES})]
    )
    env = server_env(home)
    servers = {
        "bare endpoint (1 model, no routing)": ("rollout_overhead:bare_app", ROOT / "benchmarks"),
        "rollout (3 arms, Thompson)": ("rollout.app:create_app", None),
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {k: {"c1": [], "cN": []} for k in servers}
    for round_ in range(args.rounds):  # interleaved rounds: machine noise hits both alike
        for name, (factory, app_dir) in servers.items():
            server = Server(factory, env, app_dir).wait()
            try:
                results[name]["cN"].append(
                    run_load_cpu(server, requests, args.seconds, args.concurrency)
                )
                results[name]["c1"].append(
                    run_load(server.url, requests, args.seconds / 2, 1, warmup=0.5)
                )
            finally:
                server.stop()
            print(
                f"{flavour} round {round_ + 1}: {name}: "
                f"{results[name]['cN'][-1]['rps']:.0f} req/s (load {loadavg()})",
                flush=True,
            )
    rows = []
    for name, by in results.items():
        best = max(by["cN"], key=lambda r: r["rps"])
        seq = min(by["c1"], key=lambda r: r["p50_ms"])
        rows.append(
            {
                "flavour": flavour,
                "server": name,
                "rps": best["rps"],
                "p50_ms": best["p50_ms"],
                "p99_ms": best["p99_ms"],
                "seq_p50_ms": seq["p50_ms"],
                "seq_p99_ms": seq["p99_ms"],
                "cpu_us": min(r["cpu_us_per_request"] for r in by["cN"]),
                "errors": sum(r["requests"] - r["ok"] for r in by["cN"] + by["c1"]),
                "raw": by,
            }
        )
    bare = rows[0]
    for row in rows:
        row["ratio"] = row["rps"] / bare["rps"]
        row["added_p50_ms"] = row["seq_p50_ms"] - bare["seq_p50_ms"]
        row["cpu_ratio"] = row["cpu_us"] / bare["cpu_us"]
        # Per round, this server's p50 at 1 connection minus the bare one's of the same round:
        # a ~3 ms sklearn predict moves by more than the router adds from one process to the
        # next, and the median of paired rounds is steadier than best minus best.
        pairs = zip(row["raw"]["c1"], bare["raw"]["c1"], strict=True)
        row["paired_added_p50_ms"] = statistics.median(a["p50_ms"] - b["p50_ms"] for a, b in pairs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--flavours", nargs="+", choices=FLAVOURS, default=list(FLAVOURS), help="model flavours"
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--requests-file", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:  # the load-generator process
        payloads = [r.encode() for r in json.loads(Path(args.requests_file).read_text())]
        result = asyncio.run(
            _load(args.load, payloads, args.seconds, args.concurrency, args.warmup, args.once)
        )
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="rollout-overhead-"))
    try:
        load_before = loadavg()
        rows = [row for flavour in args.flavours for row in measure_flavour(work, flavour, args)]
        columns = [
            ("flavour", "models", ""),
            ("server", "server", ""),
            ("rps", f"req/s ({args.concurrency} conns)", ".0f"),
            ("ratio", "× bare", ".2f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("seq_p50_ms", "p50 ms (1 conn)", ".3f"),
            ("seq_p99_ms", "p99 ms (1 conn)", ".3f"),
            ("added_p50_ms", "added p50 ms (1 conn)", ".3f"),
            ("paired_added_p50_ms", "added p50 ms (1 conn, median of paired rounds)", ".3f"),
            ("cpu_us", "server CPU µs/request", ".0f"),
            ("cpu_ratio", "CPU × bare", ".2f"),
            ("errors", "non-200", "d"),
        ]
        table = markdown(rows, columns)
        verdicts = [
            f"{r['flavour']}: throughput {r['ratio']:.2f}× bare (target ≥ 0.9×), "
            f"added p50 {r['added_p50_ms']:.3f} ms at 1 connection (target < 0.5 ms)."
            for r in rows
            if r["server"].startswith("rollout")
        ]
        verdict = "Targets: " + " ".join(verdicts)
        meta = (
            f"uvicorn 1 worker each, {args.rounds} interleaved rounds of {args.seconds:.0f} s "
            f"(best round kept), load from a separate process on loopback; both sides serve "
            f"the same model flavour (ONNX: onnxruntime, 1 thread); "
            f"{platform.python_version()}, {os.cpu_count()} cores shared with other work; "
            f"load average {load_before} before, {loadavg()} after."
        )
        print(table)
        print(verdict)
        print(meta)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "rollout_overhead.json").write_text(
            json.dumps({"rows": rows, "meta": meta}, indent=2)
        )
        (RESULTS / "rollout_overhead.md").write_text(
            f"# /predict overhead of the bandit\n\n{table}\n\n{verdict}\n\n{meta}\n"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
