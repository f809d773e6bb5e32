"""Delta tables through delta-rs with Spark computing, and the local catalog that names them."""

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F

from aiml_assets.resources.catalog import CatalogError, LocalCatalog, PublicationConflict
from aiml_assets.resources.tables import DeltaRsTables, TableWriteError
from aiml_assets.sql_identifiers import UnsafeSqlValue


def _snapshot(spark, snapshot: str, rows: int, offset: int = 0):
    return (
        spark.range(offset, offset + rows)
        .withColumn("snapshot_date", F.lit(snapshot).cast("date"))
        .withColumn("spend", F.col("id") * 1.5)
        .withColumn("computed_at", F.current_timestamp())
    )


@pytest.fixture
def table(tmp_path):
    return str(tmp_path / "lab" / "customer_features")


def _counts(spark, tables, location):
    rows = tables.read(spark, location).groupBy("snapshot_date").count().collect()
    return {str(r["snapshot_date"]): r["count"] for r in rows}


def test_partition_replace_touches_only_that_partition(spark, table):
    tables = DeltaRsTables(write_roots=[str(table)])
    assert tables.write(_snapshot(spark, "2024-01-31", 30).union(_snapshot(spark, "2024-02-29", 20)), table,
                        run_id="run-1", partition_by=["snapshot_date"]) == 0
    version = tables.write(_snapshot(spark, "2024-01-31", 5, offset=1000), table, run_id="run-2",
                           partition_by=["snapshot_date"], replace={"snapshot_date": "2024-01-31"})
    assert version == 1
    assert _counts(spark, tables, table) == {"2024-01-31": 5, "2024-02-29": 20}
    assert tables.commit_metadata(table)["dagster_run_id"] == "run-2"
    # time travel still sees the replaced data: the replace was one transaction
    assert len(DeltaTable(table, version=0).to_pandas()) == 50


def test_read_keeps_types_of_partition_and_timestamp_columns(spark, table):
    tables = DeltaRsTables(write_roots=[str(table)])
    tables.write(_snapshot(spark, "2024-01-31", 3), table, run_id="r", partition_by=["snapshot_date"])
    types = dict(tables.read(spark, table).dtypes)
    assert types == {"id": "bigint", "snapshot_date": "date", "spend": "double", "computed_at": "timestamp"}


def test_rows_outside_the_replaced_partition_are_refused_and_nothing_is_committed(spark, table, tmp_path):
    tables = DeltaRsTables(write_roots=[str(table)])
    tables.write(_snapshot(spark, "2024-01-31", 10), table, run_id="r1", partition_by=["snapshot_date"])
    stray = _snapshot(spark, "2024-01-31", 4).union(_snapshot(spark, "2024-03-31", 2))
    with pytest.raises(TableWriteError, match=r"rows outside the replaced partition .*2024-03-31"):
        tables.write(stray, table, run_id="r2", partition_by=["snapshot_date"], replace={"snapshot_date": "2024-01-31"})
    assert tables.version(table) == 0
    assert _counts(spark, tables, table) == {"2024-01-31": 10}
    # no orphan files of the refused write stay behind
    committed = {uri.split("/")[-1] for uri in DeltaTable(table).file_uris()}
    on_disk = {p.name for p in (tmp_path / "lab" / "customer_features").rglob("*.parquet")}
    assert on_disk == committed


def test_replace_must_name_the_partition_columns(spark, table):
    with pytest.raises(TableWriteError, match="must name the partition columns"):
        DeltaRsTables(write_roots=[str(table)]).write(_snapshot(spark, "2024-01-31", 1), table, run_id="r",
                              partition_by=["snapshot_date"], replace={"id": "1"})


def test_empty_table_reads_as_empty_dataframe_with_schema(spark, table):
    tables = DeltaRsTables(write_roots=[str(table)])
    tables.write(_snapshot(spark, "2024-01-31", 0), table, run_id="r", partition_by=["snapshot_date"])
    df = tables.read(spark, table)
    assert df.count() == 0
    assert "spend" in df.columns


