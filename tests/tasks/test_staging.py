"""The best trade-off goes to ``staging``: the stated rules, then a real study end to end.

The rule tests use hand-computed fronts. The integration tests run a real two-objective
study (ROC AUC against model bytes, a random forest) through the optimize and register
flows on a real SQLite MLflow store, load the registry into the rollout service's model
pool, and check that the staged version is a shadow arm until it is made a challenger.
A register step that errors (a third-party gate that raises) fails the flow run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contract import (
    CHAMPION,
    STAGING,
    TAG_GATES,
    TAG_ROLE,
    TAG_SERVING_FLAVOUR,
    add_challenger,
    aliases_of,
    is_challenger_alias,
    read_history,
)
from tasks.spec import ChoiceSpec, SpecError, StudySpec
from tasks.staging import choose, knee_index, normalized_losses, with_choice

TWO = {"roc_auc": "maximize", "model_bytes": "minimize"}


@dataclass
class Point:
    trial_id: str
    values: dict[str, float] = field(default_factory=dict)


# A convex front: A is the most accurate and largest, C the smallest and least accurate.
FRONT = [
    Point("A", {"roc_auc": 0.90, "model_bytes": 1000.0}),
    Point("B", {"roc_auc": 0.89, "model_bytes": 200.0}),
    Point("C", {"roc_auc": 0.80, "model_bytes": 100.0}),
    Point("D", {"roc_auc": 0.85, "model_bytes": 120.0}),
]


def test_losses_are_scaled_per_objective_in_its_own_direction() -> None:
    losses = normalized_losses([p.values for p in FRONT], TWO)
    # roc_auc is maximized: 0.90 is loss 0, 0.80 loss 1; bytes minimized: 100 is 0, 1000 is 1.
    np.testing.assert_allclose(losses[:, 0], [0.0, 0.1, 1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(losses[:, 1], [1.0, 100 / 900, 0.0, 20 / 900], atol=1e-12)
    # An objective every member agrees on scales to 0: it decides nothing.
    flat = normalized_losses([{"roc_auc": 0.8, "model_bytes": 5.0}] * 2, TWO)
    assert not flat.any()


def test_knee_is_the_member_closest_to_utopia() -> None:
    choice = choose(FRONT, TWO, ChoiceSpec())
    assert choice is not None and choice.trial_id == "B" and choice.rule == "knee"
    assert choice.score == pytest.approx(math.hypot(0.1, 100 / 900), abs=1e-12)
    assert choice.size == 4 and "trial B" in choice.reason
    i, distance = knee_index(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert (i, distance) == (0, 1.0)  # a tie goes to the member listed first


def test_utility_weights_move_the_choice_along_the_front() -> None:
    accurate = choose(FRONT, TWO, ChoiceSpec(rule="utility", weights={"roc_auc": 1.0}))
    small = choose(FRONT, TWO, ChoiceSpec(rule="utility", weights={"model_bytes": 1.0}))
    mixed = choose(
        FRONT, TWO, ChoiceSpec(rule="utility", weights={"roc_auc": 1.0, "model_bytes": 3.0})
    )
    assert accurate is not None and accurate.trial_id == "A"
    assert small is not None and small.trial_id == "C"
    # B: 0.1 + 3 * 0.111 = 0.433; D: 0.5 + 3 * 0.022 = 0.567; A: 3; C: 1.
    assert mixed is not None and mixed.trial_id == "B"
    assert mixed.score == pytest.approx(0.1 + 3 * 100 / 900, abs=1e-12)


def test_nothing_is_staged_without_a_trade_off() -> None:
    assert choose(FRONT, {"roc_auc": "maximize"}, ChoiceSpec()) is None
    assert choose(FRONT, TWO, ChoiceSpec(rule="none")) is None
    broken = [Point("x", {"roc_auc": float("nan"), "model_bytes": 1.0}), FRONT[0]]
    only = choose(broken, TWO, ChoiceSpec())
    assert only is not None and only.trial_id == "A" and only.size == 1  # NaN is no member


def test_a_trimmed_candidate_list_still_holds_the_choice() -> None:
    choice = choose(FRONT, TWO, ChoiceSpec())
    trimmed = with_choice([FRONT[0], FRONT[3]], FRONT, choice)
    assert [p.trial_id for p in trimmed] == ["A", "B"]
    assert with_choice([FRONT[1]], FRONT, choice) == [FRONT[1]]


def test_the_spec_refuses_a_choice_it_cannot_apply() -> None:
    base = {"name": "s", "optimizer": "random", "objectives": TWO}
    with pytest.raises(SpecError, match="utility' needs a positive weight"):
        StudySpec.parse({**base, "registration": {"choice": {"rule": "utility"}}})
    with pytest.raises(SpecError, match=r"\['latency_ms'\] are not objectives"):
        StudySpec.parse(
            {**base, "registration": {"choice": {"rule": "utility", "weights": {"latency_ms": 1}}}}
        )
    with pytest.raises(SpecError, match="finite number"):
        StudySpec.parse({**base, "registration": {"choice": {"weights": {"roc_auc": -1}}}})
    spec = StudySpec.parse(base)
    assert spec.registration.choice.rule == "knee"


# --- a real study, registered, then loaded by the rollout service's pool --------------------
def write_rows(path: Path, n: int = 700, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
    logit = 1.2 * frame.x0 - 0.8 * frame.x1 + 0.9 * frame.x2 * frame.x3
    frame["converted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return path


def forest_spec(csv: Path, name: str = "staged") -> StudySpec:
    return StudySpec.parse(
        {
            "name": name,
            "data": {
                "source": "file",
                "path": str(csv),
                "target": "converted",
                "timestamp_column": None,
            },
            "model": {
                "family": "random_forest",
                "space": {
                    "n_estimators": {"type": "int", "low": 3, "high": 60, "log": True},
                    "max_depth": {"type": "int", "low": 2, "high": 8},
                },
                "fixed": {"min_samples_leaf": 2},
            },
            "objectives": TWO,
            "optimizer": "random",
            "budget": {"max_trials": 8},
            "q": 1,
            "seed": 4,
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {
                "performance": {"metric": "roc_auc", "floor": 0.55},
                "latency_p95_ms": 1000.0,
                "max_model_bytes": 100_000_000,
            },
            "registration": {"max_candidates": 3},
        }
    )


@pytest.fixture(scope="module")
def study_home(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One data folder and one real study for the module (a study costs tens of seconds)."""
    from tasks.settings import PipelineSettings, get_settings

    home = tmp_path_factory.mktemp("staginghome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BANDITFLOW_HOME", str(home))
        get_settings.cache_clear()
        settings = PipelineSettings(home=home).ensure_dirs()
        spec = forest_spec(write_rows(home / "rows.csv"))
        yield settings, spec
    get_settings.cache_clear()


