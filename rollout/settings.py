"""Settings of the rollout service: one pydantic-settings class, env prefix ``BANDITFLOW_``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Return the data folder the pipeline uses too: ``$BANDITFLOW_HOME`` or ``.banditflow/``."""
    return Path(os.environ.get("BANDITFLOW_HOME") or PROJECT_ROOT / ".banditflow").resolve()


class RolloutSettings(BaseSettings):
    """How the rollout service finds its models and state, and how it routes and decides.

    Every default lives under ``home`` (the same MLflow SQLite file the pipeline writes);
    ``BANDITFLOW_STATE_URL=postgresql://...`` shares state between replicas.
    """

    model_config = SettingsConfigDict(env_prefix="BANDITFLOW_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    model_name: str = "conversion"
    # MLflow: empty means the pipeline's SQLite file under home (same env names as the pipeline).
    mlflow_tracking_uri: str = ""
    mlflow_registry_uri: str = ""
    mlflow_ui_url: str = "http://127.0.0.1:5000"  # the dashboard links to versions there
    # Rollout state: empty means a SQLite (WAL) file under home.
    state_url: str = ""
    # SQLite's synchronous pragma: FULL survives power loss, NORMAL only a process crash.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    # The bandit policy, found by name (entry-point group ``banditflow.policies``).
    policy: str = "thompson"
    policy_params: dict[str, Any] = Field(default_factory=dict)

    # Admin routes need ``Authorization: Bearer <token>``; empty disables them (403).
    admin_token: str = Field(
        default="",
        validation_alias=AliasChoices(
            "BANDITFLOW_ROLLOUT_ADMIN_TOKEN", "BANDITFLOW_ADMIN_TOKEN", "admin_token"
        ),
    )
    # Secret that signs request ids; empty: one is generated once and kept in the state store,
    # so every replica (and every restart) shares it.
    token_secret: str = ""

    # Feedback: how late it may come, and what a decision without feedback counts as.
    feedback_window_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    expired: Literal["default", "drop"] = "default"
    expired_reward: float = 0.0
    expiry_interval_s: float = Field(default=60.0, gt=0)

    # Shadow arms score this fraction of requests off the response path.
    shadow_fraction: float = Field(default=0.1, ge=0, le=1)

    # A model version that failed to load is retried at alias polls, the delay doubling from
    # model_retry_base_s up to model_retry_max_s.
    model_retry_base_s: float = Field(default=1.0, gt=0)
    model_retry_max_s: float = Field(default=60.0, gt=0)

    # Bounds on what a client sends: the request body (413 above it) and the body size from
    # which parsing and validation run in a worker thread (the event loop stays free).
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    parse_in_thread_bytes: int = Field(default=64_000, ge=0)

    # Caches and background cadences.
    alias_poll_s: float = Field(default=5.0, gt=0)
    stats_refresh_ms: float = Field(default=200.0, gt=0)
    share_window_s: float = Field(default=300.0, gt=0)
    writer_max_batch: int = Field(default=512, ge=1)
    unit_cache_size: int = Field(default=100_000, ge=0)
    # A sticky unit keeps its arm this long; older stored assignments are deleted.
    unit_ttl_s: float = Field(default=30 * 24 * 3600.0, gt=0)

    # Decision rule (rollout.decide) and whether the service acts on it.
    auto_decisions: bool = True
    decision_interval_s: float = Field(default=60.0, gt=0)
    decision_params: dict[str, Any] = Field(default_factory=dict)
    # When the champion's change detector alarms (banditflow.performance.degraded), every
    # arm's policy sums start afresh: what they earned before describes the old world
    # (rollout/store_restart.py). The decision rule's plain sums are kept either way. Off:
    # in the closed loop it moved traffic off the stale champion sooner, but fewer of the
    # champion's outcomes delayed the promotion; no gain over three seeds (README).
    restart_on_alarm: bool = False
    # Reproducible decisions (rollout.cadence): refresh the statistics the policy draws from,
    # and decide, at each multiple of this many acknowledged outcomes (the writer flushed
    # first) instead of every stats_refresh_ms / decision_interval_s of the wall clock. With
    # both set, the same seed and the same traffic in order give the same decisions at the
    # same outcome counts however loaded the machine is.
    refresh_every_outcomes: int | None = Field(default=None, ge=1)
    decide_every_outcomes: int | None = Field(default=None, ge=1)
    # One decision over several metrics (rollout.multimetric): a promotion also needs each of
    # these shown not worse than the champion's by its margin (rate points), since the arm
    # joined. latency_p99: the share of predictions slower than threshold_ms (default
    # guardrail_max_p99_ms); p99 <= threshold_ms exactly when that share is <= 1 %. Any
    # other name is an outcome feedback reports under "metrics", e.g.
    # "basket": {"margin": 0.5, "better": "higher"}.
    guardrail_metrics: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"error_rate": {"margin": 0.01}, "latency_p99": {"margin": 0.01}}
    )
    # Request features whose values make a unit's segment (logged with each decision).
    segment_by: list[str] = Field(default_factory=list, max_length=8)

    # Guardrails: an arm past either limit is pulled from rotation: its failure rate over
    # its recent predictions (once it failed min_failures times), or its p99 latency (once
    # it served min_requests predictions).
    guardrail_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    guardrail_min_failures: int = Field(default=5, ge=1)
    guardrail_max_p99_ms: float = Field(default=250.0, gt=0)
    guardrail_min_requests: int = Field(default=50, ge=1)

    # Entity lookups through the Feast online store (Feast is imported only when set).
    # Defaults: the project's feature_repo/ once applied under home, and the one feature
    # service it defines (set the service when a repo defines several).
    feast_repo: Path | None = None
    feast_feature_service: str = ""

    # Prefect: where promotion/rollback events go (HTTP POST to <url>/events); empty: none.
    prefect_api_url: str = Field(
        default="", validation_alias=AliasChoices("BANDITFLOW_PREFECT_API_URL", "prefect_api_url")
    )

    # Background tasks (alias polling, stats refresh, expiry, decisions) can be turned off
    # in tests that drive them by hand.
    background: bool = True
    seed: int | None = None

    @field_validator("model_name")
    @classmethod
    def _model_name_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model_name must name a registered MLflow model, got ''")
        return value

    @property
    def feast_repo_path(self) -> Path | None:
        """The Feast repo entity lookups read: the setting, else the project's
        ``feature_repo/`` once it has been applied under ``home`` (its registry exists)."""
        if self.feast_repo is not None:
            return self.feast_repo
        project_repo = PROJECT_ROOT / "feature_repo"
        if (project_repo / "feature_store.yaml").exists() and (
            self.home / "feast" / "registry.db"
        ).exists():
            return project_repo
        return None

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def database_url(self) -> str:
        return self.state_url or f"sqlite:///{self.home / 'rollout.db'}"
