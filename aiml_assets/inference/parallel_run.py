"""UAT's parallel run: the champion and the challenger score the same customers side by side, and the report says
how far apart they are (score shift per product, rank agreement). UAT never publishes to EDP."""


from datetime import datetime, timezone

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, asset
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import TableAccess, scoring_table
from aiml_assets.inference.assets import deployed, scoring_day, scoring_partitions
from aiml_assets.inference.deployment import CHALLENGER, CHAMPION, load_all, scored_products
from aiml_assets.inference.schemas import parallel_run_schema
from aiml_assets.inference.scoring import score_customers
from aiml_assets.inference.step_checks import materialized
from aiml_assets.keys import (
    DEPLOYED_MODEL_KEY, PARALLEL_RUN_GROUP as GROUP, PARALLEL_RUN_KEY, SCORING_FEATURES_KEY, StepLauncherParam,
)
from aiml_assets.models.reference_profile import psi
from aiml_assets.quality import schema_check, schema_check_spec, table_schema
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.nexus import NexusRepository
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings

DECILES = [i / 10 for i in range(1, 10)]


def _side(scores: DataFrame, role: str) -> DataFrame:
    return scores.select("customer_id", "snapshot_date", "product_code", F.col("score").alias(f"{role}_score"),
                         F.col("rank").alias(f"{role}_rank"), F.col("model_version").alias(f"{role}_version"))


def _decile(score: str) -> Column:
    return F.size(F.filter("edges", lambda edge: edge <= F.col(score)))


def score_shift(side_by_side: DataFrame) -> pd.DataFrame:
    """Per product: mean absolute score difference, correlation, same rank share, and the PSI of the challenger's
    scores over the champion's deciles. Two Spark jobs whatever the number of products."""
    stats = side_by_side.groupBy("product_code").agg(
        F.count(F.lit(1)).alias("rows"),
        F.avg(F.abs(F.col("challenger_score") - F.col("champion_score"))).alias("mean_abs_diff"),
        F.corr("champion_score", "challenger_score").alias("score_correlation"),
        F.avg((F.col("champion_rank") == F.col("challenger_rank")).cast("double")).alias("same_rank_share"),
        F.percentile_approx("champion_score", DECILES, 10_000).alias("edges"),
    )
    # each score's decile of its product's champion scores: the number of edges at or below it
    buckets = side_by_side.join(F.broadcast(stats.select("product_code", "edges")), "product_code").select(
        "product_code", F.explode(F.array(*[
            F.struct(F.lit(role).alias("role"), _decile(f"{role}_score").alias("bucket"))
            for role in ("champion", "challenger")])).alias("b"))
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for row in buckets.groupBy("product_code", "b.role", "b.bucket").count().collect():
        counts.setdefault(row["product_code"], {}).setdefault(row["role"], {})[f"b{row['bucket']}"] = row["count"]
    shifts = {}
    for product, by_role in counts.items():
        total = sum(by_role["champion"].values())
        shifts[product] = psi({k: v / total for k, v in by_role["champion"].items()}, by_role.get("challenger", {}))
    frame = stats.drop("edges").toPandas().set_index("product_code")
    return frame.assign(score_psi=pd.Series(shifts)).round(5)


def comparison(report: DataFrame, without_challenger: list[str]) -> dict:
    """The parallel run's metadata: score shift per product, and how often the customer's best product agrees."""
    best = report.filter((F.col("champion_rank") == 1) | (F.col("challenger_rank") == 1)).groupBy("customer_id").agg(
        F.max(F.when(F.col("champion_rank") == 1, F.col("product_code"))).alias("a"),
        F.max(F.when(F.col("challenger_rank") == 1, F.col("product_code"))).alias("b"))
    agreement = best.agg(F.avg((F.col("a") == F.col("b")).cast("double"))).first()[0] or 0.0
    return {"score_shift_per_product": MetadataValue.md(score_shift(report).to_markdown()),
            "best_product_agreement": MetadataValue.float(round(float(agreement), 5)),
            "products_without_challenger": MetadataValue.json(without_challenger)}


def parallel_run_assets(settings: Settings) -> list:
    products, daily = settings.products, scoring_partitions(settings)
    features_table = scoring_table(settings, SCORING_FEATURES_KEY)
    report_table, schema = scoring_table(settings, PARALLEL_RUN_KEY), parallel_run_schema(products)

    @asset(
        key=PARALLEL_RUN_KEY, deps=[SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY],
        group_name=GROUP, partitions_def=daily, owners=["team:aiml"], kinds={"spark", "delta"},
        description="Champion and challenger scores side by side for every customer and product, with the "
        "differences per product (mean absolute difference, correlation, same rank share, score PSI) and the share "
        "of customers whose best product is the same. A product without a challenger compares its champion with "
        "itself.",
        metadata={"dagster/column_schema": table_schema(schema), "dagster/table_name": report_table.name},
        check_specs=[schema_check_spec(PARALLEL_RUN_KEY, schema, settings)],
    )
    def parallel_run_report(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam,
                            spark: SparkResource, catalog: Catalog, tables: DeltaTables, storage: Storage,
                            nexus: NexusRepository):
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        day = scoring_day(context.partition_key)
        deployments = deployed(io, settings, day)
        entries = {(d.product_code, d.model_role): d for d in deployments}
        features = features_table.read(io, [day])
        now = datetime.now(timezone.utc)
        models = load_all(nexus, list(entries.values()))
        sides = []
        deployed_products = scored_products(deployments, products)
        for role in (CHAMPION, CHALLENGER):  # a product without a challenger faces its champion
            chosen = {(p, CHAMPION): models.get((p, role), models[(p, CHAMPION)]) for p in deployed_products}
            sides.append(_side(score_customers(features, chosen, 0.0, now), role))
        side_by_side = sides[0].join(sides[1], ["customer_id", "snapshot_date", "product_code"])
        version = report_table.write_partition(io, side_by_side.select(*schema.columns), context.partition_key)
        report_table.register(io, comment="UAT parallel run: champion and challenger scores side by side",
                              properties={"dagster_asset": PARALLEL_RUN_KEY.to_user_string()})
        written = report_table.read(io, [day]).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            result = schema_check(context.log, io, PARALLEL_RUN_KEY, schema, written, settings, context.partition_key)
            metadata = {"dagster/row_count": result.metadata["rows"], "table_version": MetadataValue.int(version)}
            if result.passed:
                metadata |= comparison(written, [p for p in deployed_products if (p, CHALLENGER) not in entries])
                context.log.info(f"parallel run {day}: best product agrees for "
                                 f"{metadata['best_product_agreement'].value:.1%} of customers")
        finally:
            written.unpersist()
        yield from materialized(PARALLEL_RUN_KEY, metadata, [result])

    return [parallel_run_report]
