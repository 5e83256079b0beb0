"""`make demo`: the world is driven; the deployed system closes the loop by itself.

The driver starts the local stack (Prefect server, process work pool and worker, the
deployments, MLflow, the rollout service with automatic decisions), deploys the
application's first studies with a trigger on the first feature materialization, and then
only drives the world on one simulated clock: each simulated day it sends that day's
customers over HTTP, reports outcomes as they fall due, and at the day's end ingests the
labels that arrived and the next day's features (which emits
``banditflow.features.updated``). In lock-step mode it then waits until the work the day's
events started has finished. Drift checks, retrains, registrations, challengers joining,
promotions and rollbacks happen because an event, a trigger or a schedule made them
happen. The report compares the live system with the feature oracle (the best policy
given the observable features), the ground truth, a system that never retrains and a
fixed split, on the same visits, beside a timeline read from Prefect and the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from banditflow.clock import SimClock
from banditflow.demo_home import clear_home, library_output_to
from banditflow.world import World, WorldPlan

MODEL = "conversion"
# The application acts on calibrated probabilities (offer when P >= cost), and drift moves
# calibration more than ranking: log loss, not ROC AUC, is what tells models apart here.
METRIC = "log_loss"
STUDIES_DEPLOYMENT = "first-studies"
DRIFT_CHECK = "retrain-on-feature-update"  # prefect.yaml: the features.updated trigger


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and knobs of the demo; ``quick()`` is the CI-sized version."""

    world: WorldPlan = field(default_factory=WorldPlan)
    baseline_trials: int = 2
    hyperopt_trials: int = 12
    ax_trials: int = 6
    folds: int = 3
    max_rows: int | None = 60_000  # label rows per study (the latest)
    q: int = 2
    # Thompson's discount per outcome: after the drift, the arms' old rewards fade.
    discount: float = 0.9998
    min_outcomes: int = 800
    # One client sending each day's visits in order, in batches of ``batch`` rows: with the
    # service deciding at outcome counts, the same seed then routes every visit alike and
    # decides alike on a quiet or a loaded machine (concurrent clients reorder outcomes).
    concurrency: int = 1
    batch: int = 10
    lock_step: bool = True
    rate: float | None = None  # simulated seconds per wall second (None: as fast as it goes)
    poll_s: float = 1.0
    decide_every_outcomes: int = 200
    refresh_every_outcomes: int = 50

    @classmethod
    def quick(cls) -> DemoPlan:
        # Enough labels a day that one day after the drift is enough to retrain on.
        world = WorldPlan(customers=3_000, sessions_per_day=1_500, live_days=8, drift_day=2)
        return cls(
            world=replace(world, visits_per_day=6_000),
            hyperopt_trials=4,
            ax_trials=3,
            max_rows=20_000,
            min_outcomes=400,
        )


