"""The four EDP data products we consume, as external assets observed through the catalog.

EDP owns them; we never materialize them. An observation records what the UI should show of each: row count,
latest event time and the Delta table version, which is also the asset's data version. Each has a blocking
pandera check, so bad source data stops everything that reads it.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSpec, DataVersion, MetadataValue, ObserveResult, multi_observable_source_asset
from pyspark.sql import functions as F

from aiml_assets.quality import pandera_check, table_schema
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.sources.schemas import SOURCE_MODELS

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
        stats = catalog.read(session, name).agg(
            F.count(F.lit(1)).alias("rows"), F.max(EVENT_TIME[name]).alias("latest")
        ).first()
        context.log.info(f"observed {name}: {stats['rows']} rows, version {version}")
        yield ObserveResult(
            asset_key=key,
            data_version=DataVersion(str(version)),
            metadata={
                "dagster/row_count": MetadataValue.int(stats["rows"]),
                "latest_event_time": MetadataValue.text(str(stats["latest"])),
                "table_version": MetadataValue.int(version),
            },
        )


def _reader(name: str):
    return lambda context: context.resources.catalog.read(context.resources.spark.get_session(), name)


EDP_CHECKS = [pandera_check(asset_key(name), model, _reader(name), {"spark", "catalog"})
              for name, model in SOURCE_MODELS.items()]
