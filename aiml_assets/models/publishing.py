"""Publishing a gated version to Nexus from the family step, and retrying what a blip can fail.

Transient: a locked MLflow store (each attempt has already waited out SQLite's 20 s busy timeout) and Nexus
unreachable; a product's step part is tried again after them, a few times. Anything else (a refused binary, a
version the gate did not pass) is the same on every attempt and fails the product at once.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from dagster import MetadataValue

from aiml_assets.models import registry
from aiml_assets.models.binary import fetch_metadata, nexus_paths, publish_model, version_metadata
from aiml_assets.models.registry import BINARY_TAG, CHALLENGER, GATE_TAG
from aiml_assets.resources.nexus import NexusRepository, NexusUnavailable
from aiml_assets.resources.tracking import MlflowResource, MlflowStoreUnavailable

TRANSIENT = (MlflowStoreUnavailable, NexusUnavailable)
RETRIES, FIRST_DELAY_SECONDS = 2, 2.0  # then 4 s: the delays double


class Attempts:
    """Runs one part of a product's work, again after a transient error; remembers the errors it retried."""

    def __init__(self, mlflow: MlflowResource, log, doing: str):
        self.mlflow, self.log, self.doing = mlflow, log, doing
        self.retried: list[str] = []

    def run(self, work):
        for attempt in range(RETRIES + 1):
            try:
                with self.mlflow.unavailable_named(self.doing):
                    return work()
            except TRANSIENT as exc:
                if attempt == RETRIES:
                    raise type(exc)(f"{exc} (tried {RETRIES + 1} times)") from exc
                delay = FIRST_DELAY_SECONDS * 2 ** attempt
                self.retried.append(str(exc))
                self.log.warning(f"{exc}; trying again in {delay:.0f} s")
                time.sleep(delay)

    def metadata(self) -> dict:
        return {"retried_errors": MetadataValue.json(self.retried)} if self.retried else {}


def version_to_publish(mlflow: MlflowResource, lineage: list[str], product: str, name: str) -> int:
    """The version this run (or the run it re-executes) trained, else the current challenger; either way only a
    version whose gate verdict is "passed"."""
    client = mlflow.client()
    try:
        _, version = registry.version_registered_by(mlflow.activate(), lineage, product)
    except registry.ModelVersionNotFound:
        version = registry.alias_version(client, name, CHALLENGER)
        if version is None:
            raise registry.ModelVersionNotFound(
                f"{name} has no {CHALLENGER} version: no version has passed the gate") from None
    verdict = client.get_model_version(name, str(version)).tags.get(GATE_TAG)
    if verdict != "passed":
        raise registry.GateNotPassed(f"{name} version {version}: validation gate verdict is {verdict!r}, not "
                                     f"'passed'; only gated versions are published to Nexus")
    return version


def publish_version(mlflow: MlflowResource, nexus: NexusRepository, lineage: list[str], product: str,
                    name: str) -> tuple[int, dict]:
    """Publish the version to publish; tag it in the registry as in Nexus once both files are there."""
    version = version_to_publish(mlflow, lineage, product, name)
    import mlflow as mlflow_client

    client = mlflow.client()
    with tempfile.TemporaryDirectory(prefix="aiml_model_") as tmp:
        model_dir = Path(mlflow_client.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                                    dst_path=tmp))
        published = publish_model(nexus, name, version, model_dir,
                                  metadata=version_metadata(client, name, version, model_dir))
    # the registry's record that the version is in Nexus, complete: set only once both files are published
    client.set_model_version_tag(name, str(version), BINARY_TAG, published["model_sha256"])
    return version, published


def published_row(nexus: NexusRepository, name: str, version: int) -> pd.DataFrame:
    """The published metadata.json as one ModelBinary row, read back from Nexus."""
    meta = fetch_metadata(nexus, name, version)
    return pd.DataFrame([{
        "name": meta["name"], "version": int(meta["version"]), "model_sha256": meta["model_sha256"],
        "metadata_sha256": nexus.sha256(nexus_paths(name, version).metadata),
        "roc_auc": float(meta["metrics"]["roc_auc"]), "git_commit": meta["git_commit"]}])
