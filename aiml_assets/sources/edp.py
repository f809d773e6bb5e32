"""The four EDP data products we consume, as external assets observed through the catalog.

EDP owns them; we never materialize them. An observation records what the UI should show of each: row count, the
day of the latest event, the Delta table version (also the asset's data version) and the columns its model does not
declare (a schema drift). Each has a blocking pandera check, so bad source data stops everything that reads it; an
unexpected column fails it where the env file's `sources.extra_columns` says so for the product, else is a warning.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSpec, DataVersion, MetadataValue, ObserveResult, multi_observable_source_asset
from pyspark.sql import functions as F

from aiml_assets.quality import extra_columns, pandera_check, table_schema
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings
from aiml_assets.sources.relationships import relationship_checks
from aiml_assets.sources.schemas import SOURCE_MODELS, source_models

EDP_GROUP = "edp_sources"
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


def asset_key(table_name: str) -> AssetKey:
    """`edp.fdp.customers` -> `edp/fdp/customers`: the asset graph uses the catalog's own names."""
    return AssetKey(table_name.split("."))


def _spec(name: str) -> AssetSpec:
    return AssetSpec(
        key=asset_key(name),
        group_name=EDP_GROUP,
        owners=[EDP_OWNER],
        kinds={"unity-catalog", "delta"},
        description=DESCRIPTIONS[name],
        tags={"edp_layer": name.split(".")[1]},
        metadata={"dagster/table_name": name, "dagster/column_schema": table_schema(SOURCE_MODELS[name])},
    )


@multi_observable_source_asset(specs=[_spec(name) for name in SOURCE_MODELS], can_subset=True,
                               required_resource_keys={STEP_LAUNCHER_KEY, "spark", "catalog"})
def edp_source_products(context):
    session, catalog = context.resources.spark.get_session(), context.resources.catalog
    for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
        name = ".".join(key.path)
        version = catalog.version(name)
        product = catalog.read(session, name)
        # the day, not the time: the latest event is one customer's
        stats = product.agg(F.count(F.lit(1)).alias("rows"), F.to_date(F.max(EVENT_TIME[name])).alias("latest")).first()
        drift = extra_columns(SOURCE_MODELS[name], product)
        context.log.info(f"observed {name}: {stats['rows']} rows, version {version}")
        if drift:
            context.log.warning(f"{name}: {len(drift)} column(s) its model does not declare: {', '.join(drift)}")
        yield ObserveResult(
            asset_key=key,
            data_version=DataVersion(str(version)),
            metadata={
                "dagster/row_count": MetadataValue.int(stats["rows"]),
                "latest_event_time": MetadataValue.text(str(stats["latest"])),
                "table_version": MetadataValue.int(version),
                "extra_columns": MetadataValue.text(", ".join(drift) or "none"),
            },
        )


def _reader(name: str):
    return lambda context: context.resources.catalog.read(context.resources.spark.get_session(), name)


def source_checks(settings: Settings) -> list:
    """The blocking checks of the products, from `settings`: one pandera check per product (columns, ranges, extra
    columns), and one per child product across rows and products (references, event order, natural keys, monthly
    completeness and volume)."""
    schemas = [pandera_check(asset_key(name), model, _reader(name), {"spark", "catalog"}, settings=settings)
               for name, model in source_models(settings).items()]
    return schemas + relationship_checks(settings, asset_key, _reader)
