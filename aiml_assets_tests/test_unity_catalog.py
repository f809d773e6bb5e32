"""The Unity Catalog SQL of registration and publication, recorded on a stand-in session (no workspace is reachable
from here): what it must and must not say is Unity Catalog's documented behaviour."""

import json
from types import SimpleNamespace

import pytest

from aiml_assets.resources.catalog import PublicationConflict, UnityCatalog
from aiml_assets.sql_identifiers import UnsafeSqlValue


class RecordingSpark:
    """Records every statement; `answer(statement)` gives its rows (or raises, as Databricks would)."""

    def __init__(self, existing=(), answer=lambda statement: []):
        self.statements: list[str] = []
        self.existing = set(existing)
        self.answer = answer
        self.catalog = SimpleNamespace(tableExists=lambda name: name in self.existing)

    def sql(self, statement: str):
        self.statements.append(statement)
        rows = self.answer(statement)
        return SimpleNamespace(first=lambda: rows[0] if rows else None, collect=lambda: rows)


@pytest.fixture
def unity(monkeypatch):
    def with_session(existing=(), answer=lambda statement: []):
        spark = RecordingSpark(existing, answer)
        monkeypatch.setattr(UnityCatalog, "_spark", lambda self: spark)
        return UnityCatalog(), spark
    return with_session


VIEW = "`edp`.`cdp`.`nba_propensity`"
POINTER = "`edp`.`cdp`.`nba_propensity__pointer`"
OURS, EARLIER, LATER = "0123456789abcdef", "00000000000000aa", "ffffffffffffff00"
PUBLISH = dict(version_id=OURS, owner="aiml-data-product-owners", comment="NBA propensity",
               properties={"classification": "confidential"}, read_grants=["edp-tenant-marketing"])


def pointer(*serves: str, switched: int = 1, update=None):
    """A workspace whose pointer UPDATE switches `switched` rows (or raises `update`) and whose pointer reads as
    `serves`, one after another (the last one from then on)."""
    reads = list(serves)

    def answer(statement):
        if statement.startswith(f"UPDATE {POINTER}"):
            if update is not None:
                raise update
            return [{"num_affected_rows": switched}]
        if statement.startswith("SELECT cdp_version, properties"):
            version = reads.pop(0) if len(reads) > 1 else reads[0]
            return [{"cdp_version": version, "properties": json.dumps({"cdp_version": version, "snapshot_date": version})}]
        return []
    return answer


def _after_the_switch(statements):
    return statements[next(i for i, s in enumerate(statements) if s.startswith("UPDATE")) + 1:]


def test_the_first_publication_creates_the_pointer_the_view_its_owner_and_its_grants(unity):
    catalog, spark = unity(answer=pointer(OURS))
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v1", **PUBLISH)
    sql = spark.statements
    version = f"`edp`.`cdp`.`nba_propensity__v_{OURS}`"
    assert sql[0] == f"CREATE TABLE IF NOT EXISTS {version} USING DELTA LOCATION 's3://buk-aiml-prod/cdp/v1'"
    assert f"GRANT SELECT ON TABLE {version} TO `aiml-data-product-owners`" in sql  # the view reads as its owner
    # the pointer starts at nothing, on Serializable isolation, and the switch compares with what was read
    assert (f"CREATE TABLE IF NOT EXISTS {POINTER} TBLPROPERTIES ('delta.isolationLevel' = 'Serializable', "
            "'delta.enableDeletionVectors' = 'false') AS SELECT '' AS cdp_version, '{}' AS properties") in sql
    update = next(s for s in sql if s.startswith("UPDATE"))
    assert update.startswith(f"UPDATE {POINTER} SET cdp_version = '{OURS}', properties = '")
    assert update.endswith("WHERE cdp_version = ''") and "confidential" in update
    assert f"CREATE VIEW {VIEW} AS SELECT * FROM {version}" in sql
    assert f"ALTER VIEW {VIEW} OWNER TO `aiml-data-product-owners`" in sql
    assert f"GRANT SELECT ON TABLE {VIEW} TO `edp-tenant-marketing`" in sql
    assert not any("edp-tenant" in s and (version in s or POINTER in s) for s in sql)  # tenants: the view only
    assert sql.index(update) < sql.index(f"CREATE VIEW {VIEW} AS SELECT * FROM {version}")  # the CAS first
    assert not any(f"{VIEW} AS SELECT" in s for s in _after_the_switch(sql)[1:] if s.startswith("ALTER"))
    assert f"'cdp_version' = '{OURS}'" in sql[-2] and sql[-2].startswith(f"ALTER VIEW {VIEW} SET TBLPROPERTIES")


