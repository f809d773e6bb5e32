"""Where an asset's Delta table lives: a bucket role and key for writing, a three-level catalog name for reading.

Lab assets write to the perishable lab bucket, scoring assets to the environment's scoring bucket; either way they
read back (and everyone downstream reads) by catalog name only.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings


@dataclass(frozen=True)
class TableAccess:
    """What an asset's tables are read and written with: its resources, typed, and the run that writes."""

    spark: SparkResource
    catalog: Catalog
    tables: DeltaTables
    storage: Storage
    run_id: str


@dataclass(frozen=True)
class AssetTable:
    name: str  # catalog.schema.table
    role: str  # bucket role in resources/<env>.yaml
    key: str  # key of the table's folder in that bucket
    partition_column: str | None  # None: unpartitioned, each write replaces the whole table
    owner: str  # the catalog principal that owns the table

    def location(self, io: TableAccess) -> str:
        return io.storage.uri(self.role, self.key)

    def write_partition(self, io: TableAccess, df: DataFrame, value: str) -> int:
        """Replace one partition atomically; returns the table's new Delta version."""
        return io.tables.write(df, self.location(io), run_id=io.run_id, partition_by=[self.partition_column],
                               replace={self.partition_column: value})

    def overwrite(self, io: TableAccess, df: DataFrame) -> int:
        """Replace the whole table atomically; returns its new Delta version."""
        return io.tables.write(df, self.location(io), run_id=io.run_id)

    def register(self, io: TableAccess, *, comment: str, properties: dict) -> None:
        """Name the table in the catalog (on Unity Catalog a few SQL statements, so once per run)."""
        io.catalog.register(self.name, self.location(io), owner=self.owner, comment=comment, properties=properties)

    def read(self, io: TableAccess, values: list | None = None) -> DataFrame:
        table = io.catalog.read(io.spark.get_session(), self.name)
        return table if values is None else table.filter(F.col(self.partition_column).isin(values))


SCHEMA_OF_ROLE = {"lab": "lab", "scoring": "inference"}  # the catalog schema of the tables in each bucket role


def table_name(settings: Settings, role: str, key: str) -> str:
    """The catalog name of the table at `key` in the bucket of `role`."""
    return f"{settings.catalog.aiml_catalog}.{SCHEMA_OF_ROLE[role]}.{key}"


def lab_table(settings: Settings, key: AssetKey) -> AssetTable:
    name = key.path[-1]
    return AssetTable(table_name(settings, "lab", name), "lab", name, "snapshot_date", settings.catalog.table_owner)


def scoring_table(settings: Settings, key: AssetKey, partition_column: str = "snapshot_date") -> AssetTable:
    name = key.path[-1]
    return AssetTable(table_name(settings, "scoring", name), "scoring", name, partition_column,
                      settings.catalog.table_owner)
