"""Promotion of a gated model version through UAT to prod, only under a change request, always audited.

`target=uat` makes the version UAT's challenger (the candidate in the parallel run). `target=prod` needs the same
version in UAT's manifest already; it moves the registry alias `champion` to it and makes it the champion of prod's
and UAT's manifests (`resources/release_manifest.py` rewrites their block of the env files, nothing else). With
`role=challenger`, prod gets it as its challenger instead: the canary share of customers is scored by it, and the
champion (alias and manifest) stays.

Run as the `promote_model` job, by CI or `aiml promote --product P --version N --change-request CHG... --target T`.
"""

import hashlib
from pathlib import Path
from typing import Literal

from dagster import Config, Failure, JobDefinition, OpExecutionContext, Output, job, op

from aiml_assets.keys import CHANGE_REQUEST
from aiml_assets.resources.audit import (
    PROMOTION, PROMOTION_FAILED, PROMOTION_REFUSED, PROMOTION_STARTED, AuditLog, actor_of,
)
from aiml_assets.models.binary import nexus_paths
from aiml_assets.models.registry import CHAMPION, GATE_TAG, alias_version
from aiml_assets.models.training import registered_name
from aiml_assets.resources.nexus import NexusError, NexusRepository, read_metadata
from aiml_assets.resources.release_manifest import Manifest, ReleaseManifest, release_manifest_for
from aiml_assets.resources.tracking import MlflowResource
from aiml_assets.settings import ProductRelease, ReleaseEntry, Settings

JOB_NAME = "promote_model"


class PromotionRefused(Exception):
    """A promotion that must not happen; nothing was changed."""


class PromotionConfig(Config):
    product: str
    version: int
    change_request: str = ""  # empty reaches the op, so that the refusal is audited
    target: Literal["uat", "prod"]
    role: Literal["champion", "challenger"] = "champion"  # prod only: challenger = the canary's model


def check_change_request(change_request: str) -> str:
    value = (change_request or "").strip()
    if not value:
        raise PromotionRefused("no change request id: every promotion needs an approved change request "
                               "(CHG + 7 digits)")
    if not CHANGE_REQUEST.fullmatch(value):
        raise PromotionRefused(f"change request id {value!r} does not match {CHANGE_REQUEST.pattern}")
    return value


def verified_entry(mlflow: MlflowResource, nexus: NexusRepository, name: str, version: int,
                   change_request: str) -> ReleaseEntry:
    """The release entry of a registered, gate-passed version whose binary is in Nexus and matches its sha256."""
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        model_version = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise PromotionRefused(f"{name} has no version {version} in the model registry") from exc
    gate = model_version.tags.get(GATE_TAG)
    if gate != "passed":
        raise PromotionRefused(f"{name} version {version} has not passed the validation gate ({GATE_TAG}={gate!r})")
    paths = nexus_paths(name, version)
    try:
        sha256 = hashlib.sha256(nexus.fetch(paths.model)).hexdigest()  # fetch verifies the bytes against the sidecar
        document = nexus.fetch(paths.metadata)
        metadata = read_metadata(paths.metadata, document)
    except NexusError as exc:
        raise PromotionRefused(f"{name} version {version}: no verified binary in Nexus: {exc}") from exc
    described = (metadata.get("name"), str(metadata.get("version")), metadata.get("model_sha256"))
    if described != (name, str(version), sha256):
        raise PromotionRefused(f"{name} version {version}: Nexus metadata.json describes {described}, "
                               f"not this version's binary (sha256 {sha256})")
    return ReleaseEntry(name=name, version=version, sha256=sha256,
                        metadata_sha256=hashlib.sha256(document).hexdigest(), change_request=change_request)


def _same(entry: ReleaseEntry | None, other: ReleaseEntry) -> bool:
    return entry is not None and (entry.name, entry.version) == (other.name, other.version)


def _with_champion(release: ProductRelease, entry: ReleaseEntry) -> ProductRelease:
    """`entry` as the champion; the challenger stays unless it is that same version."""
    return ProductRelease(champion=entry, challenger=None if _same(release.challenger, entry) else release.challenger)


def plan_uat(manifests: ReleaseManifest, product: str, entry: ReleaseEntry) -> dict[str, Manifest]:
    uat = manifests.read("uat")
    uat[product] = uat.get(product, ProductRelease()).model_copy(update={"challenger": entry})
    return {"uat": uat}


def plan_prod(manifests: ReleaseManifest, product: str, entry: ReleaseEntry, role: str = "champion") -> dict[str, Manifest]:
    uat, prod = manifests.read("uat"), manifests.read("prod")
    in_uat = uat.get(product, ProductRelease())
    tested = next((e for e in (in_uat.challenger, in_uat.champion) if _same(e, entry)), None)
    if tested is None:
        raise PromotionRefused(f"{entry.name} version {entry.version} is not in UAT's release manifest: "
                               "promote it to uat first")
    if (tested.sha256, tested.metadata_sha256) != (entry.sha256, entry.metadata_sha256):
        raise PromotionRefused(f"{entry.name} version {entry.version}: Nexus sha256 {entry.sha256} (metadata "
                               f"{entry.metadata_sha256}) differs from the {tested.sha256} (metadata "
                               f"{tested.metadata_sha256}) UAT ran")
    in_prod = prod.get(product, ProductRelease())
    if role == "challenger":
        if _same(in_prod.champion, entry):
            raise PromotionRefused(f"{entry.name} version {entry.version} is prod's champion already")
        prod[product] = in_prod.model_copy(update={"challenger": entry})
        return {"prod": prod}
    prod[product] = _with_champion(in_prod, entry)
    uat[product] = _with_champion(in_uat, entry)  # UAT runs prod's champion beside its own challenger
    return {"prod": prod, "uat": uat}


