"""Prod inference: scoring features at the scoring date, the deployed models, and the daily propensity scores.

Everything is partitioned by scoring date, so one daily run scores one day and records which model versions did.
"""


from dataclasses import asdict, fields
from datetime import date, datetime, timedelta, timezone

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pyspark.sql import functions as F

from aiml_assets.asset_tables import scoring_table
from aiml_assets.features.assets import read_sources
from aiml_assets.features.customer_features import customer_features
from aiml_assets.features.schemas import customer_features_schema
from aiml_assets.inference.plots import score_summary
from aiml_assets.inference.deployment import (
    CHAMPION, Deployment, deployments, load_all, reference_profile, scored_products,
)
from aiml_assets.inference.drift import feature_psi
from aiml_assets.inference.schemas import CANARY_ROLE, deployed_model_schema, propensity_scores_schema
from aiml_assets.inference.scoring import score_customers
from aiml_assets.models.assets import BINARY_KEY
from aiml_assets.plots import inline_markdown
from aiml_assets.quality import pandera_check, spark_schema, table_schema
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings
from aiml_assets.sources.edp import CUSTOMERS, HOLDINGS, RESPONSES, TRANSACTIONS, asset_key
from aiml_assets.sources.horizon import observed_horizon, refuse_unfillable

GROUP = "prod_inference"
SCORING_FEATURES_KEY = AssetKey(["prod", "scoring_features"])
DEPLOYED_MODEL_KEY = AssetKey(["prod", "deployed_model"])
SCORES_KEY = AssetKey(["prod", "propensity_scores"])
RESOURCES = {STEP_LAUNCHER_KEY, "spark", "catalog", "tables", "storage", "audit"}
MODEL_RESOURCES = RESOURCES | {"nexus", "release_manifest"}


def scoring_partitions(settings: Settings) -> DailyPartitionsDefinition:
    # UK days, as tenants count them. end_offset=1: the day's partition exists from midnight, so the early morning
    # run scores today on all of yesterday.
    return DailyPartitionsDefinition(start_date=settings.inference.scoring_start.isoformat(), end_offset=1,
                                     timezone="Europe/London")


def scoring_day(context) -> date:
    return date.fromisoformat(context.partition_key)


def manifest_deployments(context, settings: Settings) -> list[Deployment]:
    source = settings.inference.deploys_from
    return deployments(context.resources.release_manifest.read(source), settings.products, source)


def deployed(context, settings: Settings) -> list[Deployment]:
    """What `prod/deployed_model` recorded for this scoring day."""
    rows = scoring_table(settings, DEPLOYED_MODEL_KEY).read(context, [scoring_day(context)]).collect()
    return [Deployment(**{f.name: row[f.name] for f in fields(Deployment)}) for row in rows]


