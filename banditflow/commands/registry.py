"""Registry commands: register a study's candidates, promote, roll back, list versions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from banditflow.cli import app


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _client() -> Any:
    from tasks.tracking import configure_mlflow

    return configure_mlflow()


def _emit(event: str, name: str, version: str, payload: dict[str, Any]) -> None:
    """Emit a rollout event like the rollout service does, when a Prefect API is configured."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return  # no API to tell (an ephemeral one would die with this process)
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from contract import model_resource_id

    emit_event(
        event=event,
        resource={
            "prefect.resource.id": model_resource_id(name, version),
            "prefect.resource.name": name,
        },
        payload={**payload, "source": "cli"},
    )
    EventsWorker.drain_all(timeout=10)


@app.command("register")
def register_command(
    study: Annotated[str, typer.Argument(help="The study (the optimize spec's name).")],
    spec: Annotated[
        Path | None,
        typer.Option(help="Study spec YAML; default: the spec logged with the study."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Registered model; default: the spec's registration.model_name, or its name."
        ),
    ] = None,
) -> None:
    """Register a study's best candidates behind its gates (register, gate, alias, ONNX)."""
    from flows.register import register
    from tasks.spec import SpecError, StudySpec

    try:
        loaded = StudySpec.from_yaml(spec) if spec is not None else None
        summary = register(study, loaded, model)
    except (SpecError, LookupError, ValueError, RuntimeError) as exc:
        raise _fail(exc) from exc
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    _print_summary(summary)
    if not any(v["passed"] for v in summary["versions"]):
        typer.secho(
            f"error: no candidate of study {study} passed the gates, so nothing will serve.",
            fg=typer.colors.RED,
            err=True,
        )
        for line in failure_advice(summary):
            typer.echo(f"  {line}", err=True)
        typer.echo(
            "Change the spec and run optimize and register again, or promote a version "
            "anyway with `banditflow promote NAME VERSION --force`.",
            err=True,
        )
        raise typer.Exit(code=2)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the version's history).")] = (
        "promoted by hand"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Promote a version that failed its gates.")
    ] = False,
) -> None:
    """Make VERSION the champion; the old champion becomes previous-champion."""
    from mlflow.exceptions import MlflowException

    from contract import EVENT_ROLLOUT_PROMOTED, TAG_GATE_FAILURES, TAG_GATES, record_event
    from contract import promote as promote_version

    client = _client()
    try:
        tags = client.get_model_version(name, version).tags or {}
    except MlflowException as exc:
        raise _fail(
            RuntimeError(f"model {name!r} has no version {version!r}: {exc.message}")
        ) from exc
    failed = tags.get(TAG_GATES) == "failed"
    failures = tags.get(TAG_GATE_FAILURES) or "unknown gates"
    if failed and not force:
        raise _fail(
            RuntimeError(
                f"{name} version {version} failed its gates ({failures}): `banditflow models "
                f"{name}` shows by how much; add --force to promote it anyway (the force is "
                "kept in its history)"
            )
        )
    if failed:
        record_event(
            client, name, version, "forced", f"promoted despite failed gates ({failures}): {reason}"
        )
        reason = f"forced past failed gates ({failures}): {reason}"
    result = promote_version(client, name, version, reason)
    _emit(EVENT_ROLLOUT_PROMOTED, name, version, {"reason": reason, **result})
    previous = result["previous"]
    typer.echo(
        f"{name}: version {result['champion']} is champion"
        + (f" (was {previous}, now previous-champion)" if previous else "")
    )


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the versions' history).")] = (
        "rolled back by hand"
    ),
) -> None:
    """Give champion back to the previous champion."""
    from mlflow.exceptions import MlflowException

    from contract import EVENT_ROLLOUT_ROLLED_BACK, NoChampionToRestore
    from contract import rollback as rollback_model

    try:
        result = rollback_model(_client(), name, reason)
    except (NoChampionToRestore, MlflowException) as exc:
        raise _fail(exc) from exc
    _emit(EVENT_ROLLOUT_ROLLED_BACK, name, result["champion"], {"reason": reason, **result})
    typer.echo(
        f"{name}: version {result['champion']} is champion again "
        f"(version {result['rolled_back']} rolled back)"
    )


@app.command()
def models(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    history: Annotated[bool, typer.Option(help="Also print the alias history.")] = True,
) -> None:
    """Show a model's versions: aliases, gate results, serving flavour, and the history."""
    from mlflow.exceptions import MlflowException
    from rich.console import Console

    client = _client()
    try:
        tables = model_tables(client, name, history=history)
    except MlflowException as exc:
        raise _fail(RuntimeError(f"no registered model {name!r}: {exc.message}")) from exc
    console = Console()
    for table in tables:
        console.print(table)