@dataclass
class DemoState:
    """What the days produced, for the report."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    served: list[pd.DataFrame] = field(default_factory=list)
    champions: list[tuple[int, str]] = field(default_factory=list)  # (first seq, version)
    initial_arms: dict[str, str] = field(default_factory=dict)
    waits: list[dict[str, Any]] = field(default_factory=list)
    unknown_outcomes: pd.DataFrame | None = None  # offers whose outcome is not known yet
    failures_from: datetime | None = None  # where the last wait's look for failed runs ended


class Demo:
    """Run the demo's steps in order, printing one line per step."""

    def __init__(self, plan: DemoPlan, *, console: Console | None = None) -> None:
        from banditflow.timeline import DayLog
        from tasks.settings import get_settings

        self.plan = plan
        self.model = MODEL
        self.console = console or Console()
        self.settings = get_settings().ensure_dirs()
        self.world = World(plan.world, self.settings.home / "world", self.settings.data_dir)
        self.state = DemoState()
        self.report_dir = self.settings.home / "report"
        self.day_log = DayLog(datetime.now(UTC))
        self.clock = SimClock(plan.world.live_start, rate=plan.rate)
        self.total_steps = 5 + plan.world.live_days

    # --- presentation ---------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        number = len(self.state.steps) + 1
        label = f"[bold cyan][{number:>2}/{self.total_steps}][/] {title}"
        notes: list[str] = []
        began = time.perf_counter()
        with self.console.status(label + " ...", spinner="dots"):
            yield notes.append
        took = time.perf_counter() - began
        self.state.steps.append((title, took))
        self.console.print(f"{label} [green]done[/] [dim]({took:.1f} s)[/]")
        for note in notes:
            self.console.print(f"        {note}")

    # --- set-up: the world, the stack, the application's first studies ---------------
    def generate(self) -> None:
        with self.step("Generate the world (the drift knob is set for later)") as note:
            facts = self.world.generate()
            knob = self.plan.world.drift_at
            note(
                f"{facts['customers']:,} customers; the system starts with "
                f"{facts['history_labels']:,} labelled sessions before "
                f"{facts['live_start']:%Y-%m-%d} ({facts['conversion_rate']:.1%} convert); "
                + (f"drift on {knob:%Y-%m-%d}" if knob else "drift knob off")
            )

    def stack_env(self) -> dict[str, str]:
        """Settings of every process of the stack: the service's policy and decisions."""
        return {
            "BANDITFLOW_MODEL_NAME": MODEL,
            "BANDITFLOW_POLICY": "thompson-gaussian",
            # A floor of traffic per arm keeps evidence flowing to the decision rule.
            "BANDITFLOW_POLICY_PARAMS": json.dumps(
                {"min_share": 0.1, "discount": self.plan.discount}
            ),
            # Decisions and the statistics Thompson draws from at counts of acknowledged
            # outcomes (rollout.cadence), not on the wall clock: reproducible under load.
            "BANDITFLOW_DECIDE_EVERY_OUTCOMES": str(self.plan.decide_every_outcomes),
            "BANDITFLOW_REFRESH_EVERY_OUTCOMES": str(self.plan.refresh_every_outcomes),
            "BANDITFLOW_DECISION_PARAMS": json.dumps({"min_outcomes": self.plan.min_outcomes}),
            "BANDITFLOW_ALIAS_POLL_S": "1",
            "BANDITFLOW_SEED": str(self.plan.world.seed),
        }

    def start_stack(self, stack: contextlib.ExitStack) -> Any:
        from banditflow.stack import StackError, start_stack

        with self.step("Start the deployed system (Prefect, worker, MLflow, rollout)") as note:
            try:
                running = stack.enter_context(
                    start_stack(
                        self.settings,
                        worker_poll_seconds=self.plan.poll_s,
                        env=self.stack_env(),
                        echo=lambda line: None,
                    )
                )
            except StackError as exc:
                raise DemoError(f"the stack did not start: {exc}") from exc
            # This process is a client of the stack: ingestion's events go to its server.
            # Prefect read its settings when first imported: override them in-process too.
            os.environ.update(running.env())
            from prefect.settings import PREFECT_API_URL, temporary_settings

            stack.enter_context(temporary_settings({PREFECT_API_URL: running.prefect_api_url}))
            note(f"Prefect UI {running.prefect_ui_url}  rollout {running.rollout_url}/dashboard")
        return running

    def deploy_first_studies(self, work_pool: str) -> None:
        from banditflow.studies import demo_specs, deploy_first_studies

        with self.step("Deploy the application's first studies (trigger: first features)") as n:
            specs = demo_specs(self.plan, MODEL, METRIC)
            deploy_first_studies(specs, work_pool, MODEL, STUDIES_DEPLOYMENT)
            n(f"studies {', '.join(s.name for s in specs)} run in order when the features arrive")

    # --- the live days --------------------------------------------------------------
    def first_ingestion(self, running: Any) -> None:
        from banditflow.world import ingest_history

        with self.step("Ingest the history: the studies start, a champion appears") as note:
            self.day_log.start(-1)
            emitted = datetime.now(UTC)
            facts = ingest_history(self.plan.world, settings=self.settings)
            wait = self._wait(running, -1, emitted, STUDIES_DEPLOYMENT, note)
            note(f"materialized {facts['rows']:,} rows; the system worked {wait:.0f} s")
            arms = self._aliases()
            if "champion" not in arms:
                raise DemoError(f"no champion after the first studies: {arms}; see run/*.log")
            self.state.initial_arms = arms
            note(f"serving: {', '.join(f'{a} v{v}' for a, v in sorted(arms.items()))}")

    def _wait(
        self, running: Any, day: int, emitted: datetime | None, deployment: str, note: Any
    ) -> float:
        """Lock-step: wait until the work the day's events started has finished.

        ``deployment`` is the one whose trigger the driver's event fires: its run must
        exist before the system can be idle. Each flow run that failed meanwhile is noted.
        """
        if not self.plan.lock_step:
            return 0.0
        from banditflow.clock import wait_for_the_day

        since, self.state.failures_from = self.state.failures_from, datetime.now(UTC)
        args = (running, day, emitted, deployment, self._arm_versions)
        record = asyncio.run(wait_for_the_day(*args, since=since, poll_s=self.plan.poll_s))
        self.state.waits.append(
            {"day": day, "wall_s": round(record.wall_s, 1), "waited for": record.waited_for}
            | {"failed": record.failed}
        )
        for failure in record.failed:
            note(f"[red]flow run failed[/] {failure} (Prefect UI: the run's logs)")
        return float(record.wall_s)

    def live_day(self, day: int, running: Any, pending: Any) -> None:
        from banditflow.simulate import TrafficOptions, build_stream, run_traffic, served_stream
        from banditflow.world import ingest_day

        world = self.plan.world
        options = TrafficOptions(
            offer_cost=world.offer_cost,
            feedback_delay_mean_s=world.feedback_delay_mean_s,
            feedback_loss=world.feedback_loss,
            concurrency=self.plan.concurrency,
            batch=self.plan.batch,
            watch_s=None,  # the champion is read at each day's start; decisions need no poll
        )
        start, end = world.day_start(day), world.day_start(day + 1)
        drift = world.drift_day is not None and day >= world.drift_day
        with self.step(f"Day {day} ({start:%m-%d})" + (" after the drift" if drift else "")) as n:
            self.day_log.start(day)
            first = sum(len(s) for s in self.state.served)
            began = time.perf_counter()
            stream = build_stream(
                self.world.truth_dir,
                n=world.visits_per_day,
                start=start,
                end=end,
                seed=world.seed * 10_007 + day,
                options=options,
                first_seq=first,
            )
            records, watcher = asyncio.run(
                run_traffic(
                    running.rollout_url, stream, options=options, until=end, pending=pending
                )
            )
            # At a rate, the day's end waits for the wall to catch up (the traffic is paced
            # per day); in lock-step the wait that follows is not caught up afterwards.
            asyncio.run(self.clock.advance_to(end))
            served = served_stream(stream, records).assign(day=day)
            served["champion"] = watcher.champions[0][1] if watcher.champions else ""
            self.state.served.append(served)
            emitted = datetime.now(UTC)
            sent = time.perf_counter()
            known = self._known_outcomes(served, end)
            got = ingest_day(self.world.arrivals(day), settings=self.settings, outcomes=known)
            ingested = time.perf_counter()
            wait = self._wait(running, day, emitted if got["activity"] else None, DRIFT_CHECK, n)
            self.clock.repace()
            shares = served["version"].value_counts(normalize=True).sort_index()
            n(
                f"{len(served):,} visits, reward/visit {served['reward'].mean():+.4f}; "
                + ", ".join(f"v{v} {s:.0%}" for v, s in shares.items())
                + f"; champion v{served['champion'].iloc[0]}; ingested {got['labels']:,} "
                f"labels, {got['outcomes']:,} outcomes and {got['activity']:,} feature rows "
                f"(traffic {sent - began:.0f} s, "
                f"ingestion {ingested - sent:.0f} s); the system worked {wait:.0f} s"
            )

    def _known_outcomes(self, served: pd.DataFrame, end: datetime) -> pd.DataFrame:
        """Return the offers' outcomes known by ``end``; keep the others for later days."""
        from banditflow.world import served_outcomes

        rows = served_outcomes(served)
        if self.state.unknown_outcomes is not None:
            rows = pd.concat([self.state.unknown_outcomes, rows], ignore_index=True)
        known = (rows["known_at"] <= pd.Timestamp(end)).to_numpy()
        self.state.unknown_outcomes = rows[~known].reset_index(drop=True)
        return rows[known].reset_index(drop=True)

    def run_days(self, running: Any) -> None:
        from banditflow.simulate import PendingFeedback

        self.first_ingestion(running)
        pending = PendingFeedback()  # outcomes due after a day's end report the next day
        for day in range(self.plan.world.live_days):
            self.live_day(day, running, pending)

    # --- the registry (read only) ---------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        from contract import aliases_of
        from tasks.tracking import configure_mlflow

        try:
            return aliases_of(configure_mlflow(self.settings), MODEL)
        except Exception:  # noqa: BLE001 - no model registered yet
            return {}

    def versions(self) -> list[dict[str, Any]]:
        """Return every version of the model with its aliases and tags (the gate table)."""
        from tasks.tracking import configure_mlflow

        client = configure_mlflow(self.settings)
        aliases: dict[str, list[str]] = {}
        for alias, version in self._aliases().items():
            aliases.setdefault(str(version), []).append(alias)
        found = client.search_model_versions(f"name='{MODEL}'")
        return [
            {"version": str(v.version), "aliases": aliases.get(str(v.version), []), "tags": v.tags}
            for v in sorted(found, key=lambda v: int(v.version))
        ]

    def champion_days(self) -> list[tuple[int, str]]:
        """Return (day, version) for the first day and each day the champion changed."""
        out: list[tuple[int, str]] = []
        for served in self.state.served:
            if len(served) and (not out or out[-1][1] != served["champion"].iloc[0]):
                out.append((int(served["day"].iloc[0]), str(served["champion"].iloc[0])))
        return out

    def _arm_versions(self) -> set[str]:
        """Return the versions the registry puts in rotation (champion and challengers)."""
        from contract import CHAMPION, is_challenger_alias

        return {v for a, v in self._aliases().items() if a == CHAMPION or is_challenger_alias(a)}

    # --- the story ------------------------------------------------------------------
    def run(self) -> Path:
        from banditflow.demo_report import write_demo_report

        began = time.perf_counter()
        self.console.rule("[bold]banditflow demo")
        self.console.print(f"data folder: {self.settings.home}")
        self.generate()
        with contextlib.ExitStack() as stack:
            running = self.start_stack(stack)
            self.deploy_first_studies(running.work_pool)
            self.run_days(running)
            with self.step("Read the records, replay the same visits, write the report") as note:
                index, summary = write_demo_report(self, running)
                note(f"report: {index}")
        self.console.print(summary)
        self.console.rule(f"done in {time.perf_counter() - began:.0f} s; open {index}")
        return index


def run_demo(plan: DemoPlan | None = None, *, fresh: bool = False, **world: Any) -> Path:
    """Run the demo with ``plan`` (default sizes); keywords override the world's knobs."""
    from tasks.settings import get_settings

    if fresh:
        clear_home(get_settings().home)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A stopped demo stops its stack: SIGTERM unwinds the context managers as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = plan or DemoPlan()
    if world:
        plan = replace(plan, world=replace(plan.world, **world))
    home = get_settings().ensure_dirs().home
    with library_output_to(home / "demo.log") as terminal:
        # soft_wrap: a step's line stays one line in a log or a pipe (the terminal wraps it).
        return Demo(plan, console=Console(file=terminal, soft_wrap=True)).run()