@pytest.mark.integration
@pytest.mark.slow
def test_the_knee_of_a_real_study_is_staged_and_shadows_until_made_a_challenger(
    prefect_harness: None, study_home: Any
) -> None:
    from mlflow import MlflowClient

    from flows.optimize import optimize
    from flows.register import register
    from rollout.pool import SHADOW, ModelPool

    settings, spec = study_home
    result = optimize(spec, runner="threads")
    assert len(result.pareto) >= 2, [r.values for r in result.pareto]  # a real trade-off
    expected = choose(result.pareto, spec.objectives, spec.registration.choice)
    assert expected is not None

    summary = register(spec.name, spec=spec)
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    aliases = aliases_of(client, spec.name)
    staged = aliases[STAGING]
    version = client.get_model_version(spec.name, staged)
    assert version.tags["banditflow.trial_id"] == expected.trial_id
    # Every tag was written before the alias (set_staging moves it last), and the staged
    # version takes no live alias: the champion is another passing version.
    assert version.tags[TAG_GATES] == "passed" and TAG_SERVING_FLAVOUR in version.tags
    assert version.tags[TAG_ROLE] == STAGING
    assert aliases[CHAMPION] != staged
    assert not any(is_challenger_alias(a) for a, v in aliases.items() if v == staged)
    by_version = {v["version"]: v for v in summary["versions"]}
    assert by_version[staged]["alias"] == STAGING and by_version[staged]["error"] is None
    history = [e for e in read_history(client, spec.name) if e.action == STAGING]
    assert [e.version for e in history] == [staged]
    assert f"trial {expected.trial_id}" in history[0].reason and "knee" in history[0].reason

    pool = ModelPool(
        model_name=spec.name,
        tracking_uri=settings.tracking_uri,
        registry_uri=settings.registry_uri,
        cache_dir=settings.home / "pool-cache",
    )
    assert pool.refresh()
    arm = f"v{staged}"
    snap = pool.snapshot
    assert snap.arms[arm].role == SHADOW and snap.arms[arm].serving
    assert arm in snap.shadows and arm not in snap.rotation  # scored, never answers

    # What the admin route does (rollout/admin.py add_arm): it becomes a challenger.
    alias = add_challenger(client, spec.name, staged, "shadow scores looked right")
    assert pool.refresh()
    assert pool.snapshot.arms[arm].role == alias and arm in pool.snapshot.rotation

    # Registering again changes nothing: the staged version keeps its place.
    again = register(spec.name, spec=spec)
    assert again["registered"][staged] in {alias, f"{alias}, {STAGING}"}