def model_tables(client: Any, name: str, *, history: bool = True) -> list[Any]:
    """Return rich tables of a model's versions and (optionally) its history."""
    from rich.table import Table

    from contract import (
        TAG_GATE_FAILURES,
        TAG_GATE_PREFIX,
        TAG_GATES,
        TAG_ONNX_FALLBACK,
        TAG_SERVING_FLAVOUR,
        TAG_STUDY,
        TAG_TRIAL,
        aliases_of,
        read_history,
    )

    aliases = aliases_of(client, name)
    held: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        held.setdefault(version, []).append(alias)
    versions = sorted(
        client.search_model_versions(f"name='{name}'"), key=lambda mv: int(mv.version)
    )
    table = Table(title=f"{name}: {len(versions)} version(s)")
    for column in ("version", "aliases", "study / trial", "gates", "gate results", "serving"):
        table.add_column(column)
    for mv in versions:
        tags = mv.tags or {}
        verdict = tags.get(TAG_GATES, "-")
        failures = tags.get(TAG_GATE_FAILURES, "")
        style = {"passed": "green", "failed": "red"}.get(verdict, "")
        gate_lines = [
            f"{key[len(TAG_GATE_PREFIX) :]}: {value}"
            for key, value in sorted(tags.items())
            if key.startswith(TAG_GATE_PREFIX)
        ]
        flavour = tags.get(TAG_SERVING_FLAVOUR, "-")
        if TAG_ONNX_FALLBACK in tags:
            flavour += f" ({tags[TAG_ONNX_FALLBACK][:60]})"
        table.add_row(
            str(mv.version),
            ", ".join(sorted(held.get(str(mv.version), []))) or "-",
            f"{tags.get(TAG_STUDY, '-')} / {tags.get(TAG_TRIAL, '-')}",
            f"[{style}]{verdict}[/]" + (f"\n{failures}" if failures else "") if style else verdict,
            "\n".join(gate_lines) or "-",
            flavour,
        )
    tables = [table]
    if history:
        log = Table(title=f"{name}: history")
        for column in ("when (UTC)", "version", "action", "reason"):
            log.add_column(column)
        for entry in read_history(client, name):
            log.add_row(
                entry.at.strftime("%Y-%m-%d %H:%M:%S"), entry.version, entry.action, entry.reason
            )
        tables.append(log)
    return tables


_GATE_VALUE = re.compile(r"value=(\S+) (<=|>=) threshold=(\S+)")
_ADVICE = {
    "performance": "lower gates.performance.floor or max_regression in the spec, or search "
    "longer (budget.max_trials) or a wider space",
    "fairness": "raise the gates.fairness limits, or review the sensitive attribute and the "
    "features that stand in for it",
    "latency": "raise gates.latency_p95_ms, keep registration.convert_onnx on (ONNX serves "
    "faster), or pick a lighter model family",
    "size": "raise gates.max_model_bytes, or bound the model's size in the search space "
    "(fewer, shallower trees)",
}


def failure_advice(summary: Mapping[str, Any]) -> list[str]:
    """Return one line per failed gate of each version: by how much, and what to change."""
    lines = []
    for v in summary["versions"]:
        failed = {g: t for g, t in v["gates"].items() if t.startswith("fail")}
        for gate in sorted(failed) or v["failures"]:
            text = failed.get(gate, "failed")
            by = ""
            if m := _GATE_VALUE.search(text):
                try:
                    by = f" (off by {abs(float(m.group(1)) - float(m.group(3))):.4g})"
                except ValueError:
                    by = ""
            advice = _ADVICE.get(gate.split(".", 1)[0], "see the version's gate report")
            lines.append(f"version {v['version']}: {gate} {text}{by}: {advice}")
    return lines


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']} <- study {summary['study']}")
    for column in ("version", "trial (run)", "new", "gates", "alias", "serving"):
        table.add_column(column)
    for v in summary["versions"]:
        gates = "passed" if v["passed"] else f"failed: {', '.join(v['failures'])}"
        table.add_row(
            v["version"],
            f"{v['trial_id']} ({v.get('run_id') or '-'})",
            "yes" if v["created"] else "no",
            gates,
            v["alias"] or "-",
            v["serving_flavour"] or "-",
        )
    Console().print(table)
