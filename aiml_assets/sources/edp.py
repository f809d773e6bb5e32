"""The four EDP data products we consume, as external assets observed through the catalog.

EDP owns them; we never materialize them. An observation records what the UI should show of each: row count, the
day of the latest event, the Delta table version (also the asset's data version) and the columns its model does not
declare (a schema drift).

The same step then evaluates their blocking checks (declared on the observation, so each stays separately named in
the UI): a pandera check per product (an unexpected column fails it where the env file's `sources.extra_columns`
says so for the product, else is a warning) and a relationship check per child product (relationships.py). Each
product is read once, at the version observed, and kept for the passes that read it. A failing check fails the
step, and Dagster runs nothing that depends on the products (their outputs are the downstream steps' inputs).
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation when the asset is decorated.
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetCheckKey, AssetCheckResult, AssetExecutionContext, AssetKey, AssetsDefinition, AssetSpec, DataVersion, Failure,
    MetadataValue, ObserveResult, multi_observable_source_asset,
)
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import TableAccess
from aiml_assets.keys import EDP_GROUP, StepLauncherParam
from aiml_assets.quality import (check_name, extra_columns, refuse_unchecked, schema_check, schema_check_spec,
                                  table_schema)
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings
from aiml_assets.sources.relationships import CHECK_NAME, CHILDREN, relationship_check, relationship_check_specs
from aiml_assets.sources.schemas import SOURCE_MODELS, asset_key, source_models

EDP_OWNER = "team:edp"
CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES = SOURCE_MODELS

DESCRIPTIONS = {
    CUSTOMERS: "Customer master (FDP): one row per retail customer with demographics, segment and tenure",
    TRANSACTIONS: "Card and direct-debit transactions of the customers' current accounts (FDP)",
    HOLDINGS: "Customers' product holdings (CDP): cards, loans, mortgages, savings, insurance, ISAs",
    RESPONSES: "Marketing campaign contacts per customer and product, with the response (BDP)",
}
# The column that says when each product's rows happened, for the "latest event time" observation.
EVENT_TIME = {CUSTOMERS: "joined_date", TRANSACTIONS: "transaction_ts", HOLDINGS: "opened_date",
              RESPONSES: "contact_date"}


def _spec(name: str, model) -> AssetSpec:
    return AssetSpec(
        key=asset_key(name),
        group_name=EDP_GROUP,
        owners=[EDP_OWNER],
        kinds={"unity-catalog", "delta"},
        description=DESCRIPTIONS[name],
        tags={"edp_layer": name.split(".")[1]},
        metadata={"dagster/table_name": name, "dagster/column_schema": table_schema(model)},
    )


class _Products:
    """Each product read once, at the Delta version it is observed at, and persisted for the passes that read it
    (observation, pandera check, the relationship checks of its children)."""

    def __init__(self, spark: SparkResource, catalog: Catalog):
        self.session, self.catalog = spark.get_session(), catalog
        self.versions: dict[str, int] = {}
        self.frames: dict[str, DataFrame] = {}

    def version(self, name: str) -> int:
        if name not in self.versions:
            self.versions[name] = self.catalog.version(name)
        return self.versions[name]

    def read(self, name: str) -> DataFrame:
        if name not in self.frames:
            df = self.catalog.read(self.session, name, self.version(name))
            self.frames[name] = df.persist(StorageLevel.MEMORY_AND_DISK)
        return self.frames[name]

    def release(self) -> None:
        for df in self.frames.values():
            df.unpersist()


@contextmanager
def _products(spark: SparkResource, catalog: Catalog) -> Iterator[_Products]:
    products = _Products(spark, catalog)
    try:
        yield products
    finally:
        products.release()


def _observe(log, products: _Products, name: str, model) -> ObserveResult:
    product, version = products.read(name), products.version(name)
    # the day, not the time: the latest event is one customer's
    stats = product.agg(F.count(F.lit(1)).alias("rows"), F.to_date(F.max(EVENT_TIME[name])).alias("latest")).first()
    drift = extra_columns(model, product)
    log.info(f"observed {name}: {stats['rows']} rows, version {version}")
    if drift:
        log.warning(f"{name}: {len(drift)} column(s) its model does not declare: {', '.join(drift)}")
    return ObserveResult(
        asset_key=asset_key(name),
        data_version=DataVersion(str(version)),
        metadata={
            "dagster/row_count": MetadataValue.int(stats["rows"]),
            "latest_event_time": MetadataValue.text(str(stats["latest"])),
            "table_version": MetadataValue.int(version),
            "extra_columns": MetadataValue.text(", ".join(drift) or "none"),
        },
    )


def _check_order(key: AssetCheckKey) -> tuple[str, str]:
    return key.asset_key.to_user_string(), key.name


def edp_source_products_for(settings: Settings) -> AssetsDefinition:
    """The observation of the EDP products with every blocking check of theirs (`settings` gives the models'
    ranges and strictness, the volume band, the quarantine tables): one step, so one Databricks run."""
    models = source_models(settings)
    schema_checks = {AssetCheckKey(asset_key(name), check_name(model)): name for name, model in models.items()}
    relationship_checks = {AssetCheckKey(asset_key(child), CHECK_NAME): child for child in CHILDREN}
    check_specs = ([schema_check_spec(asset_key(name), model, settings) for name, model in models.items()]
                   + relationship_check_specs(settings))

    @multi_observable_source_asset(
        name="edp_source_products",
        specs=[_spec(name, model) for name, model in models.items()],
        check_specs=check_specs,
        can_subset=True,
    )
    def edp_source_products(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam,
                            spark: SparkResource, catalog: Catalog, tables: DeltaTables,
                            storage: Storage) -> Iterator[ObserveResult | AssetCheckResult]:
        refuse_unchecked(context.selected_asset_keys, context.selected_asset_check_keys, check_specs,
                         checks_alone=True)
        io = TableAccess(spark, catalog, tables, storage, context.run.run_id)
        with _products(spark, catalog) as products:

            def evaluated(key: AssetCheckKey) -> AssetCheckResult:
                if name := schema_checks.get(key):
                    return schema_check(context.log, io, key.asset_key, models[name], products.read(name), settings)
                return relationship_check(context.log, io, relationship_checks[key], products.read, settings,
                                          context.run.tags)

            for key in sorted(context.selected_asset_keys, key=AssetKey.to_user_string):
                name = ".".join(key.path)
                yield _observe(context.log, products, name, models[name])
            results = []
            for key in sorted(context.selected_asset_check_keys, key=_check_order):
                results.append(evaluated(key))
                yield results[-1]
        if failed := [r.description for r in results if not r.passed]:
            raise Failure("\n".join(failed), allow_retries=False)  # the data is what it is: a retry fails the same

    return edp_source_products
