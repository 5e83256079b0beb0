"""`make demo`: the whole loop on one machine, with embedded defaults, step by step.

generate data -> features -> optimize (a baseline, Hyperopt, Ax) -> register behind gates ->
start the rollout service -> live traffic until the bandit promotes -> drift, pushed as
new features -> drift detected -> retrain -> new challengers -> traffic moves to them ->
a report that compares the live system with the oracle, a system that never retrains and
a fixed A/B split on the same visits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from banditflow.simulate import ArmsWatcher, TrafficOptions

MODEL = "conversion"
# The application acts on calibrated probabilities (offer when P >= cost), and drift moves
# calibration more than ranking: log loss, not ROC AUC, is what tells a retrained model
# from a stale one here.
METRIC = "log_loss"
START = datetime(2026, 1, 1, tzinfo=UTC)


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and knobs of the demo; ``quick()`` is the CI-sized version."""

    seed: int = 0
    customers: int = 6_000
    rows: int = 200_000  # labelled sessions over `days`
    days: int = 150
    drift_day: int = 110  # the drift knob turns on here
    retrain_day: int = 125  # labels up to here reach the retrain
    drift_strength: float = 2.0
    baseline_trials: int = 2
    hyperopt_trials: int = 16
    ax_trials: int = 10
    folds: int = 3
    max_rows: int | None = 60_000  # label rows per study (the latest)
    visits_before_drift: int = 60_000  # at most; phase 1 stops at the first promotion
    visits_after_drift: int = 15_000  # the degraded period, before the retrain
    visits_after_retrain: int = 60_000
    offer_cost: float = 0.08
    # Thompson's discount per outcome: after the drift, the arms' pre-drift rewards must fade
    # or a stale champion keeps its traffic; 1 / (1 - discount) outcomes of memory leave the
    # promotion rule enough evidence (it reads the same discounted statistics).
    discount: float = 0.99996
    decision_interval_s: float = 2.0
    min_outcomes: int = 1_000
    concurrency: int = 8
    batch: int = 10
    q: int = 2

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            customers=2_000,
            rows=60_000,
            hyperopt_trials=4,
            ax_trials=3,
            max_rows=20_000,
            visits_before_drift=30_000,
            visits_after_drift=4_000,
            visits_after_retrain=12_000,
            min_outcomes=500,
            decision_interval_s=1.0,
            discount=0.9999,
        )

    @property
    def drift_at(self) -> datetime:
        return START + timedelta(days=self.drift_day)

    @property
    def retrain_at(self) -> datetime:
        return START + timedelta(days=self.retrain_day)

    @property
    def end(self) -> datetime:
        return START + timedelta(days=self.days)


