"""Settings of the pipeline half (flows and tasks): every default under one data folder."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Return the data folder: ``$BANDITFLOW_HOME`` or ``.banditflow/`` in the project."""
    return Path(os.environ.get("BANDITFLOW_HOME") or PROJECT_ROOT / ".banditflow").resolve()


class PipelineSettings(BaseSettings):
    """Where the flows and tasks keep and find things. Env prefix ``BANDITFLOW_``.

    Every default lives under ``home`` and needs no server; each URL can point at a real
    server instead (``BANDITFLOW_MLFLOW_TRACKING_URI=postgresql://...``, ...).
    """

    model_config = SettingsConfigDict(env_prefix="BANDITFLOW_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    # MLflow: tracking and registry store; empty means a SQLite file under home.
    mlflow_tracking_uri: str = ""
    mlflow_registry_uri: str = ""
    mlflow_artifact_root: str = ""
    # Feast: the repository folder (feature_store.yaml) and where its data lives.
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    # A feature_store.yaml whose online_store replaces the SQLite default (e.g. Redis; the
    # scaled profile writes one in <home>/run/feast_repo/). Its other sections are not read.
    feature_store_yaml: Path | None = None
    # Prefect: how mapped trials run, and where.
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    dask_address: str = ""  # empty: a LocalCluster started for the flow run
    work_pool: str = "local"
    # The rollout service the promote-check flow reads.
    rollout_url: str = "http://127.0.0.1:8000"
    rollout_admin_token: str = ""
    # The model families a retrain screens (comma-separated; tasks/retrain_family.py).
    # Empty: every family registered for the task.
    retrain_families: str = ""
    # Days of labels before the change a retrain also fits, down-weighted by the searched
    # ``history_weight`` (a power prior; tasks/retrain_prior.py). 0: the change's rows only.
    retrain_history_days: float = Field(default=14.0, ge=0)
    # Whether a retrain also fits the application's served outcomes (``outcomes_path``,
    # when the application writes it): the offers made and whether they converted.
    retrain_outcomes: bool = True

    @property
    def data_dir(self) -> Path:
        """Generated parquet files (the offline store's sources)."""
        return self.home / "data"

    @property
    def outcomes_path(self) -> Path:
        """The application's outcome log (customer_id, event_timestamp, the target)."""
        return self.data_dir / "outcomes.parquet"

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and online store."""
        return self.home / "feast"

    @property
    def studies_dir(self) -> Path:
        """Optimizer state, one file per study, for resume."""
        return self.home / "studies"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or (self.home / "mlartifacts").as_uri()

    def ensure_dirs(self) -> PipelineSettings:
        for folder in (self.home, self.data_dir, self.feast_dir, self.studies_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@lru_cache
def get_settings() -> PipelineSettings:
    """Return the process-wide settings (tests build their own ``PipelineSettings``)."""
    return PipelineSettings()
