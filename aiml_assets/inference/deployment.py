"""Which model versions an environment scores with: its release manifest's entries, pulled from Nexus and loaded
only after their bytes match the manifest's sha256."""

from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import tempfile
from pathlib import Path

import mlflow

from aiml_assets.models.binary import fetch_model, nexus_paths
from aiml_assets.models.registry import CHALLENGER, CHAMPION
from aiml_assets.resources.nexus import NexusError, NexusRepository, read_metadata
from aiml_assets.settings import ProductRelease



class DeploymentRefused(RuntimeError):
    """The release manifest or a binary cannot be trusted; nothing is scored."""


@dataclass(frozen=True)
class Deployment:
    product: str
    role: str  # champion | challenger
    name: str
    version: int
    sha256: str
    change_request: str
    metadata_sha256: str | None = None  # from the manifest; the deployed_model table does not carry it

    def describe(self) -> str:
        return f"{self.product} {self.role} {self.name} version {self.version}"

    def row(self) -> dict:
        record = asdict(self)
        record.pop("metadata_sha256")
        return {"product_code": record.pop("product"), "model_role": record.pop("role"),
                "model_name": record.pop("name"), "model_version": record.pop("version"),
                "model_sha256": record.pop("sha256"), **record}


def deployments(manifest: dict[str, ProductRelease], products: list[str], source: str) -> list[Deployment]:
    """Every product's champion (required) and challenger (optional) from the release manifest `source`."""
    missing = [p for p in products if manifest.get(p) is None or manifest[p].champion is None]
    if missing:
        raise DeploymentRefused(f"no champion for {', '.join(missing)} in the {source} release manifest "
                                f"(resources/{source}.yaml); promote a gated version first. Nothing is scored.")
    found = []
    for product in products:
        for role in (CHAMPION, CHALLENGER):
            entry = getattr(manifest[product], role)
            if entry is None:
                continue
            if not entry.name.endswith(f".nba_propensity_{product}"):
                raise DeploymentRefused(f"the {source} release manifest names {entry.name} as {product}'s {role}: "
                                        "not a model of that product. Nothing is scored.")
            found.append(Deployment(product, role, entry.name, entry.version, entry.sha256, entry.change_request,
                                    entry.metadata_sha256))
    return found


def load_verified(nexus: NexusRepository, deployment: Deployment, workdir: Path):
    """The deployment's model, pulled from Nexus into `workdir` and loaded once its sha256 matches the manifest."""
    try:
        path = fetch_model(nexus, deployment.name, deployment.version, Path(workdir) / f"{deployment.product}_"
                           f"{deployment.role}", expected_sha256=deployment.sha256)
    except NexusError as exc:
        raise DeploymentRefused(f"{deployment.describe()}: refused: {exc}. Nothing is scored.") from exc
    return mlflow.sklearn.load_model(str(path))


def load_all(nexus: NexusRepository, chosen: list[Deployment]) -> dict[tuple[str, str], tuple[object, Deployment]]:
    """(product, role) -> (model, deployment) for each chosen deployment, each verified as `load_verified` does."""
    with tempfile.TemporaryDirectory(prefix="aiml_deploy_") as workdir:
        return {(d.product, d.role): (load_verified(nexus, d, workdir), d) for d in chosen}


def reference_profile(nexus: NexusRepository, deployment: Deployment) -> dict:
    """The feature distribution the deployed version was trained on (from its Nexus metadata)."""
    path = nexus_paths(deployment.name, deployment.version).metadata
    try:
        document = nexus.fetch(path)
    except NexusError as exc:
        raise DeploymentRefused(f"{deployment.describe()}: refused: {exc}") from exc
    actual = hashlib.sha256(document).hexdigest()
    if actual != deployment.metadata_sha256:
        raise DeploymentRefused(f"{deployment.describe()}: {path} has sha256 {actual}, the release manifest says "
                                f"{deployment.metadata_sha256}; its reference profile is not the one promoted")
    metadata = read_metadata(path, document)
    if metadata.get("model_sha256") != deployment.sha256:
        raise DeploymentRefused(f"{deployment.describe()}: Nexus metadata describes sha256 "
                                f"{metadata.get('model_sha256')}, the manifest {deployment.sha256}")
    if "reference_profile" not in metadata:
        raise DeploymentRefused(f"{deployment.describe()}: its Nexus metadata has no reference_profile to measure "
                                "drift against; republish it from a current training run")
    return metadata["reference_profile"]
