"""The Unity Catalog SQL of registration and publication, recorded on a stand-in session (no workspace is reachable
from here): what it must and must not say is Unity Catalog's documented behaviour."""

from types import SimpleNamespace

import pytest

from aiml_assets.resources.catalog import UnityCatalog
from aiml_assets.sql_identifiers import UnsafeSqlValue


class RecordingSpark:
    def __init__(self, existing=()):
        self.statements: list[str] = []
        self.existing = set(existing)
        self.catalog = SimpleNamespace(tableExists=lambda name: name in self.existing)

    def sql(self, statement: str):
        self.statements.append(statement)
        return SimpleNamespace(first=lambda: None, collect=lambda: [])


@pytest.fixture
def unity(monkeypatch):
    def with_session(existing=()):
        spark = RecordingSpark(existing)
        monkeypatch.setattr(UnityCatalog, "_spark", lambda self: spark)
        return UnityCatalog(), spark
    return with_session


VIEW = "`edp`.`cdp`.`nba_propensity`"
PUBLISH = dict(version_id="0123456789abcdef", owner="aiml-data-product-owners", comment="NBA propensity",
               properties={"classification": "confidential"}, read_grants=["edp-tenant-marketing"])


def test_the_first_publication_creates_the_view_its_owner_and_its_grants(unity):
    catalog, spark = unity()
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v1", **PUBLISH)
    sql = spark.statements
    version = "`edp`.`cdp`.`nba_propensity__v_0123456789abcdef`"
    assert sql[0] == f"CREATE TABLE IF NOT EXISTS {version} USING DELTA LOCATION 's3://buk-aiml-prod/cdp/v1'"
    assert f"GRANT SELECT ON TABLE {version} TO `aiml-data-product-owners`" in sql  # the view reads as its owner
    assert f"CREATE VIEW {VIEW} AS SELECT * FROM {version}" in sql
    assert f"ALTER VIEW {VIEW} OWNER TO `aiml-data-product-owners`" in sql
    assert f"GRANT SELECT ON TABLE {VIEW} TO `edp-tenant-marketing`" in sql
    assert not any("edp-tenant" in s and version in s for s in sql)  # tenants never get the version tables
    assert "'cdp_version' = '0123456789abcdef'" in sql[-1] and "'classification' = 'confidential'" in sql[-1]


def test_a_later_publication_switches_the_view_in_one_statement_and_keeps_owner_and_grants(unity):
    catalog, spark = unity(existing={"edp.cdp.nba_propensity"})
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", **PUBLISH)
    switches = [s for s in spark.statements if f"{VIEW} AS SELECT" in s]
    assert switches == [f"ALTER VIEW {VIEW} AS SELECT * FROM `edp`.`cdp`.`nba_propensity__v_0123456789abcdef`"]
    assert not any("CREATE OR REPLACE" in s or "OWNER TO" in s for s in spark.statements)


def test_registration_sets_the_owner_only_when_it_creates_the_table(unity):
    catalog, spark = unity()
    catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers", comment="c")
    assert "ALTER TABLE `aiml_prod`.`inference`.`propensity_scores` SET OWNER TO `aiml-engineers`" in spark.statements
    catalog, spark = unity(existing={"aiml_prod.inference.propensity_scores"})
    catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers", comment="c")
    assert not any("OWNER" in s or s.startswith("CREATE") for s in spark.statements)


class RecordingDeltaSpark(RecordingSpark):
    """A stand-in session for the Databricks Delta statements of the retention purge and the erasure."""

    def __init__(self, properties=()):
        super().__init__()
        self.properties = [{"key": k, "value": v} for k, v in properties]
        self.conf = SimpleNamespace(set=lambda k, v: self.statements.append(f"SET {k}={v}"),
                                    unset=lambda k: self.statements.append(f"UNSET {k}"))

    def sql(self, statement: str):
        self.statements.append(statement)
        rows = self.properties if statement.startswith("SHOW TBLPROPERTIES") else []
        return SimpleNamespace(first=lambda: {"version": 7}, collect=lambda: rows)


@pytest.fixture
def delta_spark(monkeypatch):
    from pyspark.sql import SparkSession

    def with_session(properties=()):
        spark = RecordingDeltaSpark(properties)
        monkeypatch.setattr(SparkSession, "builder", SimpleNamespace(getOrCreate=lambda: spark))
        return spark
    return with_session


LAB = "s3://buk-aiml-lab/customer_features"


def test_the_purge_deletes_expired_partitions_in_one_databricks_commit_tagged_with_the_run(delta_spark):
    from aiml_assets.resources.tables import SparkDeltaTables

    spark = delta_spark()
    tables = SparkDeltaTables(write_roots=["s3://buk-aiml-lab"])
    assert tables.delete_partitions(LAB, [{"snapshot_date": "2024-11-01"}, {"snapshot_date": "2024-12-01"}],
                                    run_id="run-9") == 7
    assert spark.statements[0] == "SET spark.databricks.delta.commitInfo.userMetadata=run-9"
    assert spark.statements[1] == (f"DELETE FROM delta.`{LAB}` WHERE (`snapshot_date` = '2024-11-01') OR "
                                   "(`snapshot_date` = '2024-12-01')")
    assert spark.statements[2] == "UNSET spark.databricks.delta.commitInfo.userMetadata"


