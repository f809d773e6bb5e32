"""Which model versions an environment scores with: its release manifest's entries, pulled from Nexus and loaded
only after their bytes match the manifest's sha256."""

from __future__ import annotations

from dataclasses import dataclass
import tempfile
from pathlib import Path

from aiml_assets.models.binary import fetch_metadata, fetch_model
from aiml_assets.models.registry import CHALLENGER, CHAMPION
from aiml_assets.resources.safe_artifact import UntrustedModel, load_model
from aiml_assets.resources.nexus import NexusChecksumError, NexusError, NexusRepository
from aiml_assets.settings import ProductRelease



class DeploymentRefused(RuntimeError):
    """The release manifest or a binary cannot be trusted; nothing is scored."""


@dataclass(frozen=True)
class Deployment:
    """One model version an environment scores with: a release manifest entry, and a row of prod/deployed_model."""

    product_code: str
    model_role: str  # champion | challenger
    model_name: str
    model_version: int
    model_sha256: str
    metadata_sha256: str
    change_request: str

    def describe(self) -> str:
        return f"{self.product_code} {self.model_role} {self.model_name} version {self.model_version}"


def deployments(manifest: dict[str, ProductRelease], products: list[str], source: str) -> list[Deployment]:
    """Every product's champion and optional challenger from the release manifest `source`. A product without a
    champion is not scored (like a product whose new version failed its gate and that never had one); a manifest
    without any champion refuses."""
    with_champion = [p for p in products if manifest.get(p) is not None and manifest[p].champion is not None]
    if not with_champion:
        raise DeploymentRefused(f"no champion for any product in the {source} release manifest "
                                f"(resources/{source}.yaml); promote a gated version first. Nothing is scored.")
    found = []
    for product in with_champion:
        for role in (CHAMPION, CHALLENGER):
            entry = getattr(manifest[product], role)
            if entry is None:
                continue
            if not entry.name.endswith(f".nba_propensity_{product}"):
                raise DeploymentRefused(f"the {source} release manifest names {entry.name} as {product}'s {role}: "
                                        "not a model of that product. Nothing is scored.")
            found.append(Deployment(product, role, entry.name, entry.version, entry.sha256, entry.metadata_sha256,
                                    entry.change_request))
    return found


def scored_products(deployed: list[Deployment], products: list[str]) -> list[str]:
    """The products a deployment scores: those with a champion, in the order of `products`."""
    champions = {d.product_code for d in deployed if d.model_role == CHAMPION}
    return [p for p in products if p in champions]


def load_verified(nexus: NexusRepository, deployment: Deployment, workdir: Path):
    """The deployment's model, pulled from Nexus into `workdir` and loaded once its sha256 matches the manifest and
    its files pass Nexus's policy, trusting only the skops types fixed in code."""
    try:
        path = fetch_model(nexus, deployment.model_name, deployment.model_version, Path(workdir) /
                           f"{deployment.product_code}_{deployment.model_role}", expected_sha256=deployment.model_sha256)
        return load_model(path, deployment.describe())
    except (NexusError, UntrustedModel) as exc:
        raise DeploymentRefused(f"{deployment.describe()}: refused: {exc}. Nothing is scored.") from exc


def load_all(nexus: NexusRepository, chosen: list[Deployment]) -> dict[tuple[str, str], tuple[object, Deployment]]:
    """(product, role) -> (model, deployment) for each chosen deployment, each verified as `load_verified` does."""
    with tempfile.TemporaryDirectory(prefix="aiml_deploy_") as workdir:
        return {(d.product_code, d.model_role): (load_verified(nexus, d, workdir), d) for d in chosen}


def reference_profile(nexus: NexusRepository, deployment: Deployment) -> dict:
    """The feature distribution the deployed version was trained on, from its Nexus metadata.json (which must be
    the one the manifest pins: it is the drift baseline)."""
    try:
        metadata = fetch_metadata(nexus, deployment.model_name, deployment.model_version, deployment.metadata_sha256)
    except NexusChecksumError as exc:
        raise DeploymentRefused(f"{deployment.describe()}: its reference profile is not the one promoted: {exc}") from exc
    except NexusError as exc:
        raise DeploymentRefused(f"{deployment.describe()}: refused: {exc}") from exc
    if metadata.get("model_sha256") != deployment.model_sha256:
        raise DeploymentRefused(f"{deployment.describe()}: Nexus metadata describes sha256 "
                                f"{metadata.get('model_sha256')}, the manifest {deployment.model_sha256}")
    if "reference_profile" not in metadata:
        raise DeploymentRefused(f"{deployment.describe()}: its Nexus metadata has no reference_profile to measure "
                                "drift against; republish it from a current training run")
    return metadata["reference_profile"]
