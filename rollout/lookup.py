"""Entity lookups: resolve an entity key to features through the Feast online store.

Feast is imported only here, and only when lookups are configured (importing it takes ~10 s):
the store opens at start-up in a worker thread, never on a request. By default the repo is
the project's ``feature_repo/`` once it has been applied under the data folder, and the
feature service is the one that repo defines.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rollout.errors import EntityLookupError

_log = logging.getLogger(__name__)


class EntityLookup:
    """One Feast store and feature service, opened once, read off the event loop."""

    def __init__(self, repo: Path | None, feature_service: str, *, home: Path) -> None:
        self.repo = repo
        self.feature_service = feature_service
        self.home = home
        self._opened: tuple[Any, Any] | None = None
        self._opening: asyncio.Task[Any] | None = None
        self.id_ranges: dict[str, tuple[int, int, int]] = {}  # join key -> (min, max, count)
        self.error: str | None = None

    @property
    def configured(self) -> bool:
        return self.repo is not None

    @property
    def ready(self) -> bool:
        return self._opened is not None

    def start_opening(self) -> None:
        """Open the store in a worker thread now, so the first lookup does not wait ~10 s."""
        if self.configured and self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(asyncio.to_thread(self.open))

    def open(self) -> tuple[Any, Any]:
        """Open the store and the feature service (blocking: call it from a thread)."""
        if self._opened is not None:
            return self._opened
        try:
            # feature_store.yaml puts every path under ${BANDITFLOW_HOME}.
            os.environ.setdefault("BANDITFLOW_HOME", str(self.home))
            from feast import FeatureStore  # lazy: importing Feast takes ~10 s

            store = FeatureStore(repo_path=str(self.repo))
            service = store.get_feature_service(self._service_name(store))
        except EntityLookupError as exc:
            self.error = exc.message
            raise
        except Exception as exc:
            self.error = f"cannot open the Feast repo {self.repo} ({type(exc).__name__}: {exc})"
            raise EntityLookupError(self.error[:300]) from exc
        self.id_ranges = _id_ranges(store, service)
        self._opened = store, service
        self.error = None
        return self._opened

    def _service_name(self, store: Any) -> str:
        if self.feature_service:
            return self.feature_service
        names = sorted(fs.name for fs in store.list_feature_services())
        if len(names) != 1:
            raise EntityLookupError(
                f"the Feast repo {self.repo} defines {len(names)} feature services "
                f"({', '.join(names) or 'none'}): set BANDITFLOW_FEAST_FEATURE_SERVICE"
            )
        return names[0]

    async def features(
        self, entity: Mapping[str, Any] | None, names: Sequence[str] | None
    ) -> dict[str, Any]:
        """Return the online features of ``entity`` (``names``: the columns the model reads).

        A feature that is null online is None, as the same null sent inline would be; an
        entity the store does not know is refused with the ids it does know.
        """
        return (await self.features_many([entity], names))[0]

    async def features_many(
        self, entities: Sequence[Mapping[str, Any] | None], names: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """Return the online features of each entity, read in one call to the store.

        One ``get_online_features`` (and one thread hop) per request, not per row: each
        call has its fixed cost, and the demo's 10-row requests paid it ten times. Rows
        whose keys differ, or a batch the store refuses, are read one by one, so the error
        names the row that caused it.
        """
        store, service = await self._store()
        rows = [dict(e or {}) for e in entities]

        def lookup(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            result = store.get_online_features(features=service, entity_rows=batch).to_dict()
            return [{k.split("__")[-1]: v[i] for k, v in result.items()} for i in range(len(batch))]

        values: list[dict[str, Any]] | None = None
        if len(rows) > 1 and len({tuple(sorted(r)) for r in rows}) == 1:
            try:
                values = await asyncio.to_thread(lookup, rows)
            except Exception:  # noqa: BLE001 - read one by one below: the error names the row
                values = None
        if values is None:
            values = []
            for row in rows:
                try:
                    values += await asyncio.to_thread(lookup, [row])
                except Exception as exc:
                    text = f"the entity {row} cannot be looked up ({exc})"
                    raise EntityLookupError(text[:300]) from exc
        return [self._wanted(row, found, names) for row, found in zip(rows, values, strict=True)]

    async def _store(self) -> tuple[Any, Any]:
        if not self.configured:
            raise EntityLookupError(
                "entity lookups are not configured: set BANDITFLOW_FEAST_REPO (and "
                "BANDITFLOW_FEAST_FEATURE_SERVICE if the repo has several), or send "
                "'features' inline"
            )
        if self._opened is None:
            if self._opening is None:
                self.start_opening()
            assert self._opening is not None
            try:
                await asyncio.shield(self._opening)
            except EntityLookupError:
                self._opening = None  # try again on the next lookup
                raise
        assert self._opened is not None
        return self._opened

    def _wanted(
        self, row: dict[str, Any], values: dict[str, Any], names: Sequence[str] | None
    ) -> dict[str, Any]:
        wanted = list(names) if names is not None else [k for k in values if k not in row]
        features = {n: values.get(n) for n in wanted}
        if wanted and all(v is None for v in features.values()) and not self._known(row):
            raise EntityLookupError(f"entity {row} is not in the online store; {self._ids_text()}")
        return features

    def _known(self, row: Mapping[str, Any]) -> bool:
        """Whether every key of ``row`` lies in the range of ids the store holds."""
        for key, value in row.items():
            span = self.id_ranges.get(key)
            if span is None or not isinstance(value, int) or not span[0] <= value <= span[1]:
                return False
        return bool(row)

    def _ids_text(self) -> str:
        if not self.id_ranges:
            return "check the id (and that the views were materialized)"
        return "; ".join(
            f"{key} runs from {lo} to {hi} ({n} ids)" for key, (lo, hi, n) in self.id_ranges.items()
        )


def _id_ranges(store: Any, service: Any) -> dict[str, tuple[int, int, int]]:
    """The ids each join key takes in the views' offline sources (best effort, at open)."""
    import pandas as pd

    ranges: dict[str, tuple[int, int, int]] = {}
    for projection in service.feature_view_projections:
        try:
            view = store.get_feature_view(projection.name)
            path = getattr(view.batch_source, "path", None)
            for key in view.join_keys:
                if path is None or key in ranges:
                    continue
                ids = pd.read_parquet(path, columns=[key])[key].drop_duplicates()
                ranges[key] = (int(ids.min()), int(ids.max()), len(ids))
        except Exception as exc:  # a view without a parquet source: no range to quote
            _log.info("no id range for %s: %s", projection.name, exc)
    return ranges
