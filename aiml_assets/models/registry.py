"""Looking up model versions in the MLflow registry: by the Dagster run that registered them, or by alias.

Never "the latest version": a version is found through the run that registered it or through an alias.
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aiml_assets.models.training import VERSION_TAG

CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "validation_gate"  # "passed" or "failed", set by the gate on the version it judged


class ModelVersionNotFound(LookupError):
    pass


def version_registered_by(experiment_id: str, dagster_run_id: str, product: str) -> tuple[str, int]:
    """(MLflow run id, version) of the model that Dagster run `dagster_run_id` trained for `product`."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], output_format="list",
        filter_string=f"tags.dagster_run_id = '{dagster_run_id}' and tags.product = '{product}'",
    )
    registered = [r for r in runs if VERSION_TAG in r.data.tags]
    if not registered:
        raise ModelVersionNotFound(
            f"no {product} model version was registered by Dagster run {dagster_run_id}; materialize "
            f"models/propensity_model for {product} together with its checks"
        )
    run = max(registered, key=lambda r: r.info.start_time)
    return run.info.run_id, int(run.data.tags[VERSION_TAG])


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load(name: str, version: int):
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")
