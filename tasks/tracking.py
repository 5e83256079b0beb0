"""MLflow set-up from settings: tracking and registry URIs, experiments with an artifact root."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contract import EXPERIMENT_KIND_CLASSIC_ML, MLFLOW_EXPERIMENT_KIND_TAG
from tasks.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient


def configure_mlflow(settings: PipelineSettings | None = None) -> MlflowClient:
    """Point MLflow at the settings' stores and return a client for them."""
    import mlflow

    settings = (settings or get_settings()).ensure_dirs()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return mlflow.MlflowClient(settings.tracking_uri, settings.registry_uri)


def ensure_experiment(name: str, settings: PipelineSettings | None = None) -> str:
    """Return the id of experiment ``name``, creating it with the settings' artifact root."""
    settings = settings or get_settings()
    client = configure_mlflow(settings)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if (existing.tags or {}).get(MLFLOW_EXPERIMENT_KIND_TAG) is None:
            client.set_experiment_tag(
                existing.experiment_id, MLFLOW_EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_CLASSIC_ML
            )
        return str(existing.experiment_id)
    # Tagged as a classic ML experiment, so the MLflow UI opens its runs table, not GenAI.
    kind = {MLFLOW_EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_CLASSIC_ML}
    return str(client.create_experiment(name, artifact_location=settings.artifact_root, tags=kind))


def input_example(frame: pd.DataFrame) -> pd.DataFrame:
    """Return five rows to log as the input example, integer columns as doubles.

    A request with a missing value (NaN) must still match the signature (MLflow's own
    advice); sklearn predicts the same on either.
    """
    import pandas as pd

    example = frame.head(5).copy()
    for column in example.columns:
        if pd.api.types.is_integer_dtype(example[column]):
            example[column] = example[column].astype("float64")
    return example
