"""Lab feature assets: customer features and training sets per monthly snapshot, in the perishable lab bucket.

Write-audit-publish: each run computes its snapshots, audits every one against its pandera schema in the asset's own
step, and only then replaces their partitions. A failing rule fails the step with the check's result: nothing is
written, the partitions already there stay current, and nothing downstream runs."""


from datetime import date, timedelta

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    MonthlyPartitionsDefinition,
    asset,
)
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import lab_table
from aiml_assets.features.customer_features import Sources, customer_features, offers
from aiml_assets.features.profile import profile_by_partition
from aiml_assets.features.schemas import customer_features_schema, training_set_schema
from aiml_assets.governance.erased import erased_digests, without_erased
from aiml_assets.audited_write import audit_spec, audited
from aiml_assets.quality import table_schema
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings
from aiml_assets.sources.edp import CUSTOMERS, HOLDINGS, RESPONSES, TRANSACTIONS, asset_key
from aiml_assets.sources.horizon import DataHorizon, horizon_of, observed_horizon, refuse_unfillable

GROUP = "lab_features"
FEATURES_KEY = AssetKey(["lab", "customer_features"])
TRAINING_KEY = AssetKey(["lab", "training_set"])
RESOURCES = {STEP_LAUNCHER_KEY, "spark", "catalog", "tables", "storage", "audit"}


def read_sources(context, settings: Settings) -> Sources:
    """The EDP products, by catalog name, without the customers whose erasure was requested (GDPR)."""
    spark, catalog = context.resources.spark.get_session(), context.resources.catalog
    customers, *others = (catalog.read(spark, name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES))
    return Sources(*without_erased(customers, others, erased_digests(context.resources.audit),
                                   settings))


def transaction_bounds(transactions: DataFrame, snapshots: list[date]) -> tuple[DataHorizon, dict[str, tuple]]:
    """The data horizon and, per snapshot, the days of the earliest and latest transaction its features read (the
    365 days before it): one Spark job."""
    ts = F.col("transaction_ts")
    bounds = [F.max(ts).alias("latest")]
    for i, snapshot in enumerate(snapshots):
        start = F.lit(snapshot - timedelta(days=365)).cast("timestamp")
        used = (ts < F.lit(snapshot).cast("timestamp")) & (ts >= start)
        # days, not times: the exact time of the first or last event is one customer's transaction
        bounds += [F.to_date(F.min(F.when(used, ts))).alias(f"lo{i}"),
                   F.to_date(F.max(F.when(used, ts))).alias(f"hi{i}")]
    row = transactions.agg(*bounds).first()
    spans = {snapshot.isoformat(): (row[f"lo{i}"], row[f"hi{i}"]) for i, snapshot in enumerate(snapshots)}
    return horizon_of(row["latest"]), spans


def _snapshots(context) -> list[date]:
    return [date.fromisoformat(key) for key in context.partition_keys]


def _write_snapshot(context, settings: Settings, key: AssetKey, df: DataFrame, snapshot: date) -> int:
    return lab_table(settings, key).write_partition(context, df, snapshot.isoformat())


def _register(context, settings: Settings, key: AssetKey) -> None:
    lab_table(settings, key).register(
        context, comment=f"{key.to_user_string()}: lab asset, perishable",
        properties={"retention_days": settings.storage.retention_days, "dagster_asset": key.to_user_string()},
    )


def _read_snapshots(context, settings: Settings, key: AssetKey, snapshots: list[date]) -> DataFrame:
    return lab_table(settings, key).read(context, snapshots)


