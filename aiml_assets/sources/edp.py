"""The four EDP data products we consume, as external assets observed through the catalog.

EDP owns them; we never materialize them. An observation records what the UI should show of each: row count,
latest event time and the Delta table version, which is also the asset's data version.
"""

from __future__ import annotations

import pyarrow as pa
from dagster import (
    AssetKey,
    AssetSpec,
    DataVersion,
    MetadataValue,
    ObserveResult,
    TableColumn,
    TableSchema,
    multi_observable_source_asset,
)
from pyspark.sql import functions as F

from aiml_assets.edp.seed import EDP_PRODUCTS
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource

EDP_GROUP = "edp_sources"
EDP_OWNER = "team:edp"

# The column that says when each product's rows happened, for the "latest event time" observation.
EVENT_TIME = {
    "edp.fdp.customers": "joined_date",
    "edp.fdp.transactions": "transaction_ts",
    "edp.cdp.product_holdings": "opened_date",
    "edp.bdp.campaign_responses": "contact_date",
}


def asset_key(table_name: str) -> AssetKey:
    """`edp.fdp.customers` -> `edp/fdp/customers`: the asset graph uses the catalog's own names."""
    return AssetKey(table_name.split("."))


def table_name(key: AssetKey) -> str:
    return ".".join(key.path)


def table_schema(schema: pa.Schema, descriptions: dict[str, str]) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(field.name, str(field.type), description=descriptions.get(field.name))
            for field in schema
        ]
    )


def _spec(name: str, product) -> AssetSpec:
    return AssetSpec(
        key=asset_key(name),
        group_name=EDP_GROUP,
        owners=[EDP_OWNER],
        kinds={"unity-catalog", "delta"},
        description=product.description,
        tags={"edp_layer": product.layer},
        metadata={
            "dagster/table_name": name,
            "dagster/column_schema": table_schema(product.schema, product.column_descriptions),
        },
    )


EDP_SPECS = [_spec(name, product) for name, product in EDP_PRODUCTS.items()]


@multi_observable_source_asset(specs=EDP_SPECS, can_subset=True, name="edp_source_products")
def edp_source_products(context, spark: SparkResource, catalog: Catalog):
    session = spark.get_session()
    for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
        name = table_name(key)
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
                "table_name": MetadataValue.text(name),
            },
        )
