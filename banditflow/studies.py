"""The demo application's first study specs: a profile-only baseline, Hyperopt and Ax."""

from __future__ import annotations

from typing import Any, cast

from tasks.datagen import ACTIVITY_FEATURES
from tasks.spec import StudySpec


def study_spec(plan: Any, model_name: str, metric: str, name: str, **overrides: Any) -> StudySpec:
    """Return one study spec on the history (labels before the live period)."""
    raw: dict[str, Any] = {
        "name": name,
        "data": {"end": plan.world.live_start.isoformat(), "max_rows": plan.max_rows},
        "objectives": {metric: "minimize"},
        "budget": {"max_trials": 8},
        "q": plan.q,
        "seed": plan.world.seed,
        "evaluation": {"folds": plan.folds, "latency_calls": 50},
        "gates": {
            # No champion yet: at most the log loss of always predicting the base rate.
            "performance": {"metric": metric, "max_regression": 0.002, "floor": 0.32},
            "fairness": {
                "sensitive_attribute": "age_band",
                "decision_threshold": plan.world.offer_cost,  # the offer is what is fair
                "max_demographic_parity_difference": 0.5,
                "max_equalized_odds_difference": 0.6,
            },
            "latency_p95_ms": 50.0,
            "max_model_bytes": 20_000_000,
        },
        "registration": {"model_name": model_name, "max_candidates": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = raw[key] | value
        else:
            raw[key] = value
    return StudySpec.parse(raw, source=f"the demo's {name} spec")


def demo_specs(plan: Any, model: str, metric: str) -> list[StudySpec]:
    """Return the first studies in the order they run: the first passer is the champion."""
    return [
        # Today's champion: a logistic regression on the profile, blind to the age band.
        study_spec(
            plan,
            model,
            metric,
            f"{model}-baseline",
            data={"drop_columns": [*ACTIVITY_FEATURES, "age_band"]},
            model={"family": "logistic_regression"},
            optimizer="random",
            budget={"max_trials": plan.baseline_trials},
        ),
        study_spec(
            plan,
            model,
            metric,
            f"{model}-hyperopt",
            model={"family": "hist_gradient_boosting"},
            optimizer="hyperopt",
            budget={"max_trials": plan.hyperopt_trials},
        ),
        study_spec(
            plan,
            model,
            metric,
            f"{model}-ax",
            model={"family": "logistic_regression"},
            optimizer="ax",
            budget={"max_trials": plan.ax_trials},
        ),
    ]


def deploy_first_studies(specs: list[StudySpec], work_pool: str, model: str, name: str) -> None:
    """Deploy the ``studies`` flow with these specs, triggered by the first profile update.

    The profile view is materialized once, with the history: its
    ``banditflow.features.updated`` starts the studies; each day's activity push starts only
    the drift check (prefect.yaml's trigger). An application's ML engineer deploys the same
    way (`prefect deploy`); no flow is called.
    """
    from prefect import Flow, flow
    from prefect.events import DeploymentEventTrigger

    from contract import EVENT_FEATURES_UPDATED, feature_view_resource_id
    from tasks.settings import PROJECT_ROOT

    trigger = DeploymentEventTrigger(
        expect={EVENT_FEATURES_UPDATED},
        match={"prefect.resource.id": feature_view_resource_id("customer_profile")},
    )
    source = cast(
        Flow[..., Any],
        flow.from_source(source=str(PROJECT_ROOT), entrypoint="flows/studies.py:studies"),
    )
    source.deploy(
        name=name,
        work_pool_name=work_pool,
        parameters={"specs": [s.model_dump(mode="json") for s in specs], "model_name": model},
        triggers=[trigger],
        build=False,
        push=False,
        print_next_steps=False,
    )
