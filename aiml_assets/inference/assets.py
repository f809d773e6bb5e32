"""Prod inference: scoring features at the scoring date, the deployed models, and the daily propensity scores.

Everything is partitioned by scoring date, so one daily run scores one day and records which model versions did.
The three assets are one step (`prod_scoring`, one Databricks run): each is written, read back once, and its
blocking checks evaluated on that read before the next is computed, so a failing check (a schema, drift above the
fail threshold) stops the step before anything after it is computed or written. Each asset can still be
materialized alone (the step is subsettable).
"""


from dataclasses import asdict, fields
from datetime import date, datetime, timedelta, timezone

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DailyPartitionsDefinition,
    MetadataValue,
    multi_asset,
)
from pyspark import StorageLevel

from aiml_assets.asset_tables import AssetTable, TableAccess, scoring_table
from aiml_assets.features.customer_features import customer_features
from aiml_assets.features.schemas import customer_features_schema
from aiml_assets.inference.deployment import CHAMPION, Deployment, deployments, load_all, scored_products
from aiml_assets.inference.drift import drift_result
from aiml_assets.inference.plots import score_summary
from aiml_assets.inference.schemas import CANARY_ROLE, deployed_model_schema, propensity_scores_schema
from aiml_assets.inference.scoring import score_customers
from aiml_assets.inference.step_checks import blocks, evaluated, materialized
from aiml_assets.keys import (
    BINARY_KEY, DEPLOYED_MODEL_KEY, INFERENCE_GROUP as GROUP, SCORES_KEY, SCORING_FEATURES_KEY, StepLauncherParam,
)
from aiml_assets.plots import inline_markdown
from aiml_assets.quality import (check_name, refuse_unchecked, schema_check, schema_check_spec, spark_schema,
                                  table_schema)
from aiml_assets.resources.audit import AuditLog
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.nexus import NexusRepository
from aiml_assets.resources.release_manifest import ReleaseManifest
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings
from aiml_assets.sources.edp import CUSTOMERS, HOLDINGS, RESPONSES, TRANSACTIONS, asset_key
from aiml_assets.sources.erased import read_sources
from aiml_assets.sources.horizon import observed_horizon, refuse_unfillable

FEATURE_DRIFT = "feature_drift"


def scoring_partitions(settings: Settings) -> DailyPartitionsDefinition:
    # UK days, as tenants count them. end_offset=1: the day's partition exists from midnight, so the early morning
    # run scores today on all of yesterday.
    return DailyPartitionsDefinition(start_date=settings.inference.scoring_start.isoformat(), end_offset=1,
                                     timezone="Europe/London")


def scoring_day(partition_key: str) -> date:
    return date.fromisoformat(partition_key)


def manifest_deployments(release_manifest: ReleaseManifest, settings: Settings) -> list[Deployment]:
    source = settings.inference.deploys_from
    return deployments(release_manifest.read(source), settings.products, source)


def deployed(io: TableAccess, settings: Settings, day: date) -> list[Deployment]:
    """What `prod/deployed_model` recorded for the scoring day."""
    rows = scoring_table(settings, DEPLOYED_MODEL_KEY).read(io, [day]).collect()
    return [Deployment(**{f.name: row[f.name] for f in fields(Deployment)}) for row in rows]


def register(io: TableAccess, table: AssetTable, settings: Settings, key: AssetKey) -> None:
    what = key.to_user_string()
    table.register(io, comment=f"{what}; scoring bucket of {settings.environment}",
                   properties={"dagster_asset": what, "environment": settings.environment})


def rows_checked(results: list[AssetCheckResult]) -> dict:
    return {"dagster/row_count": results[0].metadata["rows"]}