@dataclass
class DemoState:
    """What the steps produced, for the next steps and the report."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    phases: list[pd.DataFrame] = field(default_factory=list)  # served visits per phase
    events: list[tuple[int, str]] = field(default_factory=list)
    initial_arms: dict[str, str] = field(default_factory=dict)  # alias -> version
    champion_before_drift: str = ""
    drift_seq: int | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """Run the demo's steps in order, printing one line per step."""

    def __init__(self, plan: DemoPlan, *, console: Console | None = None) -> None:
        from tasks.settings import get_settings

        self.plan = plan
        self.console = console or Console()
        self.settings = get_settings().ensure_dirs()
        self.state = DemoState()
        self.incoming = self.settings.home / "incoming"
        self.report_dir = self.settings.home / "report"
        self.total_steps = 12
        self._step_no = 0

    # --- presentation ---------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        self._step_no += 1
        label = f"[bold cyan][{self._step_no:>2}/{self.total_steps}][/] {title}"
        notes: list[str] = []
        began = time.perf_counter()
        with self.console.status(label + " ...", spinner="dots"):
            yield notes.append
        took = time.perf_counter() - began
        self.state.steps.append((title, took))
        self.console.print(f"{label} [green]done[/] [dim]({took:.1f} s)[/]")
        for note in notes:
            self.console.print(f"        {note}")

    # --- steps -----------------------------------------------------------------------
    def generate(self) -> None:
        from tasks.datagen import FILES, GeneratorConfig, generate

        plan = self.plan
        with self.step("Generate the e-commerce data (drift knob set for later)") as note:
            config = GeneratorConfig(
                seed=plan.seed,
                n_customers=plan.customers,
                rows=plan.rows,
                start=START,
                days=plan.days,
                drift_at=plan.drift_at,
                drift_strength=plan.drift_strength,
            )
            data = self.settings.data_dir
            generate(config, data)
            # What happens after the drift has not happened yet: hold it back, to arrive
            # later as pushed features and late labels.
            self.incoming.mkdir(parents=True, exist_ok=True)
            for name in ("activity", "sessions"):
                frame = pd.read_parquet(data / FILES[name])
                later = frame["event_timestamp"] >= pd.Timestamp(plan.drift_at)
                frame[later].to_parquet(self.incoming / FILES[name], index=False)
                frame[~later].to_parquet(data / FILES[name], index=False)
            sessions = pd.read_parquet(data / FILES["sessions"])
            note(
                f"{plan.customers:,} customers, {len(sessions):,} labelled sessions until "
                f"{plan.drift_at:%Y-%m-%d} ({sessions['converted'].mean():.1%} convert); "
                f"data in {data}"
            )

    def features(self) -> None:
        from tasks.features import apply_repository, materialize_incremental

        with self.step("Apply the Feast repository and materialize the online store") as note:
            applied = apply_repository(self.settings)
            updates = materialize_incremental(self.plan.drift_at, settings=self.settings)
            rows = sum(int(u["rows"]) for u in updates)
            note(f"applied {len(applied)} objects; materialized {rows:,} entity rows")

    def _spec(self, name: str, **overrides: Any) -> Any:
        from tasks.spec import StudySpec

        plan = self.plan
        raw: dict[str, Any] = {
            "name": name,
            "data": {"end": plan.drift_at.isoformat(), "max_rows": plan.max_rows},
            "objectives": {METRIC: "minimize"},
            "budget": {"max_trials": 8},
            "q": plan.q,
            "seed": plan.seed,
            "evaluation": {"folds": plan.folds, "latency_calls": 50},
            "gates": {
                # No champion yet: at most the log loss of always predicting the base rate.
                "performance": {"metric": METRIC, "max_regression": 0.002, "floor": 0.32},
                "fairness": {
                    "sensitive_attribute": "age_band",
                    "decision_threshold": plan.offer_cost,  # the offer is what is fair or not
                    "max_demographic_parity_difference": 0.5,
                    "max_equalized_odds_difference": 0.6,
                },
                "latency_p95_ms": 50.0,
                "max_model_bytes": 20_000_000,
            },
            "registration": {"model_name": MODEL, "max_candidates": 1},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = raw[key] | value
            else:
                raw[key] = value
        return StudySpec.parse(raw, source=f"the demo's {name} spec")

    def optimize_and_register(self) -> None:
        from flows.optimize import optimize
        from flows.register import register
        from tasks.datagen import ACTIVITY_FEATURES

        plan = self.plan
        studies = [
            (
                "Baseline: today's champion, a logistic regression on the profile",
                self._spec(
                    f"{MODEL}-baseline",
                    # Profile only, and blind to the age band (the fairness gate's attribute).
                    data={"drop_columns": [*ACTIVITY_FEATURES, "age_band"]},
                    model={"family": "logistic_regression"},
                    optimizer="random",
                    budget={"max_trials": plan.baseline_trials},
                ),
            ),
            (
                "Optimize with Hyperopt (TPE): histogram gradient boosting",
                self._spec(
                    f"{MODEL}-hyperopt",
                    model={"family": "hist_gradient_boosting"},
                    optimizer="hyperopt",
                    budget={"max_trials": plan.hyperopt_trials},
                ),
            ),
            (
                "Optimize with Ax (Bayesian optimization): logistic regression",
                self._spec(
                    f"{MODEL}-ax",
                    model={"family": "logistic_regression"},
                    optimizer="ax",
                    budget={"max_trials": plan.ax_trials},
                ),
            ),
        ]
        for title, spec in studies:
            with self.step(title + ", then register behind the gates") as note:
                result = optimize(spec)
                registered = register(spec.name, spec=spec, model_name=MODEL)
                self.state.studies.append(spec.name)
                best = result.best
                metric = spec.primary_objective[0]
                value = best.values.get(metric) if best else None
                note(
                    f"{result.n_completed}/{result.n_trials} trials, best {metric} "
                    f"{value:.4f}" + ("" if value is not None else " (none)")
                )
                for v in registered.get("versions", []):
                    verdict = "passed" if v.get("passed") else f"failed {v.get('failures')}"
                    note(
                        f"version {v['version']}: gates {verdict}; alias "
                        f"{v.get('alias') or '-'}; serves as {v.get('serving_flavour') or '-'}"
                    )

    # --- the rollout service -----------------------------------------------------------
    @contextlib.contextmanager
    def service(self) -> Iterator[str]:
        import httpx

        port = _free_port()
        env = os.environ | {
            "BANDITFLOW_HOME": str(self.settings.home),
            "BANDITFLOW_MODEL_NAME": MODEL,
            "BANDITFLOW_POLICY": "thompson-gaussian",
            # A floor of traffic per arm keeps evidence flowing to the promotion rule
            # (benchmarks/rollout_regret.py: plain Thompson starves the champion).
            "BANDITFLOW_POLICY_PARAMS": json.dumps(
                {"min_share": 0.1, "discount": self.plan.discount}
            ),
            "BANDITFLOW_AUTO_DECISIONS": "true",
            "BANDITFLOW_DECISION_INTERVAL_S": str(self.plan.decision_interval_s),
            "BANDITFLOW_DECISION_PARAMS": json.dumps({"min_outcomes": self.plan.min_outcomes}),
            "BANDITFLOW_ALIAS_POLL_S": "1",
            "BANDITFLOW_SHARE_WINDOW_S": "20",
            "BANDITFLOW_ADMIN_TOKEN": os.environ.get("BANDITFLOW_ADMIN_TOKEN")
            or secrets.token_hex(16),
        }
        if self.settings.mlflow_tracking_uri:
            env["BANDITFLOW_MLFLOW_TRACKING_URI"] = self.settings.tracking_uri
        log_path = self.settings.home / "rollout.log"
        exe = shutil.which("banditflow") or str(Path(sys.executable).parent / "banditflow")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [exe, "serve", "--port", str(port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise DemoError(f"the rollout service exited; its log: {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"the rollout service was not ready in 120 s: {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def traffic(
        self,
        url: str,
        title: str,
        *,
        visits: int,
        start: datetime,
        end: datetime,
        until_promotion: bool = False,
    ) -> ArmsWatcher:
        from banditflow.simulate import build_stream, run_traffic, served_stream

        plan = self.plan
        options = TrafficOptions(
            offer_cost=plan.offer_cost, concurrency=plan.concurrency, batch=plan.batch
        )
        first = sum(len(p) for p in self.state.phases)
        with self.step(title) as note:
            stream = build_stream(
                self.settings.data_dir,
                n=visits,
                start=start,
                end=end,
                seed=plan.seed + 101 * (len(self.state.phases) + 1),
                options=options,
                first_seq=first,
            )

            def stop(watcher: ArmsWatcher) -> bool:
                return until_promotion and watcher.promoted

            records, watcher = asyncio.run(run_traffic(url, stream, options=options, stop=stop))
            served = served_stream(stream, records)
            self.state.phases.append(served)
            for wall, version in watcher.champions[1:]:
                before = records.loc[records["wall"] <= wall, "seq"]
                seq = int(before.max()) if len(before) else first
                self.state.events.append((seq, f"champion -> version {version}"))
            shares = served["version"].value_counts(normalize=True).sort_index()
            note(
                f"{len(served):,} visits, reward/visit {served['reward'].mean():.4f}; traffic "
                + ", ".join(f"v{v} {s:.0%}" for v, s in shares.items())
            )
            champions = " -> ".join(f"v{v}" for _, v in watcher.champions)
            note(f"champion over the phase: {champions}")
        return watcher

    def drift(self) -> None:
        from tasks.datagen import FILES
        from tasks.features import push_activity

        plan = self.plan
        with self.step("Turn the drift knob: push the new activity, labels arrive") as note:
            activity = pd.read_parquet(self.incoming / FILES["activity"])
            now = activity["event_timestamp"] < pd.Timestamp(plan.retrain_at)
            pushed = push_activity(activity[now], settings=self.settings, to="online_and_offline")
            sessions = pd.read_parquet(self.incoming / FILES["sessions"])
            arrived = sessions[sessions["event_timestamp"] < pd.Timestamp(plan.retrain_at)]
            labels = self.settings.data_dir / FILES["sessions"]
            pd.concat([pd.read_parquet(labels), arrived], ignore_index=True).to_parquet(
                labels, index=False
            )
            self.state.drift_seq = sum(len(p) for p in self.state.phases)
            self.state.events.append((self.state.drift_seq, "drift"))
            note(
                f"pushed {pushed:,} activity rows ({plan.drift_at:%m-%d} to "
                f"{plan.retrain_at:%m-%d}) to the online and offline store; "
                f"{len(arrived):,} new labelled sessions"
            )

    def retrain(self) -> None:
        from flows.retrain import retrain

        plan = self.plan
        with self.step("Drift check and retrain (warm-started), new challengers") as note:
            outcomes = retrain(
                feature_view="customer_activity",
                start=plan.drift_at,
                end=plan.retrain_at,
                model=MODEL,
            )
            for outcome in outcomes:
                note(
                    f"{outcome['model']}: {outcome['status']}; drifted features "
                    f"{outcome.get('drifted_features')}; metric degraded "
                    f"{outcome.get('metric_degraded')}"
                )
                if outcome.get("new_study"):
                    self.state.studies.append(outcome["new_study"])
                for version, alias in (outcome.get("registered") or {}).items():
                    note(f"version {version}: {alias or 'failed the gates'}")
            if not any(o["status"] == "retrained" for o in outcomes):
                raise DemoError(f"the drift was not detected or no retrain ran: {outcomes}")

    def push_rest(self) -> None:
        from tasks.datagen import FILES
        from tasks.features import push_activity

        activity = pd.read_parquet(self.incoming / FILES["activity"])
        later = activity["event_timestamp"] >= pd.Timestamp(self.plan.retrain_at)
        push_activity(activity[later], settings=self.settings, to="online_and_offline")

    # --- the report ------------------------------------------------------------------
    def report(self) -> Path:
        from banditflow.report import ReportData, gate_table, write_report
        from banditflow.simulate import oracle_reward, replay, split_replay

        plan = self.plan
        with self.step("Replay the same visits offline and write the report") as note:
            served = pd.concat(self.state.phases, ignore_index=True)
            cost = plan.offer_cost
            predictors: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {}

            def predictor(version: str) -> Callable[[pd.DataFrame], np.ndarray]:
                if version not in predictors:
                    from tasks.registry import load_version_model

                    model = load_version_model(MODEL, version)
                    columns = list(getattr(model, "feature_names_in_", []))

                    def predict(frame: pd.DataFrame) -> np.ndarray:
                        X = frame[columns] if columns else frame
                        return np.asarray(model.predict_proba(X)[:, 1])

                    predictors[version] = predict
                return predictors[version]

            drift_index = self.state.drift_seq or len(served)
            no_retrain = served["reward"].to_numpy().copy()
            after = served.iloc[drift_index:]
            if len(after):
                no_retrain[drift_index:] = replay(
                    after, predictor(self.state.champion_before_drift), cost
                )
            arms = self.state.initial_arms
            ab = [arms["champion"], arms.get("challenger-1", arms["champion"])]
            baselines = {
                "oracle (ground truth)": oracle_reward(served, cost),
                "never retrains": no_retrain,
                f"fixed 50/50 split (v{ab[0]} / v{ab[1]})": split_replay(
                    served, [predictor(v) for v in ab], cost
                ),
            }
            data = ReportData(
                served=served,
                baselines=baselines,
                drift_seq=self.state.drift_seq,
                events=sorted(self.state.events),
                studies=self._study_histories(),
                study_objectives={s: (METRIC, "minimize") for s in self.state.studies},
                gates=gate_table(self._versions()),
                steps=self.state.steps,
                window=max(500, len(served) // 40),
            )
            index = write_report(data, self.report_dir)
            self.summary = (self.report_dir / "summary.md").read_text()
            note(f"report: {index}")
        self.console.print(self.summary)
        return index

    def _study_histories(self) -> dict[str, pd.DataFrame]:
        from tasks.optimizers import load_optimizer
        from tasks.study import study_state_path

        histories = {}
        for name in self.state.studies:
            path = study_state_path(name, self.settings)
            if not path.exists():
                continue
            trials = [
                {"trial": t.id, "value": t.values.get(METRIC)}
                for t in load_optimizer(path).trials()
                if t.status == "completed" and t.values.get(METRIC) is not None
            ]
            histories[name] = pd.DataFrame(trials, columns=["trial", "value"])
        return histories

    def _versions(self) -> list[dict[str, Any]]:
        from tasks.tracking import configure_mlflow

        client = configure_mlflow(self.settings)
        aliases: dict[str, list[str]] = {}
        for alias, version in (client.get_registered_model(MODEL).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = sorted(
            client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version)
        )
        return [
            {"version": str(v.version), "aliases": aliases.get(str(v.version), []), "tags": v.tags}
            for v in versions
        ]

    def _aliases(self) -> dict[str, str]:
        from contract import aliases_of
        from tasks.tracking import configure_mlflow

        return aliases_of(configure_mlflow(self.settings), MODEL)

    # --- the story -------------------------------------------------------------------
    def run(self) -> Path:
        plan = self.plan
        began = time.perf_counter()
        self.console.rule("[bold]banditflow demo")
        self.console.print(f"data folder: {self.settings.home}")
        self.generate()
        self.features()
        self.optimize_and_register()
        self.state.initial_arms = self._aliases()
        if "champion" not in self.state.initial_arms:
            raise DemoError(f"no champion after registration: {self.state.initial_arms}")
        with contextlib.ExitStack() as stack:
            with self.step("Start the rollout service (Thompson sampling, auto decisions)") as note:
                url = stack.enter_context(self.service())
                note(f"{url}  dashboard: {url}/dashboard  arms: {self.state.initial_arms}")
            watcher = self.traffic(
                url,
                "Live traffic until the bandit promotes a challenger",
                visits=plan.visits_before_drift,
                start=plan.drift_at - timedelta(days=10),
                end=plan.drift_at,
                until_promotion=True,
            )
            self.state.champion_before_drift = watcher.champions[-1][1]
            self.drift()
            self.traffic(
                url,
                "Live traffic after the drift, before any retrain",
                visits=plan.visits_after_drift,
                start=plan.drift_at,
                end=plan.retrain_at,
            )
            self.retrain()
            self.push_rest()
            self.traffic(
                url,
                "Live traffic: the bandit moves to the retrained challengers",
                visits=plan.visits_after_retrain,
                start=plan.retrain_at,
                end=plan.end,
            )
        index = self.report()
        self.console.rule(f"done in {time.perf_counter() - began:.0f} s; open {index}")
        return index


def clear_home(home: Path) -> None:
    """Remove what an earlier demo left in the data folder (data, stores, registry, report)."""
    if home.exists():
        for child in home.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def run_demo(plan: DemoPlan | None = None, *, fresh: bool = False, **overrides: Any) -> Path:
    """Run the demo with ``plan`` (default sizes), overriding single fields by keyword.

    ``fresh`` empties the data folder first; otherwise an earlier demo's studies would
    resume (already finished) and its registry would already hold the versions.
    """
    from tasks.settings import get_settings

    if fresh:
        clear_home(get_settings().home)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a server, Prefect starts a temporary one; on a busy 2-core machine it can take
    # longer than the default 20 s to answer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Each step prints one line; flow and task logs still reach the Prefect API and UI.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    plan = replace(plan or DemoPlan(), **overrides)
    home = get_settings().ensure_dirs().home
    with _library_output_to(home / "demo.log") as terminal:
        # soft_wrap: a step's line stays one line in a log or a pipe (the terminal wraps it).
        return Demo(plan, console=Console(file=terminal, soft_wrap=True)).run()


@contextlib.contextmanager
def _library_output_to(log_path: Path) -> Iterator[Any]:
    """Send everything written to file descriptors 1 and 2 to ``log_path``; yield the terminal.

    Libraries (Feast's progress bars, MLflow's notices, warnings from trial processes) write
    to the process's stdout and stderr, some from child processes: only a descriptor-level
    redirect catches all of it. The demo's own lines go to a copy of the real stdout.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