def test_vacuum_lifts_the_retention_check_only_for_its_own_statement(delta_spark):
    from aiml_assets.resources.tables import SparkDeltaTables

    spark = delta_spark()
    SparkDeltaTables(write_roots=["s3://buk-aiml-lab"]).vacuum(LAB, retain_hours=0)
    assert spark.statements == ["SET spark.databricks.delta.retentionDurationCheck.enabled=false",
                                f"VACUUM delta.`{LAB}` RETAIN 0 HOURS",
                                "UNSET spark.databricks.delta.retentionDurationCheck.enabled"]


@pytest.mark.parametrize(("properties", "altered"), [((), True), ((("delta.checkpointInterval", "1"),), False)])
def test_checkpointing_sets_the_interval_once(delta_spark, properties, altered):
    from aiml_assets.resources.tables import SparkDeltaTables

    spark = delta_spark(properties)
    SparkDeltaTables(write_roots=["s3://buk-aiml-lab"]).checkpoint(LAB)
    alter = f"ALTER TABLE delta.`{LAB}` SET TBLPROPERTIES ('delta.checkpointInterval' = '1')"
    assert (alter in spark.statements) is altered


# Each breaks out of its quoting in the statements as they were built before: `...` for principals, '...' for
# LOCATION, delta.`...` for paths
HOSTILE_PUBLICATIONS = [
    ("owner", {"owner": "aiml-data-product-owners` ; GRANT ALL PRIVILEGES ON CATALOG edp TO `account users"}),
    ("read_grants", {"read_grants": ["edp-tenant-marketing", "account users"]}),
    ("read_grants", {"read_grants": ["edp-tenant-marketing`; DROP TABLE edp.cdp.nba_propensity; --"]}),
]


@pytest.mark.parametrize(("field", "hostile"), HOSTILE_PUBLICATIONS)
def test_a_hostile_owner_or_tenant_group_is_refused_before_any_statement(unity, field, hostile):
    catalog, spark = unity()
    with pytest.raises(UnsafeSqlValue, match=rf"^{field}: .* is not a catalog principal: expected letters"):
        catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v1", **{**PUBLISH, **hostile})
    assert spark.statements == []


@pytest.mark.parametrize("location", ["s3://buk-aiml-prod/cdp/v1' LOCATION 's3://elsewhere",
                                      "s3://buk-aiml-prod/cdp/v1`", "s3://buk-aiml-prod/../edp", "/dbfs/tmp/t"])
def test_a_hostile_location_is_refused_before_any_statement(unity, location):
    catalog, spark = unity()
    with pytest.raises(UnsafeSqlValue, match=r"^location: .* is not an S3 location: expected s3://<bucket>"):
        catalog.publish("edp.cdp.nba_propensity", location, **PUBLISH)
    with pytest.raises(UnsafeSqlValue, match=r"^location: .* is not an S3 location"):
        catalog.register("aiml_prod.inference.propensity_scores", location, owner="aiml-engineers")
    assert spark.statements == []


def test_a_hostile_table_owner_is_refused_even_when_the_table_exists(unity):
    catalog, spark = unity(existing={"aiml_prod.inference.propensity_scores"})
    with pytest.raises(UnsafeSqlValue, match=r"^owner: 'aiml-engineers`' is not a catalog principal"):
        catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers`")
    assert spark.statements == []


def test_comments_and_properties_are_escaped_string_literals(unity):
    catalog, spark = unity(existing={"aiml_prod.inference.propensity_scores"})
    catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers",
                     comment="O'Brien's \\' scores", properties={"source": "x' = 'y"})
    assert spark.statements == [
        "COMMENT ON TABLE `aiml_prod`.`inference`.`propensity_scores` IS 'O\\'Brien\\'s \\\\\\' scores'",
        "ALTER TABLE `aiml_prod`.`inference`.`propensity_scores` SET TBLPROPERTIES ('source' = 'x\\' = \\'y')"]


@pytest.mark.parametrize(("partition", "refusal"), [
    ({"snapshot_date": "2024-11-01' OR '1'='1"}, r"^partition snapshot_date: .* is not a plain partition value"),
    ({"snapshot_date": "2024-11-01\\' OR true --"}, r"^partition snapshot_date: .* is not a plain partition value"),
    ({"1=1) OR (snapshot_date": "2024-11-01"}, r"^partition column: '1=1\) OR \(snapshot_date' is not a plain SQL"),
    ({"snapshot_date`": "2024-11-01"}, r"^partition column: 'snapshot_date`' is not a plain SQL identifier"),
])
def test_a_hostile_partition_is_refused_before_the_databricks_delete(delta_spark, partition, refusal):
    from aiml_assets.resources.tables import SparkDeltaTables

    spark = delta_spark()
    tables = SparkDeltaTables(write_roots=["s3://buk-aiml-lab"])
    with pytest.raises(UnsafeSqlValue, match=refusal):
        tables.delete_partitions(LAB, [{"snapshot_date": "2024-12-01"}, partition], run_id="run-9")
    assert spark.statements == []  # not even the commit metadata was set


def test_a_hostile_path_is_refused_before_the_databricks_vacuum(delta_spark):
    from aiml_assets.resources.tables import SparkDeltaTables

    spark = delta_spark()
    with pytest.raises(UnsafeSqlValue, match=r"^location: .* is not an S3 location"):
        SparkDeltaTables(write_roots=["s3://buk-aiml-lab"]).vacuum(f"{LAB}` RETAIN 0 HOURS --", retain_hours=168)
    assert spark.statements == []
