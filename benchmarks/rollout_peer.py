"""The rollout beside a real serving peer: MLServer serving the same ONNX model.

MLServer (Seldon's V2-protocol inference server) runs from its OWN virtualenv, built on
demand from the package registry outside the repository (``--venv``, default under the
system temp folder), never in the project's dependencies. It serves the champion's ONNX
file, taken from the same registry the rollout loads, with onnxruntime on one thread
through a small custom runtime (MLServer ships no ONNX runtime of its own). The rollout
serves three arms with Thompson sampling; the bare endpoint (benchmarks/rollout_overhead.py)
is shown for reference. Every server runs one process (MLServer with
``parallel_workers=0``: inference in the serving process, as the rollout does it); the
MLServer row with its default (one inference worker process beside the server) is shown too.

    .venv/bin/python benchmarks/rollout_peer.py [--seconds 8] [--rounds 2] [--venv DIR]

Writes benchmarks/results/rollout_peer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout_overhead import (
    FEATURES,
    MODEL,
    RESULTS,
    ROOT,
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

MLSERVER_VERSION = "1.7.1"
RUNTIME = '''"""An MLServer runtime for an ONNX classifier: onnxruntime, CPU, one thread."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.kinds = {i.name: i.type for i in self.session.get_inputs()}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for item in payload.inputs:
            if self.kinds[item.name] == "tensor(string)":
                feeds[item.name] = np.array(item.data.root, dtype=object).reshape(item.shape)
            else:
                feeds[item.name] = np.asarray(item.data.root, dtype=np.float32).reshape(item.shape)
        names = [o.name for o in self.session.get_outputs()]
        result = self.session.run(None, feeds)
        outputs = [NumpyCodec.encode_output(n, np.asarray(v)) for n, v in zip(names, result)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
'''


def peer_venv(path: Path) -> Path:
    """Return the peer's Python, building its virtualenv from the registry if it is missing."""
    import onnxruntime

    python = path / "bin" / "python"
    # uvloop < 0.22: MLServer 1.7.1's inference worker calls asyncio.get_event_loop() at
    # start, which uvloop 0.22+ refuses (the worker dies and the model never loads).
    packages = [
        f"mlserver=={MLSERVER_VERSION}",
        f"onnxruntime=={onnxruntime.__version__}",
        "uvloop<0.22",
    ]
    marker = path / "banditflow-peer.txt"  # written once the install has succeeded
    if python.exists() and marker.exists() and marker.read_text() == " ".join(packages):
        return python
    print(f"building MLServer {MLSERVER_VERSION} in {path} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    marker.write_text(" ".join(packages))
    return python


def export_champion_onnx(home: Path, target: Path) -> Path:
    """Download the champion's ONNX file (the one the rollout serves) from the registry."""
    import mlflow
    from mlflow import MlflowClient

    from contract import TAG_ONNX_URI

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version.tags[TAG_ONNX_URI], dst_path=str(target / "download")
    )
    found = Path(local) if Path(local).is_file() else next(Path(local).rglob("*.onnx"))
    return Path(shutil.copy(found, target / "model.onnx"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MLServer(Server):
    """``mlserver start`` on one model folder, stopped by its process group like ``Server``."""

    def __init__(  # a Server that runs mlserver, not uvicorn
        self, python: Path, folder: Path, parallel_workers: int
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "http_port": self.port,
            "grpc_port": _free_port(),
            "metrics_port": _free_port(),
            "parallel_workers": parallel_workers,
            "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
        self.log = open(folder / f"mlserver-{parallel_workers}.log", "w")  # noqa: SIM115
        mlserver = python.parent / "mlserver"
        self.proc = subprocess.Popen(
            [str(mlserver), "start", str(folder)],
            cwd=folder,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float = 180) -> MLServer:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.proc.returncode}: see its log")
            try:
                if httpx.get(self.url + "/v2/models/bench/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.url} not ready")

    def stop(self) -> None:
        super().stop()
        self.log.close()


def v2_request() -> dict[str, Any]:
    """The same row as the rollout's ``{"features": ...}``, in the V2 inference protocol."""
    inputs = []
    for name, value in FEATURES.items():
        kind = "BYTES" if isinstance(value, str) else "FP32"
        inputs.append({"name": name, "shape": [1, 1], "datatype": kind, "data": [value]})
    return {"inputs": inputs}


def measure(
    start: Any, requests: Path, seconds: float, concurrency: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round on a fresh server: (16 connections with CPU per request, 1 connection)."""
    server = start().wait()
    try:
        many = run_load_cpu(server, requests, seconds, concurrency)
        one = run_load(server.url, requests, seconds / 2, 1, warmup=0.5)
    finally:
        server.stop()
    return many, one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    default_venv = Path(tempfile.gettempdir()) / "banditflow-peer-mlserver"
    parser.add_argument("--venv", type=Path, default=default_venv, help="the peer's virtualenv")
    args = parser.parse_args()
    python = peer_venv(args.venv)
    work = Path(tempfile.mkdtemp(prefix="rollout-peer-"))
    try:
        load_before = loadavg()
        print("building a registry with 3 onnx arms ...", flush=True)
        build_registry(work, "onnx")
        folder = work / "mlserver-model"
        folder.mkdir()
        model = export_champion_onnx(work, folder)
        (folder / "runtime.py").write_text(RUNTIME)
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "bench",
                    "implementation": "runtime.OnnxRuntime",
                    "parameters": {"uri": str(model)},
                }
            )
        )
        ours = write_requests(
            work / "predict.json", [http_post("/predict", {"features": FEATURES})]
        )
        theirs = write_requests(
            work / "v2.json", [http_post("/v2/models/bench/infer", v2_request())]
        )
        env = server_env(work)
        servers: dict[str, tuple[Any, Path]] = {
            "MLServer (1 model, parallel_workers=0)": (lambda: MLServer(python, folder, 0), theirs),
            "rollout (3 arms, Thompson)": (lambda: Server("rollout.app:create_app", env), ours),
            "MLServer (1 model, default: 1 inference worker process)": (
                lambda: MLServer(python, folder, 1),
                theirs,
            ),
            "bare endpoint (1 model, no routing)": (
                lambda: Server("rollout_overhead:bare_app", env, ROOT / "benchmarks"),
                ours,
            ),
        }
        raw: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {k: [] for k in servers}
        for round_ in range(args.rounds):  # interleaved: the machine's noise hits all alike
            for name, (start, requests) in servers.items():
                raw[name].append(measure(start, requests, args.seconds, args.concurrency))
                print(
                    f"round {round_ + 1}: {name}: {raw[name][-1][0]['rps']:.0f} req/s "
                    f"(load {loadavg()})",
                    flush=True,
                )
        rows = table_rows(raw)
        write_results(rows, raw, args, load_before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table_rows(raw: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]) -> list[dict[str, Any]]:
    rows = []
    for name, runs in raw.items():
        best = max((many for many, _ in runs), key=lambda r: r["rps"])
        seq = min((one for _, one in runs), key=lambda r: r["p50_ms"])
        rows.append(
            {
                "server": name,
                "rps": best["rps"],
                "p50_ms": best["p50_ms"],
                "p99_ms": best["p99_ms"],
                "seq_p50_ms": seq["p50_ms"],
                "seq_p99_ms": seq["p99_ms"],
                "cpu_us": min(many["cpu_us_per_request"] for many, _ in runs),
                "errors": sum(m["requests"] - m["ok"] + o["requests"] - o["ok"] for m, o in runs),
            }
        )
    peer = rows[0]
    for row in rows:
        row["ratio"] = row["rps"] / peer["rps"]
    return rows


def write_results(
    rows: list[dict[str, Any]],
    raw: dict[str, Any],
    args: argparse.Namespace,
    load_before: str,
) -> None:
    columns = [
        ("server", "server", ""),
        ("rps", f"req/s ({args.concurrency} conns)", ".0f"),
        ("ratio", "× MLServer (1 process)", ".2f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("seq_p50_ms", "p50 ms (1 conn)", ".3f"),
        ("seq_p99_ms", "p99 ms (1 conn)", ".3f"),
        ("cpu_us", "server CPU µs/request", ".0f"),
        ("errors", "non-200", "d"),
    ]
    table = markdown(rows, columns)
    rollout = next(r for r in rows if r["server"].startswith("rollout"))
    verdict = (
        "Target: the rollout with three arms ≥ 1× the peer with one "
        f"(got {rollout['ratio']:.2f}× MLServer in one process)."
    )
    meta = (
        f"MLServer {MLSERVER_VERSION} from its own virtualenv ({args.venv}), custom onnxruntime "
        "runtime on 1 thread, V2 inference protocol; the rollout and the bare endpoint under "
        f"uvicorn, 1 worker; same ONNX champion; {args.rounds} interleaved rounds of "
        f"{args.seconds:.0f} s (best kept), load from a separate process on loopback; "
        "CPU µs/request is the server's processes only (MLServer's default counts its main "
        f"process, not its inference worker); Python {platform.python_version()}, "
        f"{os.cpu_count()} cores shared with other work; load average {load_before} before, "
        f"{loadavg()} after."
    )
    print(table)
    print(verdict)
    print(meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout_peer.json").write_text(
        json.dumps({"rows": rows, "raw": raw, "meta": meta}, indent=2)
    )
    (RESULTS / "rollout_peer.md").write_text(
        f"# The rollout beside MLServer\n\n{table}\n\n{verdict}\n\n{meta}\n"
    )


if __name__ == "__main__":
    main()
