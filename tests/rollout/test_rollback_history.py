"""Rollback walks back as many levels of champion history as the registry holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract import CHAMPION, PREVIOUS_CHAMPION, NoChampionToRestore, aliases_of, promote
from contract.registry import rollback


def test_rollbacks_walk_back_three_levels_and_skip_rolled_back_versions(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    versions = [
        str(client.create_model_version("m", source=str(tmp_path / f"v{i}")).version)
        for i in range(4)
    ]
    v0, v1, v2, v3 = versions
    for v in versions:
        promote(client, "m", v, f"promote {v}")
    assert aliases_of(client, "m") == {CHAMPION: v3, PREVIOUS_CHAMPION: v2}

    assert rollback(client, "m", "v3 fails")["champion"] == v2
    assert aliases_of(client, "m") == {CHAMPION: v2, PREVIOUS_CHAMPION: v1}
    assert rollback(client, "m", "v2 is worse")["champion"] == v1
    assert aliases_of(client, "m") == {CHAMPION: v1, PREVIOUS_CHAMPION: v0}
    # A promotion after rollbacks: the rolled-back v2 and v3 are never restored again.
    promote(client, "m", v3, "fixed and promoted again")
    assert rollback(client, "m", "still failing")["champion"] == v1
    assert aliases_of(client, "m") == {CHAMPION: v1, PREVIOUS_CHAMPION: v0}
    assert rollback(client, "m", "back to the first")["champion"] == v0
    assert aliases_of(client, "m") == {CHAMPION: v0}
    with pytest.raises(NoChampionToRestore):
        rollback(client, "m", "nothing older")
