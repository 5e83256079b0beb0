"""Stages on real runs: feature selection -> HPO -> compression through the optimize flow.

No stubs: a real Prefect test API, MLflow on SQLite in a temp folder, scikit-learn fits.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data import split_study_data
from tasks.spec import StudySpec

INFORMATIVE = ["x1", "x2", "colour"]


def stage_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """Three informative columns, four noise columns and ``leak``.

    ``leak`` is the label (as -1/+1, plus a little noise) on the latest 20 % of rows, the
    hold-out part of a time-stamped study, and small noise on the training part: only a
    selection that looked at the hold-out would keep it.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    for i in range(4):
        frame[f"noise{i}"] = rng.normal(size=n)
    signal = 1.5 * frame.x1 + 0.8 * frame.x2 + 0.9 * (frame.colour == "red")
    frame["y"] = (signal + rng.normal(0, 0.7, n) > 0.4).astype(int)
    frame["event_timestamp"] = pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC")
    late = np.arange(n) >= n - int(round(n * 0.2))
    frame["leak"] = np.where(late, 2 * frame.y - 1, 0) + rng.normal(0, 0.05, n)
    return frame


def stage_spec(path: Path, name: str = "stages", **stages) -> StudySpec:
    return StudySpec.parse(
        {
            "name": name,
            "data": {"source": "file", "path": str(path), "target": "y"},
            "model": {"family": "logistic_regression"},
            "optimizer": "random",
            "budget": {"max_trials": 4},
            "q": 2,
            "evaluation": {"folds": 3, "latency_calls": 10, "test_fraction": 0.2},
            "gates": {"performance": None},
            "stages": stages or {"feature_selection": {"folds": 3, "repeats": 3}},
        }
    )


def test_selection_keeps_the_informative_columns_and_never_sees_the_holdout(tmp_path):
    from tasks.selection import select_features

    frame = stage_frame()
    spec = stage_spec(tmp_path / "unused.csv")
    data = split_study_data(frame, spec)
    assert "leak" in data.X_test.columns and data.X_test["leak"].corr(data.y_test) > 0.9
    result = select_features(spec, data)
    assert set(result.features) == set(INFORMATIVE), result.to_markdown()
    assert "leak" not in result.features
    assert result.rows_used == len(data.y_train)
    # The same selection given the hold-out rows as well keeps the leak: the assertions
    # above fail if selection peeks at the hold-out.
    peeking = replace(
        data,
        X_train=pd.concat([data.X_train, data.X_test], ignore_index=True),
        y_train=pd.concat([data.y_train, data.y_test], ignore_index=True),
    )
    assert "leak" in select_features(spec, peeking).features


def test_the_number_of_features_as_an_objective_is_chosen_on_the_pareto_set(tmp_path):
    from tasks.selection import select_features

    frame = stage_frame(seed=1)
    spec = stage_spec(
        tmp_path / "unused.csv",
        feature_selection={"folds": 3, "repeats": 2, "objective": True, "k_grid": [1, 2, 3, 8]},
    )
    result = select_features(spec, split_study_data(frame, spec))
    assert [s.k for s in result.curve] == [1, 2, 3, 8]
    assert result.rule == "knee" and result.k in result.pareto
    by_k = {s.k: s.mean for s in result.curve}
    # The front over (roc_auc up, n_features down): each larger k on it scores higher.
    front = sorted(result.pareto)
    assert all(by_k[a] < by_k[b] for a, b in zip(front, front[1:], strict=False))
    assert 1 in front and result.k > 1  # one column is far worse: the knee keeps more
    assert result.features == result.ranking[: result.k]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1800)  # the Prefect test API alone took 7 min to start on a loaded machine