def test_local_catalog_registers_and_reads_by_name(spark, tmp_path, table):
    DeltaRsTables(write_roots=[str(table)]).write(_snapshot(spark, "2024-01-31", 7), table, run_id="r", partition_by=["snapshot_date"])
    catalog = LocalCatalog(home=str(tmp_path))
    catalog.register("aiml_local.lab.customer_features", table, owner="team:aiml", comment="features",
                     properties={"retention_days": 90})
    # a second catalog object on the same home sees it: the registry persists
    again = LocalCatalog(home=str(tmp_path))
    assert again.read(spark, "aiml_local.lab.customer_features").count() == 7
    entry = again.entry("aiml_local.lab.customer_features")
    assert (entry["owner"], entry["properties"]) == ("team:aiml", {"retention_days": 90})
    assert again.version("aiml_local.lab.customer_features") == 0
    assert again.names() == ["aiml_local.lab.customer_features"]


def test_catalog_reads_a_pinned_version_after_the_table_moved_on(spark, tmp_path, table):
    """A model records the training table version it used; its gate re-reads exactly that version."""
    tables, catalog = DeltaRsTables(write_roots=[str(table)]), LocalCatalog(home=str(tmp_path))
    tables.write(_snapshot(spark, "2024-01-31", 7), table, run_id="r1", partition_by=["snapshot_date"])
    catalog.register("aiml_local.lab.training_set", table, owner="team:aiml")
    tables.write(_snapshot(spark, "2024-01-31", 3, offset=100), table, run_id="r2", partition_by=["snapshot_date"],
                 replace={"snapshot_date": "2024-01-31"})
    assert catalog.read(spark, "aiml_local.lab.training_set").count() == 3
    pinned = catalog.read(spark, "aiml_local.lab.training_set", 0)
    assert pinned.count() == 7 and pinned.agg(F.max("id")).first()[0] == 6


@pytest.mark.parametrize("name", ["customers", "edp.customers", "edp.fdp.customers.x", "EDP.fdp.customers"])
def test_catalog_names_are_three_level(tmp_path, name):
    with pytest.raises(CatalogError, match="not a three-level catalog name"):
        LocalCatalog(home=str(tmp_path)).register(name, "/x", owner="o")


def test_unregistered_name_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="edp.fdp.customers is not registered in the local catalog"):
        LocalCatalog(home=str(tmp_path)).location("edp.fdp.customers")


@pytest.mark.parametrize(("partition", "refusal"), [
    ({"snapshot_date": "2024-11-01' OR '1'='1"}, r"^partition snapshot_date: .* is not a plain partition value"),
    ({"snapshot_date = snapshot_date OR snapshot_date": "x"}, r"^partition column: .* is not a plain SQL identifier"),
])
def test_a_hostile_partition_is_refused_before_the_local_delete(table, partition, refusal):
    write_deltalake(table, pa.table({"id": [1, 2], "snapshot_date": ["2024-11-01", "2024-12-01"]}),
                    partition_by=["snapshot_date"])
    tables = DeltaRsTables(write_roots=[table])
    with pytest.raises(UnsafeSqlValue, match=refusal):
        tables.delete_partitions(table, [partition], run_id="run-1")
    assert DeltaTable(table).version() == 0
    assert tables.delete_partitions(table, [{"snapshot_date": "2024-11-01"}], run_id="run-1") == 1
    assert DeltaTable(table).to_pyarrow_table().column("snapshot_date").to_pylist() == ["2024-12-01"]


def test_the_local_catalog_switch_is_a_compare_and_swap_on_the_version_it_replaces(tmp_path):
    catalog, name = LocalCatalog(home=str(tmp_path)), "edp.cdp.nba_propensity"
    switch = dict(owner="aiml-data-product-owners", comment="c", properties={"snapshot_date": "2026-11-01"},
                  read_grants=["edp-tenant-marketing"])
    catalog.publish(name, "/v/a", version_id="a" * 16, **switch)
    with pytest.raises(PublicationConflict, match="it serves a{16}, not nothing as read"):
        catalog.publish(name, "/v/b", version_id="b" * 16, **switch)  # a second first publication
    catalog.publish(name, "/v/b", version_id="b" * 16, replaces="a" * 16, **switch)
    entry = catalog.entry(name)
    # a publisher that read "a" before "b" was switched to loses, and changes nothing
    with pytest.raises(PublicationConflict, match=r"not switched to version c{16}: it serves b{16}, not a{16} as read"):
        catalog.publish(name, "/v/c", version_id="c" * 16, replaces="a" * 16, **switch)
    assert catalog.entry(name) == entry and entry["location"] == "/v/b"
    assert catalog.published(name)["cdp_version"] == "b" * 16