def lab_feature_assets(settings: Settings) -> list:
    features = settings.features
    retention = settings.storage.retention_days
    snapshots = MonthlyPartitionsDefinition(start_date=features.snapshot_start.isoformat())
    common = dict(
        group_name=GROUP,
        partitions_def=snapshots,
        backfill_policy=BackfillPolicy.single_run(),
        freshness_policy=FreshnessPolicy.time_window(
            fail_window=timedelta(days=retention), warn_window=timedelta(days=retention - 15)
        ),
        required_resource_keys=RESOURCES,
        owners=["team:aiml"],
        kinds={"spark", "delta"},
    )
    products = settings.products
    feature_schema, training_schema = customer_features_schema(products), training_set_schema(products)

    feature_check, training_check = audit_spec(FEATURES_KEY, feature_schema), audit_spec(TRAINING_KEY, training_schema)

    @asset(
        key=FEATURES_KEY,
        deps=[asset_key(name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES)],
        description="Per customer as of each snapshot: tenure, demographics, spend and recency over 30/90/365 "
        "days, category shares, holdings, campaign contact; only from events strictly before the snapshot.",
        metadata={"dagster/column_schema": table_schema(feature_schema),
                  "dagster/table_name": lab_table(settings, FEATURES_KEY).name},
        check_specs=[feature_check],
        **common,
    )
    def customer_features_asset(context: AssetExecutionContext):
        sources = read_sources(context, settings)
        horizon, spans = transaction_bounds(sources.transactions, _snapshots(context))
        refuse_unfillable(FEATURES_KEY, horizon, _snapshots(context),
                          lambda horizon, snapshot: None if horizon.fills_features(snapshot) else
                          f"features as of {snapshot} would miss the events from {horizon.scoring_day} on")
        staged = {}
        for snapshot in _snapshots(context):
            context.log.info(f"customer features as of {snapshot}: computing")
            staged[snapshot] = customer_features(sources, snapshot, products).persist(StorageLevel.MEMORY_AND_DISK)
        result = yield from audited(context, FEATURES_KEY, feature_schema, staged, settings)
        for snapshot, df in staged.items():
            version = _write_snapshot(context, settings, FEATURES_KEY, df, snapshot)
            lo, hi = spans[snapshot.isoformat()]
            [profile] = profile_by_partition(df, "snapshot_date").values()
            context.add_asset_metadata({**profile, "table_version": MetadataValue.int(version),
                                        "min_event_time_used": MetadataValue.text(str(lo)),
                                        "max_event_time_used": MetadataValue.text(str(hi))},
                                       partition_key=snapshot.isoformat())
            context.log.info(f"customer features as of {snapshot}: audited and written, table version {version}")
            df.unpersist()
        _register(context, settings, FEATURES_KEY)
        yield MaterializeResult(check_results=[result])

    @asset(
        key=TRAINING_KEY,
        deps=[FEATURES_KEY, asset_key(HOLDINGS), asset_key(TRANSACTIONS)],
        description=f"Customer features joined with labels per product: was the product taken up within "
        f"{features.label_window_days} days after the snapshot (customers already holding it are not eligible).",
        metadata={"dagster/column_schema": table_schema(training_schema),
                  "dagster/table_name": lab_table(settings, TRAINING_KEY).name},
        check_specs=[training_check],
        **common,
    )
    def training_set_asset(context: AssetExecutionContext):
        sources = read_sources(context, settings)
        window = timedelta(days=features.label_window_days)
        refuse_unfillable(TRAINING_KEY, observed_horizon(sources.transactions), _snapshots(context),
                          lambda horizon, snapshot: None if horizon.completes_labels(snapshot, window.days) else
                          f"the {window.days}-day label window ends {snapshot + window}; labels would be incomplete")
        staged = {snapshot: labelled(_read_snapshots(context, settings, FEATURES_KEY, [snapshot]), sources.holdings,
                                     snapshot, window, products).persist(StorageLevel.MEMORY_AND_DISK)
                  for snapshot in _snapshots(context)}
        result = yield from audited(context, TRAINING_KEY, training_schema, staged, settings)
        for snapshot, rows in staged.items():
            _write_snapshot(context, settings, TRAINING_KEY, rows, snapshot)
            stats = {r["product_code"]: (r["rows"], r["rate"]) for r in rows.groupBy("product_code").agg(
                F.count(F.lit(1)).alias("rows"), F.avg("label").alias("rate")).collect()}
            context.add_asset_metadata({
                "dagster/row_count": MetadataValue.int(sum(n for n, _ in stats.values())),
                "rows_per_product": MetadataValue.json({p: n for p, (n, _) in sorted(stats.items())}),
                "positive_rate_per_product": MetadataValue.json({p: round(r, 5)
                                                                 for p, (_, r) in sorted(stats.items())}),
            }, partition_key=snapshot.isoformat())
            context.log.info(f"training set as of {snapshot}: audited and written")
            rows.unpersist()
        _register(context, settings, TRAINING_KEY)
        yield MaterializeResult(metadata={"snapshots": MetadataValue.text(", ".join(context.partition_keys))},
                                check_results=[result])

    return [customer_features_asset, training_set_asset]


def labelled(features: DataFrame, holdings: DataFrame, snapshot: date, window: timedelta, products: list[str]):
    """One row per eligible (customer, product): label 1 if opened within [snapshot, snapshot + window)."""
    start, end = F.lit(snapshot).cast("date"), F.lit(snapshot + window).cast("date")
    taken = (
        holdings.filter((F.col("opened_date") >= start) & (F.col("opened_date") < end))
        .select("customer_id", "product_code").distinct().withColumn("label", F.lit(1))
    )
    # `taken` is one window of openings: small enough to broadcast, so the exploded offers are not shuffled
    return offers(features, products).join(F.broadcast(taken), ["customer_id", "product_code"], "left").fillna(
        0, subset=["label"])
