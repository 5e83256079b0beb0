"""A model family declared by a package, not registered on import: found by its entry point."""

from __future__ import annotations

from typing import Any

from tasks.models import ALL_TASKS, ModelFamily


def build(params: dict[str, Any], task: str, seed: int) -> Any:
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor

    cls = ExtraTreesRegressor if task == "regression" else ExtraTreesClassifier
    return cls(
        n_estimators=int(params.pop("n_estimators", 50)), random_state=seed, n_jobs=1, **params
    )


EXTRA_TREES = ModelFamily(
    name="extra_trees",
    builder=build,
    default_space={"n_estimators": {"type": "int", "low": 10, "high": 200, "log": True}},
    tasks=ALL_TASKS,
    preprocessing="tree",
)
