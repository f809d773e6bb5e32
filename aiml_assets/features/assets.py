"""Lab feature assets: customer features and training sets per monthly snapshot, in the perishable lab bucket, built
in one step (one Databricks run): the training set is labelled from the features this step just audited.

Write-audit-publish: each run computes its snapshots, audits every one against its pandera schema in the step, and
only then replaces their partitions. A failing features rule fails the step with the check's result: neither table
is written, the partitions already there stay current, and nothing downstream runs. A failing training-set rule
leaves the features written and the training set's partitions as they were. A data scientist can materialize either
key alone; the training set alone labels the features table as it is."""


from collections.abc import Callable, Generator
from datetime import date, timedelta

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    MonthlyPartitionsDefinition,
    multi_asset,
)
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import TableAccess, lab_table
from aiml_assets.audited_write import audit_spec, audited
from aiml_assets.features.customer_features import customer_features, offers
from aiml_assets.features.profile import profile_by_partition, take_up_by_partition
from aiml_assets.features.schemas import customer_features_schema, training_set_schema
from aiml_assets.keys import FEATURES_GROUP as GROUP, FEATURES_KEY, TRAINING_KEY, StepLauncherParam
from aiml_assets.quality import Model, refuse_unchecked, table_schema
from aiml_assets.resources.audit import AuditLog
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings
from aiml_assets.sources.edp import CUSTOMERS, HOLDINGS, RESPONSES, TRANSACTIONS, asset_key
from aiml_assets.sources.erased import read_sources
from aiml_assets.sources.horizon import DataHorizon, horizon_of, refuse_unfillable

__all__ = ["GROUP", "FEATURES_KEY", "TRAINING_KEY", "lab_feature_assets", "labelled", "transaction_bounds"]

Staged = dict[date, DataFrame]


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


def _persisted(frames: Staged) -> Staged:
    return {snapshot: df.persist(StorageLevel.MEMORY_AND_DISK) for snapshot, df in frames.items()}


def _publish(context: AssetExecutionContext, io: TableAccess, settings: Settings, key: AssetKey, model: Model,
             staged: Staged, describe: Callable[[Staged], dict[str, dict]]) -> Generator:
    """Audit every staged snapshot of `key`, then replace their partitions, each with its own metadata (`describe`:
    per partition key, from the staged frames); the materialization carries the passing check."""
    result = yield from audited(context.log, io, key, model, staged, settings)
    metadata = describe(staged)
    table = lab_table(settings, key)
    for snapshot, df in staged.items():
        version = table.write_partition(io, df, snapshot.isoformat())
        context.add_asset_metadata({**metadata.get(snapshot.isoformat(), {}), "table_version": MetadataValue.int(version)},
                                   asset_key=key, partition_key=snapshot.isoformat())
        context.log.info(f"{key.to_user_string()} as of {snapshot}: audited and written, table version {version}")
    table.register(io, comment=f"{key.to_user_string()}: lab asset, perishable",
                   properties={"retention_days": settings.storage.retention_days,
                               "dagster_asset": key.to_user_string()})
    yield MaterializeResult(asset_key=key, check_results=[result],
                            metadata={"snapshots": MetadataValue.text(", ".join(context.partition_keys))})


def _specs(settings: Settings, feature_schema: Model, training_schema: Model) -> list[AssetSpec]:
    retention = settings.storage.retention_days
    common = dict(
        group_name=GROUP,
        freshness_policy=FreshnessPolicy.time_window(
            fail_window=timedelta(days=retention), warn_window=timedelta(days=retention - 15)
        ),
        owners=["team:aiml"],
        kinds={"spark", "delta"},
        skippable=True,  # either key alone is a valid selection
    )

    def table_metadata(key: AssetKey, model: Model) -> dict:
        return {"dagster/column_schema": table_schema(model), "dagster/table_name": lab_table(settings, key).name}

    return [
        AssetSpec(FEATURES_KEY, deps=[asset_key(name) for name in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES)],
                  description="Per customer as of each snapshot: tenure, demographics, spend and recency over "
                  "30/90/365 days, category shares, holdings, campaign contact; only from events strictly before "
                  "the snapshot.", metadata=table_metadata(FEATURES_KEY, feature_schema), **common),
        AssetSpec(TRAINING_KEY, deps=[FEATURES_KEY, asset_key(HOLDINGS), asset_key(TRANSACTIONS)],
                  description=f"Customer features joined with labels per product: was the product taken up within "
                  f"{settings.features.label_window_days} days after the snapshot (customers already holding it are "
                  "not eligible).", metadata=table_metadata(TRAINING_KEY, training_schema), **common),
    ]