def test_a_later_publication_switches_the_view_in_one_statement_and_keeps_owner_and_grants(unity):
    catalog, spark = unity(existing={"edp.cdp.nba_propensity", "edp.cdp.nba_propensity__pointer"},
                           answer=pointer(OURS))
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", replaces=EARLIER, **PUBLISH)
    assert next(s for s in spark.statements if s.startswith("UPDATE")).endswith(f"WHERE cdp_version = '{EARLIER}'")
    switches = [s for s in spark.statements if f"{VIEW} AS SELECT" in s]
    assert switches == [f"ALTER VIEW {VIEW} AS SELECT * FROM `edp`.`cdp`.`nba_propensity__v_{OURS}`"]
    assert not any("CREATE OR REPLACE" in s or "OWNER TO" in s or "CREATE TABLE IF NOT EXISTS `edp`.`cdp`."
                   "`nba_propensity__pointer`" in s for s in spark.statements)


@pytest.mark.parametrize("lost", [
    dict(switched=0),  # the pointer no longer names the version read: someone switched it first
    dict(update=RuntimeError("[DELTA_CONCURRENT_DELETE_READ] ConcurrentDeleteReadException: a concurrent "
                             "transaction has deleted a file that this transaction read")),  # the two UPDATEs raced
])
def test_a_publisher_that_loses_the_pointer_switch_touches_no_view(unity, lost):
    catalog, spark = unity(existing={"edp.cdp.nba_propensity", "edp.cdp.nba_propensity__pointer"},
                           answer=pointer(LATER, **lost))
    with pytest.raises(PublicationConflict, match=rf"not switched to version {OURS}: the pointer .* no longer names "
                                                  f"{EARLIER}; another publisher switched it first"):
        catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", replaces=EARLIER, **PUBLISH)
    assert _after_the_switch(spark.statements) == []


def test_any_other_failure_of_the_switch_is_not_taken_for_a_lost_race(unity):
    denied = RuntimeError("[PERMISSION_DENIED] User does not have MODIFY on Table 'edp.cdp.nba_propensity__pointer'")
    catalog, spark = unity(existing={"edp.cdp.nba_propensity__pointer"}, answer=pointer(LATER, update=denied))
    with pytest.raises(RuntimeError, match="PERMISSION_DENIED"):
        catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", replaces=EARLIER, **PUBLISH)


def test_a_winner_whose_view_switch_lands_after_a_later_one_puts_the_view_back_on_the_pointer(unity):
    # ours won the pointer, then a later day won it before our ALTER VIEW ran: re-reading it finds the later one
    catalog, spark = unity(existing={"edp.cdp.nba_propensity", "edp.cdp.nba_propensity__pointer"},
                           answer=pointer(OURS, LATER, LATER))
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", replaces=EARLIER, **PUBLISH)
    switches = [s.rsplit("__v_", 1)[1].rstrip("`") for s in spark.statements if f"{VIEW} AS SELECT" in s]
    assert switches == [OURS, LATER]
    assert f"'cdp_version' = '{LATER}'" in [s for s in spark.statements if "SET TBLPROPERTIES" in s][-1]


def test_what_is_published_is_what_the_pointer_names(unity):
    catalog, _ = unity(existing={"edp.cdp.nba_propensity", "edp.cdp.nba_propensity__pointer"}, answer=pointer(LATER))
    assert catalog.published("edp.cdp.nba_propensity") == {"cdp_version": LATER, "snapshot_date": LATER}
    catalog, _ = unity(existing={"edp.cdp.nba_propensity__pointer"}, answer=pointer(""))
    assert catalog.published("edp.cdp.nba_propensity") is None


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