def test_a_spec_with_all_three_stages_runs_through_the_flow_and_registers_the_kept_columns(
    prefect_harness, settings, tmp_path
) -> None:
    import mlflow

    from contract import TAG_KIND, TAG_ROLE
    from flows.optimize import optimize
    from flows.register import register
    from tasks.study_record import child_runs
    from tasks.tracking import configure_mlflow

    path = tmp_path / "stages.csv"
    stage_frame().to_csv(path, index=False)
    spec = StudySpec.parse(
        {
            **stage_spec(path, name="three-stages").model_dump(mode="json"),
            "model": {
                "family": "random_forest",
                "fixed": {"n_estimators": 24},
                "space": {"max_depth": {"type": "int", "low": 2, "high": 8}},
            },
            "registration": {"convert_onnx": False, "max_candidates": 1},
            "stages": {
                "feature_selection": {"folds": 3, "repeats": 2, "k_grid": [2, 3, 4, 8]},
                "hpo": {},
                "compression": {"tolerance": 0.02, "refit_leaves": False},
            },
        }
    )
    state = optimize(spec, runner="threads", return_state=True)
    result = state.result()
    assert result.n_completed == 4

    client = configure_mlflow(settings)
    runs = child_runs(client, result.experiment_id, result.parent_run_id)
    stages = {r.data.tags[TAG_KIND]: r for r in runs if r.data.tags.get(TAG_ROLE) == "stage"}
    assert set(stages) == {"feature_selection", "hpo", "compression"}
    assert sum(r.data.tags.get(TAG_ROLE) == "trial" for r in runs) == 4
    selection = stages["feature_selection"]
    kept = selection.data.params["selected"].split(",")
    # An untuned forest is noisier than the logistic model above: a noise column may stay.
    assert set(INFORMATIVE) <= set(kept) and "leak" not in kept and len(kept) <= 5, kept
    assert selection.data.metrics["n_features"] == len(kept)
    assert selection.data.metrics["n_columns"] == 8
    assert stages["hpo"].data.metrics["n_features"] == len(kept)
    compression = stages["compression"].data
    assert compression.metrics["n_variants"] >= 3  # uncompressed + fewer-trees variants
    assert compression.tags["banditflow.compression_choice"] != "-"
    artifacts = {a.path for a in client.list_artifacts(stages["compression"].info.run_id)}
    assert {"compression.md", "compression.json"} <= artifacts

    # Prefect shows each stage as a task of the flow run.
    names = _task_run_names(state.state_details.flow_run_id)
    for task in ("stage-feature-selection", "stage-hpo", "stage-compression"):
        assert any(n.startswith(task) for n in names), names

    # Registration reads the logged spec: each model's signature lists the kept columns only.
    summary = register("three-stages")
    for entry in summary["versions"]:
        info = mlflow.models.get_model_info(f"models:/three-stages/{entry['version']}")
        assert sorted(info.signature.inputs.input_names()) == sorted(kept)
    # The compression stage's best trade-off is registered and staged (a fewer-trees forest
    # refit from its parameters), beside the best trial as the first champion.
    candidate, variant = compression.tags["banditflow.compression_choice"].split("/")
    aliases = {v["trial_id"]: v["alias"] for v in summary["versions"]}
    if variant != "uncompressed":
        assert aliases[f"{candidate}-{variant}"] == "staging", aliases
        assert "champion" in aliases.values(), aliases


def _task_run_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name for r in runs}


