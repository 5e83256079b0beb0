"""Fixtures for the rollout service: a real MLflow registry with small sklearn models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import MODEL, build_registry, make_settings

__all__ = ["MODEL"]


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One registry for the session (logging models costs seconds); tests copy its DB."""
    folder = tmp_path_factory.mktemp("registry")
    build_registry(folder)
    return folder


@pytest.fixture
def rollout_home(tmp_path: Path, registry_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with its own copy of the registry DB (artifacts are shared, read-only)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    monkeypatch.setenv("BANDITFLOW_HOME", str(home))
    return home


@pytest.fixture
def rollout_settings(rollout_home: Path) -> Any:
    return make_settings(rollout_home)


@pytest.fixture
def client(rollout_settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from rollout.app import create_app

    with TestClient(create_app(rollout_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shared_client(
    registry_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One app per module for tests that only read (bad inputs): saves a model load per test."""
    from fastapi.testclient import TestClient

    from rollout.app import create_app

    home = tmp_path_factory.mktemp("shared-home")
    shutil.copy(registry_template / "mlflow.db", home / "mlflow.db")
    with TestClient(create_app(make_settings(home))) as test_client:
        yield test_client
