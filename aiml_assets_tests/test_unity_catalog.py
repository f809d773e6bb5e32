"""The Unity Catalog SQL of registration and publication, recorded on a stand-in session (no workspace is reachable
from here): what it must and must not say is Unity Catalog's documented behaviour."""

from types import SimpleNamespace

import pytest

from aiml_assets.resources.catalog import UnityCatalog


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


PUBLISH = dict(version_id="0123456789abcdef", owner="aiml-data-product-owners", comment="NBA propensity",
               properties={"classification": "confidential"}, read_grants=["edp-tenant-marketing"])


def test_the_first_publication_creates_the_view_its_owner_and_its_grants(unity):
    catalog, spark = unity()
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v1", **PUBLISH)
    sql = spark.statements
    version = "edp.cdp.nba_propensity__v_0123456789abcdef"
    assert sql[0] == f"CREATE TABLE IF NOT EXISTS {version} USING DELTA LOCATION 's3://buk-aiml-prod/cdp/v1'"
    assert f"GRANT SELECT ON TABLE {version} TO `aiml-data-product-owners`" in sql  # the view reads as its owner
    assert f"CREATE VIEW edp.cdp.nba_propensity AS SELECT * FROM {version}" in sql
    assert "ALTER VIEW edp.cdp.nba_propensity OWNER TO `aiml-data-product-owners`" in sql
    assert "GRANT SELECT ON TABLE edp.cdp.nba_propensity TO `edp-tenant-marketing`" in sql
    assert not any("edp-tenant" in s and version in s for s in sql)  # tenants never get the version tables
    assert '"cdp_version" = "0123456789abcdef"' in sql[-1] and '"classification" = "confidential"' in sql[-1]


def test_a_later_publication_switches_the_view_in_one_statement_and_keeps_owner_and_grants(unity):
    catalog, spark = unity(existing={"edp.cdp.nba_propensity"})
    catalog.publish("edp.cdp.nba_propensity", "s3://buk-aiml-prod/cdp/v2", **PUBLISH)
    switches = [s for s in spark.statements if "nba_propensity AS SELECT" in s]
    assert switches == ["ALTER VIEW edp.cdp.nba_propensity AS SELECT * FROM "
                        "edp.cdp.nba_propensity__v_0123456789abcdef"]
    assert not any("CREATE OR REPLACE" in s or "OWNER TO" in s for s in spark.statements)


def test_registration_sets_the_owner_only_when_it_creates_the_table(unity):
    catalog, spark = unity()
    catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers", comment="c")
    assert "ALTER TABLE aiml_prod.inference.propensity_scores SET OWNER TO `aiml-engineers`" in spark.statements
    catalog, spark = unity(existing={"aiml_prod.inference.propensity_scores"})
    catalog.register("aiml_prod.inference.propensity_scores", "s3://x/t", owner="aiml-engineers", comment="c")
    assert not any("OWNER" in s or s.startswith("CREATE") for s in spark.statements)