def release_resources_dir(settings: Settings) -> Path:
    """Whose env files a promotion of this environment's registry rewrites (see `release_manifest_for`)."""
    return release_manifest_for(settings).ready_dir()


def promotion_resources(settings: Settings, resources_dir: str | Path | None = None) -> dict:
    """The environment's mlflow, nexus, audit and release manifest resources, for running the job outside the
    code location (the CLI, tests); `resources_dir` points the manifests at other env files."""
    from aiml_assets.resources.per_environment import build_resources

    needed = _promote_op(settings).required_resource_keys  # what the op's signature asks for
    bound = {key: value for key, value in build_resources(settings).items() if key in needed}
    if resources_dir is not None:
        bound["release_manifest"] = ReleaseManifest(resources_dir=str(resources_dir))
    return bound


def _apply(mlflow: MlflowResource, name: str, entry: ReleaseEntry, moves_champion: bool, manifests: ReleaseManifest,
           plan) -> None:
    """Move the champion alias (prod) and write the manifests, or neither: if the write fails, the alias goes back."""
    client = mlflow.client()
    previous = alias_version(client, name, CHAMPION) if moves_champion else None
    if moves_champion:
        client.set_registered_model_alias(name, CHAMPION, str(entry.version))
    try:
        manifests.write(plan)
    except BaseException:
        if moves_champion:
            if previous is None:
                client.delete_registered_model_alias(name, CHAMPION)
            else:
                client.set_registered_model_alias(name, CHAMPION, str(previous))
        raise


def _promote_op(settings: Settings):
    @op(description="Checks the change request, the gate tag and the Nexus binary, then writes the release manifest "
        "(and for prod the champion alias) and an audit entry; a refusal changes nothing and is audited too.")
    def promote(context: OpExecutionContext, config: PromotionConfig, mlflow: MlflowResource,
                nexus: NexusRepository, audit: AuditLog, release_manifest: ReleaseManifest) -> Output:
        manifests = release_manifest
        audit.verify()  # a broken audit log stops the promotion before anything changes
        name = registered_name(settings.catalog.aiml_catalog, config.product)
        event = dict(subject=f"models:/{name}/{config.version}", actor=actor_of(context.run.tags),
                     environment=config.target, run_id=context.run_id,
                     change_request=config.change_request.strip() or None)
        details = {"product": config.product, "name": name, "version": config.version, "target": config.target,
                   "role": config.role, "registry_environment": settings.environment}
        moves_champion = config.target == "prod" and config.role == "champion"
        try:
            change_request = check_change_request(config.change_request)
            if config.product not in settings.products:
                raise PromotionRefused(f"{config.product!r} is not a product of {settings.environment}")
            with manifests.locked():
                entry = verified_entry(mlflow, nexus, name, config.version, change_request)
                plan = (plan_prod(manifests, config.product, entry, config.role) if config.target == "prod"
                        else plan_uat(manifests, config.product, entry))
                previous = manifests.read(config.target).get(config.product, ProductRelease())
                manifests.check(plan)
                audit.record(PROMOTION_STARTED, **event, details={**details, "sha256": entry.sha256})
                try:
                    _apply(mlflow, name, entry, moves_champion, manifests, plan)
                except Exception as exc:
                    audit.record(PROMOTION_FAILED, **event, details={**details, "error": f"{type(exc).__name__}: {exc}"})
                    raise
        except PromotionRefused as refusal:
            audit.record(PROMOTION_REFUSED, **event, details={**details, "reason": str(refusal)})
            raise Failure(description=f"promotion refused: {refusal}", allow_retries=False) from refusal
        slot = "champion" if moves_champion else "challenger"
        replaced = getattr(previous, slot)
        audit.record(PROMOTION, **event, details={**details, "sha256": entry.sha256, "slot": slot,
                                                   "replaced": replaced.model_dump() if replaced else None})
        context.log.info(f"{name} version {entry.version} is now {config.target}'s {slot} "
                         f"(sha256 {entry.sha256}, change request {change_request})")
        return Output(entry.model_dump(), metadata={**entry.model_dump(), "target": config.target, "slot": slot})

    return promote


def promotion_job(settings: Settings, resources: dict | None = None) -> JobDefinition:
    """The `promote_model` job of the environment whose registry holds the versions (`settings`). In the code
    location its resources are the Definitions'; run alone, pass `promotion_resources(settings)`."""
    promote = _promote_op(settings)

    @job(name=JOB_NAME, resource_defs=resources,
         description="Promote a gated model version to UAT or (through UAT) to prod under a change request.")
    def promote_model():
        promote()

    return promote_model


def promotion_run_config(product: str, version: int, change_request: str, target: str,
                         role: str = "champion") -> dict:
    config = {"product": product, "version": version, "change_request": change_request, "target": target,
              "role": role}
    return {"ops": {"promote": {"config": config}}}


def failure_reason(result) -> str:
    """Why a promote_model run failed, from its step failure (a refusal's description, or the error)."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
            error = error.cause  # Dagster's wrapper around the op's own exception
        if error is not None:
            return error.message.strip()
    return "the run failed before its step ran"
