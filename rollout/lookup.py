"""Entity lookups: resolve an entity key to features through the Feast online store.

Feast is imported only here, and only when lookups are configured (importing it takes ~10 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout.errors import EntityLookupError


class EntityLookup:
    """One Feast store and feature service, opened once, read off the event loop."""

    def __init__(self, repo: Path | None, feature_service: str) -> None:
        self.repo = repo
        self.feature_service = feature_service
        self._opened: Any = None

    @property
    def configured(self) -> bool:
        return self.repo is not None and bool(self.feature_service)

    def open(self) -> Any:
        """Open the store and the feature service (blocking: call it from a thread)."""
        if self._opened is None:
            from feast import FeatureStore  # lazy: importing Feast takes ~10 s

            store = FeatureStore(repo_path=str(self.repo))
            self._opened = store, store.get_feature_service(self.feature_service)
        return self._opened

    async def features(
        self, entity: Mapping[str, Any] | None, names: Sequence[str] | None
    ) -> dict[str, Any]:
        """Return the online features of ``entity`` (``names``: the columns the model reads)."""
        if not self.configured:
            raise EntityLookupError(
                "entity lookups are not configured: set BANDITFLOW_FEAST_REPO and "
                "BANDITFLOW_FEAST_FEATURE_SERVICE, or send 'features' inline"
            )
        store, service = self._opened or await asyncio.to_thread(self.open)

        def lookup() -> dict[str, Any]:
            result = store.get_online_features(features=service, entity_rows=[dict(entity or {})])
            return {k.split("__")[-1]: v[0] for k, v in result.to_dict().items()}

        values = await asyncio.to_thread(lookup)
        wanted = list(names) if names is not None else list(values)
        features = {n: values.get(n) for n in wanted}
        missing = [n for n, v in features.items() if v is None]
        if missing and names is not None:
            raise EntityLookupError(
                f"entity {dict(entity or {})} has no online values for {', '.join(missing)}",
                missing=missing,
            )
        return features
