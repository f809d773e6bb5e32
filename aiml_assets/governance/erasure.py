"""GDPR right to be forgotten: an erasure request removes customers from every lab asset, keeps them out of every
later feature and scoring run, is recorded, and names the model versions whose training data held them.

The request is recorded first, in the append-only audit log, with each customer as a SHA-256 digest and never the
id: from that commit on, `without_erased` drops them from the EDP sources every feature and scoring asset reads,
even if the rewrite below stops half way. Then the lab tables' affected partitions are rewritten without them, and
their history vacuumed and noncurrent object versions destroyed, so no time travel or bucket version brings them
back. That history is also what the models were pinned to, so the model versions trained on them are listed first.

The job takes the customers as digests too (`aiml digest <id>...`), because Dagster keeps run config for good.
Each environment has its own audit log, so a request is run in each of lab, UAT and prod (one CI pipeline): the lab
is rewritten, and every environment's later runs leave the customers out. Rewrite and vacuum race a lab feature
run that read its sources before the request was recorded; run an erasure while no lab job is running.
"""

import re
from collections import defaultdict

from dagster import Config, MetadataValue, job, op
from pydantic import Field, field_validator
from pyspark.sql import functions as F

from aiml_assets.asset_tables import lab_table
from aiml_assets.features.assets import FEATURES_KEY, TRAINING_KEY
from aiml_assets.governance.audit import actor
from aiml_assets.governance.erased import DIGESTS, ERASURE_REQUESTED, erased
from aiml_assets.governance.retention import destroy_noncurrent
from aiml_assets.models.training import registered_name
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings

ERASURE = "erasure"  # audit action, once the lab is rewritten
ERASURE_JOB = "gdpr_erasure"


class ErasureRequest(Config):
    request_id: str = Field(pattern=r"^[A-Z][A-Z0-9]*-[0-9A-Za-z-]+$")  # the privacy team's reference, e.g. DSR-2026-0042
    # SHA-256 of each customer id (`aiml digest`): run config stays in Dagster's run storage, so ids never go in it
    customer_digests: list[str] = Field(min_length=1)

    @field_validator("customer_digests")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not re.fullmatch(r"[0-9a-f]{64}", v)]
        if bad:
            raise ValueError(f"{len(bad)} entries are not SHA-256 hex digests of customer ids (run `aiml digest`)")
        return sorted(set(values))


def models_trained_on(context, settings: Settings, digests: list[str]) -> dict[str, str]:
    """Each registered model version whose pinned training rows held any of the customers -> "yes", or why that
    can no longer be told."""
    client, catalog = context.resources.mlflow.client(), context.resources.catalog
    spark = context.resources.spark.get_session()
    held: dict[tuple[str, str], set[tuple[str, str]] | str] = {}  # pinned table version -> (product, snapshot)s
    found = {}
    for product in settings.products:
        name = registered_name(settings.catalog.aiml_catalog, product)
        for version in client.search_model_versions(f"name = '{name}'"):
            pinned = (version.tags.get("training_table"), version.tags.get("training_table_version"))
            if pinned not in held:
                held[pinned] = _held_by(catalog, spark, *pinned, digests)
            label = f"{name} v{version.version}"
            if isinstance(held[pinned], str):
                found[label] = held[pinned]
            elif any((product, s) in held[pinned] for s in version.tags.get("training_partitions", "").split(",")):
                found[label] = "yes"
    return found


def _held_by(catalog, spark, table: str, version: str, digests: list[str]) -> set[tuple[str, str]] | str:
    """The (product, snapshot) partitions of `table` at Delta `version` holding any of the customers, or why that
    version cannot be read (past retention, or vacuumed by an earlier erasure)."""
    try:
        rows = catalog.read(spark, table, int(version)).filter(erased(digests))
        return {(r[0], str(r[1])) for r in rows.select("product_code", "snapshot_date").distinct().collect()}
    except Exception as exc:  # noqa: BLE001 - whatever the engine raises for a vacuumed version, the answer is "unknown"
        return f"unknown: {table} version {version} cannot be read ({type(exc).__name__})"


def erase_from_lab(context, settings: Settings, digests: list[str]) -> dict[str, dict[str, int]]:
    """Rewrite every lab partition holding the customers; returns table -> partition -> rows removed."""
    removed = defaultdict(dict)
    for key in (FEATURES_KEY, TRAINING_KEY):
        table = lab_table(settings, key)
        if not context.resources.catalog.exists(table.name):
            continue
        rows = table.read(context)
        hits = rows.filter(erased(digests)).groupBy(table.partition_column).count().collect()
        for partition, count in sorted((str(r[0]), r[1]) for r in hits):
            kept = rows.filter(F.col(table.partition_column) == partition).filter(~erased(digests))
            table.write_partition(context, kept, partition)
            removed[table.name][partition] = count
            context.log.info(f"{table.name} {partition}: {count} rows of erased customers removed")
        if hits:
            context.resources.tables.vacuum(table.location(context), retain_hours=0)
            destroy_noncurrent(context.resources.storage, table.role, f"{table.key}/")
    return dict(removed)


def erasure_job(settings: Settings):
    resources = {STEP_LAUNCHER_KEY, "spark", "catalog", "tables", "storage", "audit"}
    has_lab, has_models = "lab_features" in settings.asset_groups, "model_versions" in settings.asset_groups

    @op(required_resource_keys=resources | ({"mlflow"} if has_models else set()))
    def erase_customers(context, config: ErasureRequest) -> None:
        digests, audit = config.customer_digests, context.resources.audit
        who = dict(actor=actor(context), environment=settings.environment, run_id=context.run.run_id)
        audit.record(ERASURE_REQUESTED, config.request_id, **who, details={DIGESTS: digests, "customers": len(digests)})
        models = models_trained_on(context, settings, digests) if has_models else {}
        removed = erase_from_lab(context, settings, digests) if has_lab else {}
        audit.record(ERASURE, config.request_id, **who, details={
            "customers": len(digests), "rows_removed": removed, "models_trained_on_them": models})
        context.add_output_metadata({
            "rows_removed": MetadataValue.json(removed),
            "models_trained_on_them": MetadataValue.json(models),
        })

    @job(name=ERASURE_JOB, description="GDPR erasure: record the request (its customers are excluded from every "
         "later run), list the model versions trained on them, rewrite the lab partitions without them.")
    def gdpr_erasure():
        erase_customers()

    return gdpr_erasure