def _mlp_spec(path: Path, name: str) -> StudySpec:
    """An MLP (matrix products to quantize) whose choice weighs bytes only: quantized wins."""
    return StudySpec.parse(
        {
            **stage_spec(path, name=name).model_dump(mode="json"),
            # No selection stage here: drop the column that is the label on the hold-out
            # only (an MLP fit with it scores 0.12 ROC AUC there).
            "data": {"source": "file", "path": str(path), "target": "y", "drop_columns": ["leak"]},
            "model": {
                "family": "mlp",
                "fixed": {"hidden_units": 64, "max_iter": 300},
                "space": {"alpha": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            },
            "objectives": {"roc_auc": "maximize", "model_bytes": "minimize"},
            "budget": {"max_trials": 2},
            "gates": {"performance": {"metric": "roc_auc", "floor": 0.6}},
            "registration": {
                "max_candidates": 1,
                "choice": {"rule": "utility", "weights": {"model_bytes": 1}},
            },
            "stages": {"hpo": {}, "compression": {"tolerance": 0.02}},
        }
    )


def test_a_quantized_graph_outside_the_tolerance_is_refused(tmp_path):
    """The register step checks the quantized graph again on the gates' hold-out."""
    from tasks.gates import holdout_from
    from tasks.models import build_model
    from tasks.quantized import QuantizationRefused, quantized_flavour

    spec = _mlp_spec(tmp_path / "unused.csv", "refused")
    data = split_study_data(stage_frame(), spec)
    model = build_model(
        "mlp",
        {"hidden_units": 64, "max_iter": 300},
        task="binary",
        feature_types=data.feature_types,
        seed=0,
    )
    model.fit(data.X_train, data.y_train)
    holdout = holdout_from(data, spec.gates)
    kept = quantized_flavour(
        model, holdout, task="binary", metric="roc_auc", direction="maximize", tolerance=0.02
    )
    assert kept.name == "onnx" and kept.onnx_bytes is not None
    with pytest.raises(QuantizationRefused, match="tolerance"):
        # No graph loses less than nothing and gains nothing: a negative tolerance refuses.
        quantized_flavour(
            model, holdout, task="binary", metric="roc_auc", direction="maximize", tolerance=-1.0
        )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_quantized_choice_is_registered_gated_and_staged_as_its_quantized_graph(
    prefect_harness, settings, tmp_path
) -> None:
    """What serves is what was chosen: the staged version's ONNX file is the quantized one."""
    import json

    import mlflow
    import onnx

    from contract import STAGING, TAG_GATES, TAG_ONNX_URI, TAG_SERVING_FLAVOUR
    from flows.optimize import optimize
    from flows.register import register
    from tasks.quantized import TAG_COMPRESSION
    from tasks.registry import aliases_of
    from tasks.stages import COMPRESSION, find_stage_run
    from tasks.tracking import configure_mlflow

    path = tmp_path / "mlp.csv"
    stage_frame().to_csv(path, index=False)
    spec = _mlp_spec(path, "quantized-choice")
    result = optimize(spec, runner="threads")
    client = configure_mlflow(settings)
    run = find_stage_run(client, result.experiment_id, result.parent_run_id, COMPRESSION)
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/compression.json"))
    candidate, variant = summary["chosen"].split("/")
    assert variant == "quantized", summary["variants"]  # the bytes-only utility's pick
    chosen = next(
        r for r in summary["variants"] if r["candidate"] == candidate and r["name"] == variant
    )

    registered = register(spec.name, spec=spec)
    by_trial = {v["trial_id"]: v for v in registered["versions"]}
    entry = by_trial[f"{candidate}-quantized"]
    assert entry["alias"] == STAGING and entry["error"] is None, entry
    assert aliases_of(client, spec.name)[STAGING] == entry["version"]
    tags = client.get_model_version(spec.name, entry["version"]).tags
    assert tags[TAG_GATES] == "passed" and tags[TAG_SERVING_FLAVOUR] == "onnx"
    assert tags[TAG_COMPRESSION] == "quantized"
    local = mlflow.artifacts.download_artifacts(tags[TAG_ONNX_URI], dst_path=str(tmp_path / "q"))
    graph = Path(local).read_bytes()
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops, ops
    # The seeded refit quantizes to the graph the stage measured, byte for byte in size.
    assert len(graph) == chosen["size_bytes"]
    # The float graph of the same trial, registered beside it, is bigger.
    if candidate in by_trial and by_trial[candidate]["serving_flavour"] == "onnx":
        float_tags = client.get_model_version(spec.name, by_trial[candidate]["version"]).tags
        float_path = mlflow.artifacts.download_artifacts(
            float_tags[TAG_ONNX_URI], dst_path=str(tmp_path / "f")
        )
        assert Path(float_path).stat().st_size > len(graph)


def _resume_spec(path: Path, max_trials: int, tolerance: float) -> StudySpec:
    """A forest study with hpo + compression whose budget and tolerance change on resume."""
    return StudySpec.parse(
        {
            **stage_spec(path, name="stages-resumed").model_dump(mode="json"),
            "data": {"source": "file", "path": str(path), "target": "y", "drop_columns": ["leak"]},
            "model": {
                "family": "random_forest",
                "fixed": {"n_estimators": 16},
                "space": {
                    "max_depth": {"type": "int", "low": 1, "high": 8},
                    "min_samples_leaf": {"type": "int", "low": 1, "high": 40},
                },
            },
            "objectives": {"roc_auc": "maximize"},
            "budget": {"max_trials": max_trials},
            "registration": {"convert_onnx": False, "max_candidates": 1},
            "stages": {"hpo": {}, "compression": {"tolerance": tolerance, "refit_leaves": False}},
        }
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_resumed_stage_study_logs_the_final_result_as_its_stage_runs(
    prefect_harness, settings, tmp_path
) -> None:
    """Stopped by its budget, resumed with a larger one and another tolerance: the stage
    runs under the parent are the resumed study's result; the first run's are kept, marked.

    A study killed during its trials has no hpo or compression run yet (they are logged
    after the trials): the runs a resume finds are those of a run that ended, e.g. on its
    budget, the way the flow resumes a study with ``--trials`` raised.
    """
    import json

    import mlflow

    from contract import TAG_KIND, TAG_ROLE
    from flows.optimize import optimize
    from tasks.stage_runs import SUPERSEDED_ROLE, TAG_SUPERSEDED_BY, TAG_SUPERSEDES
    from tasks.stages import COMPRESSION, HPO, find_stage_run, with_compression_choice
    from tasks.study_record import child_runs
    from tasks.tracking import configure_mlflow

    path = tmp_path / "resume.csv"
    stage_frame().to_csv(path, index=False)
    first = optimize(_resume_spec(path, 2, 0.02), runner="threads")
    client = configure_mlflow(settings)

    def current(kind: str):
        return find_stage_run(client, first.experiment_id, first.parent_run_id, kind)

    old = {kind: current(kind).info.run_id for kind in (HPO, COMPRESSION)}
    assert current(HPO).data.metrics["n_trials"] == 2

    result = optimize(_resume_spec(path, 5, 0.05), runner="threads")
    assert result.resumed and result.parent_run_id == first.parent_run_id
    assert result.n_trials == 5 and result.best is not None and first.best is not None
    # The premise: the resumed trials found another best, so compression had another input.
    assert result.best.trial_id != first.best.trial_id, (first.best, result.best)

    hpo = current(HPO)
    metrics, params = hpo.data.metrics, hpo.data.params
    assert metrics["n_trials"] == result.n_trials == 5
    assert metrics["n_completed"] == result.n_completed
    assert metrics["n_pruned"] == result.n_pruned and metrics["n_failed"] == result.n_failed
    assert metrics["best_roc_auc"] == pytest.approx(result.best.values["roc_auc"], abs=0)
    assert metrics["cpu_seconds"] == pytest.approx(result.cpu_seconds)
    assert params["max_trials"] == "5" and params["stop_reason"] == result.stop_reason

    compression = current(COMPRESSION)
    uri = f"runs:/{compression.info.run_id}/compression.json"
    summary = json.loads(mlflow.artifacts.load_text(uri))
    assert compression.data.params["tolerance"] == "0.05" and summary["tolerance"] == 0.05
    assert {r["candidate"] for r in summary["variants"]} == {str(result.best.trial_id)}
    assert compression.data.metrics == pytest.approx(summary["metrics"], nan_ok=True)
    assert compression.data.tags["banditflow.compression_choice"] == (summary["chosen"] or "-")
    # What registration stages is the resumed study's compression choice.
    _, staged = with_compression_choice([], None, result.parent_run_id, settings)
    assert staged.trial_id.split("-")[0] == str(result.best.trial_id), staged

    # One current run per stage; the first run's are kept beside them, marked superseded.
    runs = {r.info.run_id: r for r in child_runs(client, first.experiment_id, first.parent_run_id)}
    stages = [r for r in runs.values() if r.data.tags.get(TAG_ROLE) == "stage"]
    assert sorted(r.data.tags[TAG_KIND] for r in stages) == [COMPRESSION, HPO]
    for kind, new in ((HPO, hpo), (COMPRESSION, compression)):
        tags = runs[old[kind]].data.tags
        assert tags[TAG_ROLE] == SUPERSEDED_ROLE and tags[TAG_SUPERSEDED_BY] == new.info.run_id
        assert new.data.tags[TAG_SUPERSEDES] == old[kind]
        assert runs[old[kind]].info.status == "FINISHED"

    # Run again with the budget spent: the hpo stage finds what it logged and keeps its run.
    again = optimize(_resume_spec(path, 5, 0.05), runner="threads")
    assert again.resumed and again.n_trials == 5
    assert current(HPO).info.run_id == hpo.info.run_id
