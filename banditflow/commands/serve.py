"""``banditflow serve``: run the rollout service under uvicorn."""

from __future__ import annotations

import os
import tempfile

import typer

from banditflow.cli import app


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Uvicorn worker processes (share the store)."),
    log_level: str = typer.Option("info", help="Uvicorn log level."),
) -> None:
    """Serve the rollout API (settings from BANDITFLOW_* environment variables)."""
    import uvicorn

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one BLAS thread: many threads only contend here
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up every worker's counters.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="banditflow-metrics-")
    uvicorn.run(
        "rollout.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
