"""Per flow, what a failure means for the Prefect run (the register flow's case is in
tests/tasks/test_staging.py: a gate run that errors fails the run).

optimize: a failed trial is not a failed step. The run completes, its result counts the
failed trials, and an artifact of the run names each one and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_rows(path: Path, n: int = 400, seed: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-1.5 * frame.x1))).astype(int)
    frame.to_csv(path, index=False)
    return path


def test_failed_trials_complete_the_optimize_run_and_are_named_in_an_artifact(
    prefect_harness: None, settings: Any, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.optimize import optimize
    from tasks.spec import StudySpec
    from tasks.study_report import artifact_key

    spec = StudySpec.parse(
        {
            "name": "some-fail",
            "data": {
                "source": "file",
                "path": str(write_rows(tmp_path / "rows.csv")),
                "target": "y",
                "timestamp_column": None,
            },
            "model": {
                "family": "logistic_regression",
                # "none" is no penalty the family knows: those trials raise when built.
                "space": {"penalty": {"type": "categorical", "choices": ["l2", "none"]}},
            },
            "optimizer": "random",
            "budget": {"max_trials": 8},
            "q": 1,
            "seed": 1,
            "evaluation": {"folds": 2, "latency_calls": 10},
            "gates": {"performance": None},
        }
    )
    state = optimize(spec, runner="threads", return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result.n_failed >= 1 and result.n_completed >= 1, result
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("some-fail-failed-trials")])
            )
        )
    assert found, "no artifact names the failed trials"
    text = str(found[0].data)
    assert f"{result.n_failed} of {result.n_trials} trials" in text
    assert "penalty must be l2, l1 or elasticnet" in text
