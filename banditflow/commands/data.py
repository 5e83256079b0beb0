"""Data commands: generate the demo data, and drive the Feast repository."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from banditflow.cli import app

features_app = typer.Typer(
    help="Apply the Feast repository, materialize, build training sets.", no_args_is_help=True
)
app.add_typer(features_app, name="features")


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@app.command()
def generate(
    rows: Annotated[int, typer.Option(help="Labelled sessions to generate.")] = 60_000,
    customers: Annotated[int, typer.Option(help="Number of customers.")] = 5_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    days: Annotated[int, typer.Option(help="Days of activity from --start.")] = 120,
    start: Annotated[
        datetime | None, typer.Option(help="First day (UTC); default 2026-01-01.")
    ] = None,
    drift_at: Annotated[
        datetime | None, typer.Option(help="When the drift starts (UTC); default: no drift.")
    ] = None,
    drift_strength: Annotated[float, typer.Option(help="How strong the drift is.")] = 1.0,
    age_effect: Annotated[
        float, typer.Option(help="Effect of the age band on the true log-odds (0: none).")
    ] = 0.4,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; default: the settings' data folder.")
    ] = None,
) -> None:
    """Generate the demo e-commerce conversion data (parquet) with a known ground truth."""
    from tasks.datagen import GeneratorConfig
    from tasks.datagen import generate as run_generate
    from tasks.settings import get_settings

    fields: dict[str, object] = {
        "seed": seed,
        "n_customers": customers,
        "rows": rows,
        "days": days,
        "drift_at": drift_at,
        "drift_strength": drift_strength,
        "age_effect": age_effect,
    }
    if start is not None:
        fields["start"] = start
    config = GeneratorConfig.model_validate(fields)
    folder = out or get_settings().ensure_dirs().data_dir
    paths = run_generate(config, folder)
    for name, path in paths.items():
        typer.echo(f"{name:<10} {path}  ({path.stat().st_size / 1e6:.1f} MB)")


@features_app.command("apply")
def features_apply() -> None:
    """Register the entity, sources, views and feature service in the Feast registry."""
    from tasks.features import FeatureError, apply_repository
    from tasks.settings import get_settings

    try:
        applied = apply_repository(get_settings())
    except FeatureError as exc:
        raise _fail(exc) from None
    typer.echo("applied: " + ", ".join(applied))


def _report(update: dict[str, Any]) -> None:
    """Print one feature update, and which event it emitted or why none."""
    typer.echo(
        f"{update['feature_view']}: {update['rows']} rows ({update['start']} .. {update['end']})"
    )
    if update.get("event"):
        from prefect.settings import PREFECT_API_URL

        where = PREFECT_API_URL.value()
        typer.echo(f"  emitted {update['event']} (id {update['event_id']}) to {where}")
    else:
        typer.echo(f"  no event: {update.get('no_event') or 'unknown reason'}")


@features_app.command("materialize")
def features_materialize(
    end: Annotated[
        datetime | None, typer.Option(help="Materialize up to this time (UTC); default: now.")
    ] = None,
) -> None:
    """Load new offline rows into the online store and emit banditflow.features.updated."""
    from tasks.features import FeatureError
    from tasks.ingest import flush_events, materialize_incremental
    from tasks.settings import get_settings

    try:
        updates = materialize_incremental(end, settings=get_settings())
    except FeatureError as exc:
        raise _fail(exc) from None
    if not updates:
        typer.echo("no view has rows newer than its last materialization: no event")
    for update in updates:
        _report(update)
    flush_events()


@features_app.command("push")
def features_push(
    rows: Annotated[Path, typer.Argument(help="Activity rows to push (parquet or CSV).")],
    offline: Annotated[
        bool, typer.Option(help="Also append the rows to the offline source (parquet).")
    ] = False,
) -> None:
    """Push fresh activity rows to the online store and emit banditflow.features.updated."""
    import pandas as pd

    from tasks.features import FeatureError
    from tasks.ingest import flush_events, push_activity_update
    from tasks.settings import get_settings

    if not rows.is_file():
        raise _fail(FileNotFoundError(f"{rows} is not a file"))
    try:
        frame = pd.read_csv(rows) if rows.suffix.lower() == ".csv" else pd.read_parquet(rows)
    except (OSError, ValueError) as exc:
        raise _fail(ValueError(f"cannot read {rows}: {exc}"[:300])) from None
    try:
        update = push_activity_update(
            frame, settings=get_settings(), to="online_and_offline" if offline else "online"
        )
    except FeatureError as exc:
        raise _fail(exc) from None
    _report(update)
    flush_events()


@features_app.command("training-set")
def features_training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    labels: Annotated[
        Path | None, typer.Option(help="Label rows (parquet); default: the generated sessions.")
    ] = None,
    feature_service: Annotated[str, typer.Option(help="Feast feature service.")] = (
        "conversion_model_v1"
    ),
    target: Annotated[str, typer.Option(help="Label column.")] = "converted",
) -> None:
    """Build a point-in-time-correct training set and write it as parquet."""
    import pandas as pd

    from tasks.features import FeatureError, build_training_set, load_labels
    from tasks.settings import get_settings

    settings = get_settings()
    try:
        frame = load_labels(settings) if labels is None else pd.read_parquet(labels)
        training = build_training_set(frame, feature_service, target=target, settings=settings)
    except FeatureError as exc:
        raise _fail(exc) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    training.to_parquet(out, index=False)
    typer.echo(f"wrote {len(training)} rows x {training.shape[1]} columns to {out}")