def inference_assets(settings: Settings) -> list:
    products, inference = settings.products, settings.inference
    features_table = scoring_table(settings, SCORING_FEATURES_KEY)
    deployed_table = scoring_table(settings, DEPLOYED_MODEL_KEY)
    scores_table = scoring_table(settings, SCORES_KEY)
    features_schema = customer_features_schema(products)
    deployed_schema, scores_schema = deployed_model_schema(products), propensity_scores_schema(products)
    common = dict(group_name=GROUP, owners=["team:aiml"])
    check_specs = [
        schema_check_spec(SCORING_FEATURES_KEY, features_schema, settings),
        AssetCheckSpec(FEATURE_DRIFT, asset=SCORING_FEATURES_KEY, blocking=True, description=(
            "PSI of every scoring feature against the training data of each deployed model, champions and "
            f"challengers (its reference profile in Nexus): warns above {inference.drift.warn_psi}, fails (and "
            f"blocks scoring) above {inference.drift.fail_psi}.")),
        schema_check_spec(DEPLOYED_MODEL_KEY, deployed_schema, settings),
        schema_check_spec(SCORES_KEY, scores_schema, settings),
    ]

    @multi_asset(
        name="prod_scoring",
        specs=[
            AssetSpec(
                SCORING_FEATURES_KEY, deps=[asset_key(name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES)],
                description="Every customer's features as of the scoring date, by the lab's feature code (one "
                "implementation), in this environment's scoring bucket.",
                metadata={"dagster/column_schema": table_schema(features_schema),
                          "dagster/table_name": features_table.name},
                kinds={"spark", "delta"}, skippable=True, **common),
            AssetSpec(
                DEPLOYED_MODEL_KEY,
                # the lab's Nexus binaries, which reach this environment only through a promotion's release manifest
                deps=[AssetDep(BINARY_KEY, partition_mapping=AllPartitionMapping())],
                description=f"Per product, the champion (and any challenger) of the {inference.deploys_from} release "
                "manifest, pulled from Nexus and loaded only if its sha256 matches the manifest; a mismatch refuses, "
                "and nothing is scored. A product without a champion is not scored.",
                metadata={"dagster/column_schema": table_schema(deployed_schema),
                          "dagster/table_name": deployed_table.name},
                kinds={"nexus", "mlflow"}, skippable=True, **common),
            AssetSpec(
                SCORES_KEY, deps=[SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY],
                description="Every customer's propensity for each product they may be offered, with the product's "
                "rank for the customer, the model name, version and role (champion, or canary for the hash-selected "
                f"{inference.canary_share:.0%} scored by the challenger), snapshot and scored-at time.",
                metadata={"dagster/column_schema": table_schema(scores_schema), "dagster/table_name": scores_table.name},
                kinds={"spark", "delta", "scikitlearn"}, skippable=True, **common),
        ],
        check_specs=check_specs, can_subset=True, partitions_def=scoring_partitions(settings),
    )
    def prod_scoring(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam, spark: SparkResource,
                     catalog: Catalog, tables: DeltaTables, storage: Storage, audit: AuditLog,
                     nexus: NexusRepository, release_manifest: ReleaseManifest):
        assets, checks = context.selected_asset_keys, context.selected_asset_check_keys
        refuse_unchecked(assets, checks, check_specs, checks_alone=True)
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        day, partition, log = scoring_day(context.partition_key), context.partition_key, context.log
        cached = []

        def schema(key: AssetKey, model, df):
            return check_name(model), lambda: schema_check(log, io, key, model, df, settings, partition)

        def written(table: AssetTable):  # the one read of the day's partition its checks and metadata share
            cached.append(table.read(io, [day]).persist(StorageLevel.MEMORY_AND_DISK))
            return cached[-1]

        def involved(key: AssetKey) -> bool:
            return key in assets or any(check.asset_key == key for check in checks)

        def scoring_features():
            metadata = None
            if SCORING_FEATURES_KEY in assets:
                sources = read_sources(spark, catalog, audit, settings)
                # a scheduled run before EDP has published yesterday is refused, rather than scoring on stale data
                refuse_unfillable(SCORING_FEATURES_KEY, observed_horizon(sources.transactions), [day], lambda h, _: (
                    None if h.fills_features(day) else f"scoring it needs every event up to {day - timedelta(days=1)}"))
                log.info(f"scoring features as of {day}: computing")
                version = features_table.write_partition(io, customer_features(sources, day, products), partition)
                register(io, features_table, settings, SCORING_FEATURES_KEY)
                metadata = {"table_version": MetadataValue.int(version)}
            features = written(features_table)
            results = evaluated(checks, SCORING_FEATURES_KEY, [
                schema(SCORING_FEATURES_KEY, features_schema, features),
                (FEATURE_DRIFT, lambda: drift_result(log, SCORING_FEATURES_KEY, FEATURE_DRIFT, features,
                                                     manifest_deployments(release_manifest, settings),  # challengers too
                                                     nexus, inference.drift))])
            if metadata is not None:
                metadata |= rows_checked(results)
                log.info(f"scoring features as of {day}: {metadata['dagster/row_count'].value} customers")
            yield from materialized(SCORING_FEATURES_KEY, metadata, results)
            return features

        def deployed_model():
            entries, models, metadata = None, {}, None
            if DEPLOYED_MODEL_KEY in assets:
                entries = manifest_deployments(release_manifest, settings)
                models = load_all(nexus, entries)  # verified once: the scores below use these
                for deployment in entries:
                    log.info(f"{deployment.describe()}: sha256 {deployment.model_sha256} verified, loaded")
                undeployed = [p for p in products if p not in scored_products(entries, products)]
                if undeployed:
                    log.warning(f"no champion in the {inference.deploys_from} release manifest for "
                                f"{', '.join(undeployed)}: not scored on {day}")
                rows = pd.DataFrame([{"snapshot_date": day, **asdict(d)} for d in entries])
                version = deployed_table.write_partition(
                    io, spark.get_session().createDataFrame(rows, schema=spark_schema(deployed_schema)), partition)
                register(io, deployed_table, settings, DEPLOYED_MODEL_KEY)
                metadata = {
                    "deployed": MetadataValue.md(rows.drop(columns=["snapshot_date"]).to_markdown(index=False)),
                    "release_manifest": MetadataValue.text(f"resources/{inference.deploys_from}.yaml"),
                    "products_not_deployed": MetadataValue.json(undeployed),
                    "table_version": MetadataValue.int(version),
                }
            results = evaluated(checks, DEPLOYED_MODEL_KEY,
                                [schema(DEPLOYED_MODEL_KEY, deployed_schema, written(deployed_table))])
            yield from materialized(DEPLOYED_MODEL_KEY, metadata, results)
            return entries, models

        def propensity_scores(features, entries, models):
            metadata = None
            if SCORES_KEY in assets:
                share = inference.canary_share
                # challengers score only a canary share; with none, they are not even pulled
                entries = deployed(io, settings, day) if entries is None else entries
                chosen = [d for d in entries if d.model_role == CHAMPION or share > 0]
                models = models or load_all(nexus, chosen)
                models = {(d.product_code, d.model_role): models[(d.product_code, d.model_role)] for d in chosen}
                log.info(f"scoring {day} with {len(models)} model versions, canary share {share}")
                if features is None:
                    features = features_table.read(io, [day])
                scores = score_customers(features, models, share, datetime.now(timezone.utc))
                version = scores_table.write_partition(io, scores, partition)
                register(io, scores_table, settings, SCORES_KEY)
                metadata = {"canary_share_configured": MetadataValue.float(share),
                            "table_version": MetadataValue.int(version)}
            scores = written(scores_table)
            results = evaluated(checks, SCORES_KEY, [schema(SCORES_KEY, scores_schema, scores)])
            if metadata is not None:
                metadata |= rows_checked(results)
            if metadata is not None and not any(map(blocks, results)):
                summary = score_summary(scores)
                log.info(f"scores {day}: {summary.rows} rows, table version {metadata['table_version'].value}")
                metadata |= {
                    "rows_per_product_and_role": MetadataValue.json(summary.per_product_role),
                    "canary_share_observed": MetadataValue.float(round(summary.role_share(CANARY_ROLE), 4)),
                    "score_distribution": MetadataValue.md(inline_markdown(summary.histogram_png(day), "scores")),
                }
            yield from materialized(SCORES_KEY, metadata, results)

        try:  # in data-flow order: each asset's checks pass before the next is computed
            features = (yield from scoring_features()) if involved(SCORING_FEATURES_KEY) else None
            entries, models = (yield from deployed_model()) if involved(DEPLOYED_MODEL_KEY) else (None, {})
            if involved(SCORES_KEY):
                yield from propensity_scores(features, entries, models)
        finally:
            for df in cached:
                df.unpersist()

    return [prod_scoring]
