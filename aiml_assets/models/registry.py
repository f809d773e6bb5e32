"""Looking up model versions in the MLflow registry: by the Dagster run that registered them, or by alias.

Never "the latest version": a version is found through the run that registered it or through an alias.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiml_assets.resources.safe_artifact import load_model
from aiml_assets.models.training import VERSION_TAG

if TYPE_CHECKING:  # MLflow loads where the registry is used, not with the code location
    from mlflow import MlflowClient
    from mlflow.entities import Run

CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "validation_gate"  # "passed" or "failed", set by the gate on the version it judged
BINARY_TAG = "nexus_model_sha256"  # the model.zip's sha256, set once the version's binary and metadata are in Nexus


class ModelVersionNotFound(LookupError):
    pass


class GateNotPassed(PermissionError):
    pass


def _runs_of(experiment_id: str, dagster_run_id: str, product: str, status: str):
    import mlflow

    return mlflow.search_runs(
        experiment_ids=[experiment_id], output_format="list",
        filter_string=f"tags.dagster_run_id = '{dagster_run_id}' and tags.product = '{product}' "
                      f"and attributes.status = '{status}'",
    )


def _distinct(dagster_run_ids: list[str]) -> list[str]:
    return list(dict.fromkeys(r for r in dagster_run_ids if r))


def version_registered_by(experiment_id: str, dagster_run_ids: list[str], product: str) -> tuple[Run, int]:
    """(MLflow run, version) of the model that the Dagster run, or the run it re-executes (`dagster_run_ids`:
    this run first, then its parent and root), trained for `product`. Only a finished run counts: an attempt that
    failed after registering (a store locked part way) left a version that no gate or publication ever takes."""
    for dagster_run_id in _distinct(dagster_run_ids):
        registered = [r for r in _runs_of(experiment_id, dagster_run_id, product, "FINISHED")
                      if VERSION_TAG in r.data.tags]
        if registered:
            run = max(registered, key=lambda r: r.info.start_time)  # a step retry registers again: the last one
            return run, int(run.data.tags[VERSION_TAG])
    raise ModelVersionNotFound(
        f"no {product} model version was registered by Dagster run {dagster_run_ids[0]} or the run it re-executes; "
        f"materialize models/propensity_model for {product} together with its checks"
    )


def end_abandoned_runs(experiment_id: str, dagster_run_ids: list[str], product: str) -> list[str]:
    """End as FAILED the MLflow runs for `product` that these Dagster runs left RUNNING (an earlier attempt whose
    process died, or whose store was still locked when MLflow tried to end the run); their ids. A Dagster run
    trains a product in one step at a time, so none of them is still being written to."""
    from mlflow import MlflowClient

    client = MlflowClient()
    abandoned = [run.info.run_id for dagster_run_id in _distinct(dagster_run_ids)
                 for run in _runs_of(experiment_id, dagster_run_id, product, "RUNNING")]
    for run_id in abandoned:
        client.set_terminated(run_id, "FAILED")
    return abandoned


# What the registry answers when the model or the alias does not exist; anything else (permissions, outages) is
# an error, never "no champion": the gate must not skip its champion comparison because the registry was down.
_ABSENT = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _ABSENT:
            return None
        raise


def load(name: str, version: int):
    """The registered version's model, deserialized trusting only our fixed skops types (never the artifact's)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="aiml_load_") as tmp:
        model_dir = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        return load_model(Path(model_dir), f"{name} version {version}")
