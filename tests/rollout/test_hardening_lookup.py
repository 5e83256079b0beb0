"""Entity lookups against a real Feast store built by the project's own tasks (issue 14)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rollout.errors import EntityLookupError
from rollout.lookup import EntityLookup
from rollout.settings import PROJECT_ROOT, RolloutSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feast_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.datagen import GeneratorConfig, generate
    from tasks.features import apply_repository
    from tasks.ingest import materialize_incremental
    from tasks.settings import PipelineSettings

    settings = PipelineSettings(home=tmp_path_factory.mktemp("feast-home")).ensure_dirs()
    generate(GeneratorConfig(seed=3, n_customers=40, rows=400, days=10), settings.data_dir)
    apply_repository(settings)
    materialize_incremental(settings=settings)
    return settings.home


def lookup_of(home: Path) -> tuple[EntityLookup, RolloutSettings]:
    settings = RolloutSettings(home=home)
    assert settings.feast_repo_path == PROJECT_ROOT / "feature_repo"  # the default, applied
    return EntityLookup(settings.feast_repo_path, "", home=home), settings


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_defaults_find_the_project_repo_and_its_feature_service(feast_home: Path) -> None:
    lookup, _ = lookup_of(feast_home)
    _store, service = lookup.open()
    assert service.name == "conversion_model_v1"
    lo, hi, n = lookup.id_ranges["customer_id"]
    assert lo == 100001 and n == 40 and hi >= lo


def test_an_entity_resolves_and_an_unknown_id_names_the_ids_that_exist(feast_home: Path) -> None:
    lookup, _ = lookup_of(feast_home)

    async def both() -> tuple[dict[str, Any], str]:
        lookup.start_opening()  # at start-up, off the request path
        found = await lookup.features({"customer_id": 100001}, None)
        with pytest.raises(EntityLookupError) as info:
            await lookup.features({"customer_id": 42}, ["region", "tenure_days"])
        return found, info.value.message

    found, message = run(both())
    assert found["region"] in {"north", "south", "east", "west"}
    assert "100001" in message and "42" in message


def test_a_requests_rows_are_read_in_one_call_with_each_rows_own_answer(feast_home: Path) -> None:
    lookup, _ = lookup_of(feast_home)
    names = ["region", "tenure_days", "sessions_7d"]
    ids = [100003, 100001, 100003, 100007]
    calls: list[int] = []
    store, service = lookup.open()
    real = store.get_online_features

    def counted(**kwargs: Any) -> Any:
        calls.append(len(kwargs["entity_rows"]))
        return real(**kwargs)

    store.get_online_features = counted
    try:
        together = run(lookup.features_many([{"customer_id": i} for i in ids], names))
        assert calls == [4]  # one call for the request's four rows
        alone = [run(lookup.features({"customer_id": i}, names)) for i in ids]
        assert together == alone and together[0] == together[2]
        # A row the store does not know: the rows are read one by one and the error names it.
        with pytest.raises(EntityLookupError, match="42"):
            run(lookup.features_many([{"customer_id": 100001}, {"customer_id": 42}], names))
        # Rows with other keys cannot share one call: each is read alone.
        calls.clear()
        with pytest.raises(EntityLookupError):
            run(lookup.features_many([{"customer_id": 100001}, {"user": "x"}], names))
        assert calls == [1, 1]
    finally:
        store.get_online_features = real


def test_null_online_features_come_back_as_nulls_not_an_error(feast_home: Path) -> None:
    lookup, _ = lookup_of(feast_home)
    # A known entity and a feature the views do not hold: None, as the same null inline.
    features = run(lookup.features({"customer_id": 100002}, ["region", "not_a_feature"]))
    assert features["not_a_feature"] is None and features["region"] is not None


def test_without_an_applied_repo_there_is_no_default(tmp_path: Path) -> None:
    assert RolloutSettings(home=tmp_path).feast_repo_path is None
