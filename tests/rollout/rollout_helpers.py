"""Helpers for the rollout tests: a real MLflow registry with small sklearn models."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

MODEL = "conversion-test"
FEATURES = {"x1": 0.5, "x2": -1.0, "region": "north"}
REGIONS = ("north", "south", "east")
BROKEN = "4"  # the version whose predict raises (see build_registry)


def _train(seed: int, c: float) -> tuple[Any, Any]:
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(seed)
    n = 400
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "region": rng.choice(REGIONS, size=n),
        }
    )
    logits = 1.5 * frame["x1"] - frame["x2"] + (frame["region"] == "north") * 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    pipe = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["x1", "x2"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(C=c, max_iter=200)),
        ]
    )
    return pipe.fit(frame, y), frame


def build_registry(home: Path, versions: int = 3) -> None:
    """Log ``versions`` good pipelines and one broken one (the last version) under MODEL.

    Aliases: champion=1, challenger-N=N+1; the broken version has no alias.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment(
        "rollout-test", artifact_location=(home / "mlartifacts").as_uri()
    )
    for i in range(versions):
        model, frame = _train(seed=i, c=[1.0, 0.1, 0.01, 10.0][i % 4])
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(frame.head(5), model.predict(frame.head(5))),
                input_example=frame.head(2),
                serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
                registered_model_name=MODEL,
            )
    # A broken version: its pipeline needs a column its signature does not list, so it
    # passes the service's feature check and then fails inside predict (a real fault).
    model, frame = _train(seed=9, c=1.0)
    wide = frame.assign(x3=1.0)
    model.steps[0][1].transformers.append(("extra", "passthrough", ["x3"]))
    model.fit(wide, (frame["x1"] > 0).astype(int))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame.head(5), model.predict(wide.head(5))),
            serialization_format="cloudpickle",
            pip_requirements=["scikit-learn"],
            registered_model_name=MODEL,
        )
    client = MlflowClient(uri, uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    for i in range(2, versions + 1):
        client.set_registered_model_alias(MODEL, f"challenger-{i - 1}", str(i))


def make_settings(home: Path, **overrides: Any) -> Any:
    from rollout.settings import RolloutSettings

    values: dict[str, Any] = {
        "home": home,
        "model_name": MODEL,
        "admin_token": "s3cret",
        "seed": 0,
        "background": False,
    }
    values.update(overrides)
    return RolloutSettings(**values)


ADMIN = {"Authorization": "Bearer s3cret"}


def mlflow_client(home: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """Environment of a uvicorn subprocess serving ``home``'s registry."""
    env = dict(os.environ)
    env.update(
        {
            "BANDITFLOW_HOME": str(home),
            "BANDITFLOW_MODEL_NAME": MODEL,
            "BANDITFLOW_ROLLOUT_ADMIN_TOKEN": "s3cret",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: Any = None, timeout: float = 120.0) -> None:
    """Poll /readyz until it answers 200 (fail early if the process died)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            response = httpx.get(url + "/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s: {last}")


class UvicornProcess:
    """``uvicorn rollout.app:create_app --factory`` in its own session (killable as a group)."""

    def __init__(self, env: dict[str, str], log: Path, *, workers: int = 1) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "uvicorn", "rollout.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
            "--log-level", "warning",
        ]  # fmt: skip
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=self._log, stderr=self._log, start_new_session=True
        )

    def wait(self, timeout: float = 120.0) -> UvicornProcess:
        wait_ready(self.url, self.proc, timeout)
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook runs."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class LiveServer:
    """Serve an app with uvicorn in a thread of this process (cheap: no new interpreter)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_ready(self.url, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