def inference_assets(settings: Settings) -> list:
    products = settings.products
    daily = scoring_partitions(settings)
    features_table = scoring_table(settings, SCORING_FEATURES_KEY)
    deployed_table = scoring_table(settings, DEPLOYED_MODEL_KEY)
    scores_table = scoring_table(settings, SCORES_KEY)
    features_schema = customer_features_schema(products)
    deployed_schema, scores_schema = deployed_model_schema(products), propensity_scores_schema(products)
    common = dict(group_name=GROUP, partitions_def=daily, owners=["team:aiml"])

    def register(context, table, what: str) -> None:
        table.register(context, comment=f"{what}; scoring bucket of {settings.environment}",
                       properties={"dagster_asset": what, "environment": settings.environment})

    @asset(
        key=SCORING_FEATURES_KEY,
        deps=[asset_key(name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES)],
        description="Every customer's features as of the scoring date, by the lab's feature code (one "
        "implementation), in this environment's scoring bucket.",
        metadata={"dagster/column_schema": table_schema(features_schema), "dagster/table_name": features_table.name},
        required_resource_keys=RESOURCES, kinds={"spark", "delta"}, **common,
    )
    def scoring_features(context: AssetExecutionContext) -> MaterializeResult:
        day = scoring_day(context)
        sources = read_sources(context, settings)
        # a scheduled run before EDP has published yesterday is refused, rather than scoring on stale data
        refuse_unfillable(SCORING_FEATURES_KEY, observed_horizon(sources.transactions), [day], lambda horizon, _: (
            None if horizon.fills_features(day) else f"scoring it needs every event up to {day - timedelta(days=1)}"))
        context.log.info(f"scoring features as of {day}: computing")
        version = features_table.write_partition(context, customer_features(sources, day, products), day.isoformat())
        register(context, features_table, SCORING_FEATURES_KEY.to_user_string())
        customers = features_table.read(context, [day]).count()
        context.log.info(f"scoring features as of {day}: {customers} customers, table version {version}")
        return MaterializeResult(metadata={"dagster/row_count": MetadataValue.int(customers),
                                           "table_version": MetadataValue.int(version)})

    @asset_check(
        asset=SCORING_FEATURES_KEY, name="feature_drift", blocking=True, partitions_def=daily,
        required_resource_keys=MODEL_RESOURCES,
        description="PSI of every scoring feature against the training data of each deployed model, champions and "
        f"challengers (its reference profile in Nexus): warns above {settings.inference.drift.warn_psi}, fails (and blocks scoring) above "
        f"{settings.inference.drift.fail_psi}.",
    )
    def feature_drift(context: AssetCheckExecutionContext) -> AssetCheckResult:
        drift = settings.inference.drift
        features = features_table.read(context, [scoring_day(context)])
        worst: dict[str, tuple[str, float]] = {}
        for deployment in manifest_deployments(context, settings):  # champions, and challengers (canary, UAT)
            eligible = features.filter(F.col(f"holds_{deployment.product_code}") == 0)  # the rows the model scores
            values = feature_psi(eligible, reference_profile(context.resources.nexus, deployment))
            label = (deployment.product_code if deployment.model_role == CHAMPION
                     else f"{deployment.product_code} ({deployment.model_role})")
            worst[label] = max(values.items(), key=lambda item: item[1])
        summary = {product: {"feature": feature, "psi": round(value, 4)} for product, (feature, value) in worst.items()}
        highest = max(value for _, value in worst.values())
        metadata = {"max_psi": MetadataValue.float(round(highest, 6)), "worst_feature_per_product": MetadataValue.json(summary)}
        if highest <= drift.warn_psi:
            return AssetCheckResult(passed=True, metadata=metadata)
        severity = AssetCheckSeverity.ERROR if highest > drift.fail_psi else AssetCheckSeverity.WARN
        drifted = ", ".join(f"{p}: {f} PSI {v:.3f}" for p, (f, v) in worst.items() if v > drift.warn_psi)
        message = (f"{SCORING_FEATURES_KEY.to_user_string()}: feature drift against the deployed models' training "
                   f"data ({drifted}); warn above {drift.warn_psi}, fail above {drift.fail_psi}")
        context.log.warning(message)
        return AssetCheckResult(passed=False, severity=severity, description=message, metadata=metadata)

    @asset(
        key=DEPLOYED_MODEL_KEY,
        # the lab's Nexus binaries, which reach this environment only through a promotion's release manifest
        deps=[AssetDep(BINARY_KEY, partition_mapping=AllPartitionMapping())],
        description=f"Per product, the champion (and any challenger) of the {settings.inference.deploys_from} "
        "release manifest, pulled from Nexus and loaded only if its sha256 matches the manifest; a mismatch refuses, "
        "and nothing is scored. A product without a champion is not scored.",
        metadata={"dagster/column_schema": table_schema(deployed_schema), "dagster/table_name": deployed_table.name},
        required_resource_keys=MODEL_RESOURCES, kinds={"nexus", "mlflow"}, **common,
    )
    def deployed_model(context: AssetExecutionContext) -> MaterializeResult:
        day = scoring_day(context)
        entries = manifest_deployments(context, settings)
        load_all(context.resources.nexus, entries)
        for deployment in entries:
            context.log.info(f"{deployment.describe()}: sha256 {deployment.model_sha256} verified, loaded")
        undeployed = [p for p in products if p not in scored_products(entries, products)]
        if undeployed:
            context.log.warning(f"no champion in the {settings.inference.deploys_from} release manifest for "
                                f"{', '.join(undeployed)}: not scored on {day}")
        rows = pd.DataFrame([{"snapshot_date": day, **asdict(d)} for d in entries])
        spark = context.resources.spark.get_session()
        version = deployed_table.write_partition(
            context, spark.createDataFrame(rows, schema=spark_schema(deployed_schema)), day.isoformat())
        register(context, deployed_table, DEPLOYED_MODEL_KEY.to_user_string())
        return MaterializeResult(metadata={
            "deployed": MetadataValue.md(rows.drop(columns=["snapshot_date"]).to_markdown(index=False)),
            "release_manifest": MetadataValue.text(f"resources/{settings.inference.deploys_from}.yaml"),
            "products_not_deployed": MetadataValue.json(undeployed),
            "table_version": MetadataValue.int(version),
        })

    @asset(
        key=SCORES_KEY,
        deps=[SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY],
        description="Every customer's propensity for each product they may be offered, with the product's rank for "
        "the customer, the model name, version and role (champion, or canary for the hash-selected "
        f"{settings.inference.canary_share:.0%} scored by the challenger), snapshot and scored-at time.",
        metadata={"dagster/column_schema": table_schema(scores_schema), "dagster/table_name": scores_table.name},
        required_resource_keys=MODEL_RESOURCES, kinds={"spark", "delta", "scikitlearn"}, **common,
    )
    def propensity_scores(context: AssetExecutionContext) -> MaterializeResult:
        day = scoring_day(context)
        share = settings.inference.canary_share
        # challengers score only a canary share; with none, they are not even pulled
        models = load_all(context.resources.nexus,
                          [d for d in deployed(context, settings) if d.model_role == CHAMPION or share > 0])
        features = features_table.read(context, [day])
        context.log.info(f"scoring {day} with {len(models)} model versions, canary share {share}")
        scores = score_customers(features, models, share, datetime.now(timezone.utc))
        version = scores_table.write_partition(context, scores, day.isoformat())
        register(context, scores_table, SCORES_KEY.to_user_string())
        written = scores_table.read(context, [day])
        summary = score_summary(written)
        context.log.info(f"scores {day}: {summary.rows} rows, table version {version}")
        return MaterializeResult(metadata={
            "dagster/row_count": MetadataValue.int(summary.rows),
            "rows_per_product_and_role": MetadataValue.json(summary.per_product_role),
            "canary_share_configured": MetadataValue.float(share),
            "canary_share_observed": MetadataValue.float(round(summary.role_share(CANARY_ROLE), 4)),
            "score_distribution": MetadataValue.md(inline_markdown(summary.histogram_png(day), "scores")),
            "table_version": MetadataValue.int(version),
        })

    def check(key, table, schema):
        return pandera_check(key, schema, lambda context: table.read(context, [scoring_day(context)]), RESOURCES,
                             partitions_def=daily, settings=settings)

    return [scoring_features, feature_drift, deployed_model, propensity_scores,
            check(SCORING_FEATURES_KEY, features_table, features_schema),
            check(DEPLOYED_MODEL_KEY, deployed_table, deployed_schema),
            check(SCORES_KEY, scores_table, scores_schema)]
