"""Resources per environment, built in one place from the environment's settings."""

from __future__ import annotations

from dagster import EnvVar, ResourceDefinition

from aiml_assets.keys import STEP_LAUNCHER_KEY
from aiml_assets.resources.audit import AuditLog
from aiml_assets.resources.egress import readable_catalogs, writable_catalogs
from aiml_assets.resources.catalog import LocalCatalog, UnityCatalog
from aiml_assets.resources.nexus import HttpNexus, LocalNexus
from aiml_assets.resources.release_manifest import release_manifest_for
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.step_launcher import databricks_step_launcher
from aiml_assets.resources.storage import LocalStorage, S3Storage
from aiml_assets.resources.tables import DeltaRsTables, SparkDeltaTables
from aiml_assets.resources.tracking import MlflowResource
from aiml_assets.settings import Settings, aiml_home



def build_resources(settings: Settings) -> dict:
    home = str(aiml_home())
    mlflow = MlflowResource(home=home, **settings.mlflow.model_dump())
    nexus = (
        LocalNexus(root=str(aiml_home() / "nexus" / settings.nexus.repository))
        if settings.nexus.kind == "local"
        else HttpNexus(
            url=settings.nexus.url,
            repository=settings.nexus.repository,
            username=EnvVar(settings.nexus.username_env_var),
            password=EnvVar(settings.nexus.password_env_var),
        )
    )
    storage = (LocalStorage(home=home, buckets=settings.storage.buckets) if settings.is_local
               else S3Storage(buckets=settings.storage.buckets, kms_key_alias=settings.storage.kms_key_alias))
    roots = [storage.root(role) for role in settings.storage.buckets]
    catalogs = dict(readable=readable_catalogs(settings), writable=writable_catalogs(settings))
    audit = AuditLog.in_bucket(storage, **settings.audit.model_dump())
    shared = {"storage": storage, "mlflow": mlflow, "nexus": nexus, "audit": audit,
              "release_manifest": release_manifest_for(settings)}
    if settings.is_local:
        return {
            STEP_LAUNCHER_KEY: ResourceDefinition.none_resource(description="local: steps run in-process"),
            "spark": SparkResource(local=True, **settings.spark.model_dump()),
            "tables": DeltaRsTables(write_roots=roots),
            "catalog": LocalCatalog(home=home, **catalogs),
            **shared,
        }
    return {
        STEP_LAUNCHER_KEY: databricks_step_launcher(settings),
        "spark": SparkResource(local=False),
        "tables": SparkDeltaTables(write_roots=roots, kms_key_alias=settings.storage.kms_key_alias),
        "catalog": UnityCatalog(**catalogs),
        **shared,
    }