def lab_feature_assets(settings: Settings) -> list:
    products = settings.products
    window = timedelta(days=settings.features.label_window_days)
    feature_schema, training_schema = customer_features_schema(products), training_set_schema(products)
    audits: list[AssetCheckSpec] = [audit_spec(FEATURES_KEY, feature_schema, settings),
                                    audit_spec(TRAINING_KEY, training_schema, settings)]

    def refuse_unfillable_snapshots(selected, horizon: DataHorizon, snapshots: list[date]) -> None:
        if FEATURES_KEY in selected:
            refuse_unfillable(FEATURES_KEY, horizon, snapshots,
                              lambda horizon, snapshot: None if horizon.fills_features(snapshot) else
                              f"features as of {snapshot} would miss the events from {horizon.scoring_day} on")
        if TRAINING_KEY in selected:
            refuse_unfillable(TRAINING_KEY, horizon, snapshots,
                              lambda horizon, snapshot: None if horizon.completes_labels(snapshot, window.days) else
                              f"the {window.days}-day label window ends {snapshot + window}; labels would be "
                              "incomplete")

    @multi_asset(
        name="lab_features",
        specs=_specs(settings, feature_schema, training_schema),
        check_specs=audits,
        can_subset=True,
        partitions_def=MonthlyPartitionsDefinition(start_date=settings.features.snapshot_start.isoformat()),
        backfill_policy=BackfillPolicy.single_run(),
    )
    def lab_features(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam, spark: SparkResource,
                     catalog: Catalog, tables: DeltaTables, storage: Storage, audit: AuditLog):
        refuse_unchecked(context.selected_asset_keys, context.selected_asset_check_keys, audits)
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        snapshots, selected = [date.fromisoformat(key) for key in context.partition_keys], context.selected_asset_keys
        sources = read_sources(spark, catalog, audit, settings)
        horizon, spans = transaction_bounds(sources.transactions, snapshots)
        refuse_unfillable_snapshots(selected, horizon, snapshots)  # before anything is computed or written

        def described_features(staged: Staged) -> dict[str, dict]:
            return {key: {**profile, "min_event_time_used": MetadataValue.text(str(spans[key][0])),
                          "max_event_time_used": MetadataValue.text(str(spans[key][1]))}
                    for key, profile in profile_by_partition(staged.values(), "snapshot_date").items()}

        features = rows = {}
        try:
            if FEATURES_KEY in selected:
                features = _persisted({snapshot: customer_features(sources, snapshot, products)
                                       for snapshot in snapshots})
                yield from _publish(context, io, settings, FEATURES_KEY, feature_schema, features, described_features)
            else:  # the training set alone: from the features table as it is
                features = {snapshot: lab_table(settings, FEATURES_KEY).read(io, [snapshot]) for snapshot in snapshots}
            if TRAINING_KEY in selected:
                rows = _persisted({snapshot: labelled(df, sources.holdings, snapshot, window, products)
                                   for snapshot, df in features.items()})
                yield from _publish(context, io, settings, TRAINING_KEY, training_schema, rows,
                                    lambda staged: take_up_by_partition(staged.values(), "snapshot_date"))
        finally:  # on a failed audit too: the session outlives the step locally
            for df in [*features.values(), *rows.values()]:
                df.unpersist()

    return [lab_features]