@pytest.mark.integration
@pytest.mark.slow
def test_a_register_step_that_errors_fails_the_flow_run_after_recording_the_rest(
    prefect_harness: None, study_home: Any
) -> None:
    """A third-party gate that crashes on the smaller forests: the run fails, the rest register."""
    from mlflow import MlflowClient

    from flows.register import RegistrationStepFailed, register
    from tasks.gates import Gate, GateCandidate, GateResult, register_gate, unregister_gate
    from tasks.registry import select_trials
    from tasks.staging import choose_for
    from tasks.study import load_study_result

    class TreeDepth(Gate):
        """A buggy extension: it reads tree number ``tree``, which smaller forests lack."""

        name = "tree_depth"
        spec_key = "tree_depth"

        def check(self, candidate: GateCandidate, champion: GateCandidate | None) -> GateResult:
            forest = candidate.model.steps[-1][1]
            depth = forest.estimators_[int(self.config["tree"])].get_depth()
            return GateResult(self.name, True, float(depth), 0.0, ">=", "depth of one tree")

    settings, spec = study_home
    result = load_study_result(spec.name, settings)  # the module's study (the test above)
    trials = with_choice(
        select_trials(spec, result.best, result.pareto, result.top),
        result.pareto,
        choose_for(spec, result.pareto),
    )
    trees = {str(t.trial_id): int(t.params.get("n_estimators", 100)) for t in trials}
    largest = max(trees.values())
    crashing = {t for t, n in trees.items() if n < largest}
    assert crashing, f"every candidate has {largest} trees: the test would prove nothing"

    register_gate(TreeDepth)
    try:
        gates = spec.gates.model_copy(update={"tree_depth": {"tree": largest - 1}})
        state = register(
            spec.name,
            spec=spec.model_copy(update={"gates": gates}),
            model_name="staged-buggy-gate",
            return_state=True,
        )
    finally:
        unregister_gate("tree_depth")
    assert state.is_failed(), state
    with pytest.raises(RegistrationStepFailed, match="run-gates: IndexError"):
        state.result()

    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    versions = {
        mv.tags["banditflow.trial_id"]: mv
        for mv in client.search_model_versions("name='staged-buggy-gate'")
    }
    assert set(versions) == set(trees)  # every candidate was registered and recorded
    held = set(aliases_of(client, "staged-buggy-gate").values())
    for trial, mv in versions.items():
        if trial in crashing:  # its gate run errored: no alias, and its page says so
            assert str(mv.version) not in held
            assert "FAILED error" in (mv.description or "")
        else:
            assert mv.tags[TAG_GATES] == "passed" and str(mv.version) in held
