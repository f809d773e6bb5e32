"""The ODCS contract of the CDP edp.cdp.nba_propensity: it lints, it says what the pandera schema that gates every
publication says, and published output passes `datacontract test` while output drifting from it fails."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pyspark.sql.types as T
import pytest
import yaml
from deltalake import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.inference.schemas import nba_propensity_schema
from aiml_assets.publication import contract
from aiml_assets.quality import spark_schema, validate
from aiml_assets.resources.tables import DeltaRsTables
from aiml_assets.settings import ENVIRONMENTS, load_settings

PRODUCTS = load_settings("local").products
PUBLISHING = [env for env in ENVIRONMENTS if "cdp_publication" in load_settings(env).asset_groups]
LOGICAL = {T.StringType: "string", T.DateType: "date", T.TimestampType: "timestamp", T.DoubleType: "number",
           T.FloatType: "number", T.IntegerType: "integer", T.LongType: "integer", T.BooleanType: "boolean"}


def load_contract() -> dict:
    return yaml.safe_load(contract.CONTRACT.read_text())


# --- the contract and the pandera schema say the same ------------------------------------------------------------

def contract_terms(doc: dict) -> dict:
    """What the contract states per column, in the terms pandera can state too."""
    table = next(s for s in doc["schema"] if s["name"] == contract.SCHEMA)
    columns = {}
    for prop in table["properties"]:
        options = prop.get("logicalTypeOptions", {})
        terms = {"logicalType": prop.get("logicalType"), "physicalType": str(prop.get("physicalType")).upper(),
                 "required": prop.get("required", False), "unique": prop.get("unique", False)}
        terms |= {k: options[k] for k in ("minimum", "maximum", "pattern") if k in options}
        for rule in prop.get("quality", []):
            if rule.get("metric") == "invalidValues" and rule.get("mustBe") == 0:
                terms["allowed"] = sorted(rule["arguments"]["validValues"])
        columns[prop["name"]] = terms
    key = sorted((p for p in table["properties"] if p.get("primaryKey")), key=lambda p: p.get("primaryKeyPosition"))
    return {"columns": columns, "key": [p["name"] for p in key]}


def pandera_terms(schema) -> dict:
    """What the pandera schema states per column, as contract terms: a Spark type as logical and physical type,
    in_range/ge/le as minimum/maximum, isin as allowed values, str_matches (a match at the start) as a pattern
    anchored at the start (ODCS patterns are searched), nullable=False as required."""
    columns = {}
    for name, column in schema.columns.items():
        dtype = column.dtype.type
        terms = {"logicalType": LOGICAL[type(dtype)], "physicalType": dtype.simpleString().upper(),
                 "required": not column.nullable, "unique": list(schema.unique or []) == [name]}
        for check in column.checks:
            s = check.statistics
            if check.name == "in_range" and s.get("include_min", True) and s.get("include_max", True):
                terms |= {"minimum": s["min_value"], "maximum": s["max_value"]}
            elif check.name == "greater_than_or_equal_to":
                terms["minimum"] = s["min_value"]
            elif check.name == "less_than_or_equal_to":
                terms["maximum"] = s["max_value"]
            elif check.name == "isin":
                terms["allowed"] = sorted(s["allowed_values"])
            elif check.name == "str_matches":
                terms["pattern"] = s["pattern"] if s["pattern"].startswith("^") else "^" + s["pattern"]
            else:  # a new kind of pandera rule needs its contract counterpart here, and in the contract
                raise AssertionError(f"column {name}: no contract term for pandera check {check.name}({s})")
        columns[name] = terms
    return {"columns": columns, "key": list(schema.unique or [])}


def disagreements(doc: dict, schema) -> list[str]:
    ours, theirs = contract_terms(doc), pandera_terms(schema)
    problems = [f"column {name}: in the contract only" for name in ours["columns"].keys() - theirs["columns"].keys()]
    problems += [f"column {name}: in pandera only" for name in theirs["columns"].keys() - ours["columns"].keys()]
    for name in sorted(ours["columns"].keys() & theirs["columns"].keys()):
        said, gated = ours["columns"][name], theirs["columns"][name]
        problems += [f"column {name}: {term}: contract {said.get(term)!r}, pandera {gated.get(term)!r}"
                     for term in sorted(said.keys() | gated.keys()) if said.get(term) != gated.get(term)]
    if ours["key"] != theirs["key"]:
        problems.append(f"unique key: contract {ours['key']}, pandera {theirs['key']}")
    return sorted(problems)


def test_contract_lints_clean():
    assert contract.lint() == []


def test_lint_reports_an_invalid_contract(tmp_path):
    doc = load_contract()
    doc["schema"][0]["properties"][3]["logicalType"] = "float"  # not an ODCS logical type
    del doc["id"]
    broken = tmp_path / "broken.odcs.yaml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert contract.lint(broken)


@pytest.mark.parametrize("env", PUBLISHING)
def test_contract_and_pandera_schema_agree(env):
    assert disagreements(load_contract(), nba_propensity_schema(load_settings(env).products)) == []


def _property(doc: dict, name: str) -> dict:
    return next(p for p in doc["schema"][0]["properties"] if p["name"] == name)


MUTATIONS = {
    "column dropped": ("model_role", lambda d: d["schema"][0]["properties"].remove(_property(d, "model_role"))),
    "column added": ("segment", lambda d: d["schema"][0]["properties"].append(
        {"name": "segment", "logicalType": "string", "physicalType": "STRING", "required": True})),
    "logical type changed": ("score", lambda d: _property(d, "score").update(logicalType="integer")),
    "physical type changed": ("model_version", lambda d: _property(d, "model_version").update(physicalType="INT")),
    "optional": ("scored_at", lambda d: _property(d, "scored_at").update(required=False)),
    "range widened": ("score", lambda d: _property(d, "score")["logicalTypeOptions"].update(maximum=100)),
    "rank range": ("rank", lambda d: _property(d, "rank")["logicalTypeOptions"].update(maximum=5)),
    "allowed value dropped": ("product_code", lambda d: _property(d, "product_code")["quality"][0]["arguments"][
        "validValues"].remove("mortgage")),
    "allowed values dropped": ("model_role", lambda d: _property(d, "model_role").pop("quality")),
    "pattern changed": ("customer_id", lambda d: _property(d, "customer_id")["logicalTypeOptions"].update(
        pattern="^C[0-9]{9}")),
    "key shortened": ("unique key", lambda d: _property(d, "snapshot_date").pop("primaryKey")),
    "key reordered": ("unique key", lambda d: _property(d, "product_code").update(primaryKeyPosition=4)),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_a_drifted_contract_disagrees_with_pandera(mutation):
    subject, mutate = MUTATIONS[mutation]
    doc = copy.deepcopy(load_contract())
    mutate(doc)
    problems = disagreements(doc, nba_propensity_schema(PRODUCTS))
    assert problems and all(subject in p for p in problems), problems


def test_contract_matches_the_publication():
    """The catalog name, owner, classification and tenant groups the publication (cdp.py) uses; its
    contract_version() is this contract's version."""
    from aiml_assets.publication import cdp  # imports Dagster, Spark and great-expectations: ~10 s

    doc, settings = load_contract(), load_settings("prod")
    publication = settings.publication
    assert cdp.CONTRACT == contract.CONTRACT and cdp.contract_version() == doc["version"] == "1.0.0"
    prod = next(s for s in doc["servers"] if s["server"] == "prod")
    assert (prod["type"], prod["catalog"], prod["schema"]) == ("databricks", publication.catalog,
                                                               publication.schema_name)
    assert doc["dataProduct"] == cdp.cdp_name(settings) == "edp.cdp.nba_propensity"
    assert doc["team"]["name"] == publication.owner
    assert {r["role"] for r in doc["roles"] if r["access"] == "read"} == set(publication.tenant_groups)
    assert {p["classification"] for p in doc["schema"][0]["properties"]} == {publication.classification}


# --- published output against the contract -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scores(spark) -> DataFrame:
    """Four rows that pass the pandera schema: two customers, two products each, scored just now."""
    schema = nba_propensity_schema(PRODUCTS)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        {"customer_id": customer, "snapshot_date": now.date(), "product_code": product, "score": score,
         "rank": rank, "model_name": f"aiml_local.models.nba_propensity_{product}", "model_version": 2,
         "model_role": role, "scored_at": now}
        for customer, role, ranked in [("C00000001", "champion", [("mortgage", 0.61), ("credit_card", 0.2)]),
                                       ("C00000002", "canary", [("credit_card", 0.35), ("investment_isa", 0.05)])]
        for rank, (product, score) in enumerate(ranked, start=1)
    ]
    struct = spark_schema(schema)
    df = spark.createDataFrame([tuple(row[f] for f in struct.fieldNames()) for row in rows], struct).cache()
    total, violations = validate(schema, df)
    assert total == 4 and violations == []
    return df


def publish(df: DataFrame, location) -> str:
    DeltaRsTables(write_roots=[str(location)]).write(df, str(location), run_id="test")
    return str(location)


def test_published_output_passes_the_contract(scores, tmp_path):
    result = contract.verify_published(publish(scores, tmp_path / "v1"))
    assert result.passed, result.failures
    assert result.ignored and all(contract.UNSUPPORTED_TYPE_CHECK in i for i in result.ignored)


def test_only_the_current_snapshot_is_tested(scores, tmp_path):
    """An overwrite leaves the replaced files on disk; they are no longer part of the table."""
    location = tmp_path / "v1"
    publish(scores.withColumn("score", F.lit(1.5)), location)
    publish(scores, location)
    assert len(list(location.glob("*.parquet"))) > len(DeltaTable(str(location)).file_uris())
    result = contract.verify_published(str(location))
    assert result.passed, result.failures


def _one_row(column: str, value) -> F.Column:
    return F.when(F.col("rank") == 1, value).otherwise(F.col(column))


DRIFTS = {
    "score out of range": (lambda df: df.withColumn("score", _one_row("score", F.lit(1.5))),
                           "Check that field score has a maximum of 1"),
    "null model_version": (lambda df: df.withColumn("model_version", _one_row("model_version", F.lit(None))),
                           "Check that field model_version has no missing values"),
    "extra column": (lambda df: df.withColumn("segment", F.lit("mass")), "segment is not in the contract"),
    "missing column": (lambda df: df.drop("model_role"), "Check that field 'model_role' is present"),
    "renamed column": (lambda df: df.withColumnRenamed("model_role", "role"),
                       "Check that field 'model_role' is present"),
    "duplicate keys": (lambda df: df.union(df.where("rank = 1")),
                       "Check that primary key (customer_id, product_code, snapshot_date) has no duplicate values"),
    "unknown product": (lambda df: df.withColumn("product_code", _one_row("product_code", F.lit("boat"))),
                        "Check that field product_code has invalid_count = 0"),
    "unknown role": (lambda df: df.withColumn("model_role", F.lit("challenger")),
                     "Check that field model_role has invalid_count = 0"),
    "bad customer key": (lambda df: df.withColumn("customer_id", F.lit("X123")),
                         "Check that field customer_id matches regex pattern"),
    "rank beyond the products": (lambda df: df.withColumn("rank", F.col("rank") + 10),
                                 "Check that field rank has a maximum of 6"),
    "type changed": (lambda df: df.withColumn("model_version", F.col("model_version").cast("int")),
                     "Check that field model_version has physical type BIGINT"),
    "stale": (lambda df: df.withColumn("scored_at", F.col("scored_at") - F.expr("INTERVAL 3 DAYS")),
              "Freshness of nba_propensity.scored_at"),
    "empty": (lambda df: df.limit(0), "Check that model nba_propensity has row_count > 0"),
}


@pytest.mark.parametrize("drift", DRIFTS, ids=list(DRIFTS))
def test_output_drifting_from_the_contract_fails(scores, tmp_path, drift):
    transform, check = DRIFTS[drift]
    result = contract.verify_published(publish(transform(scores), tmp_path / "v1"))
    assert not result.passed
    assert any(check in failure for failure in result.failures), result.failures


def test_a_past_day_is_checked_without_the_service_levels_but_with_every_other_rule(scores, tmp_path):
    replayed = scores.withColumn("scored_at", F.col("scored_at") - F.expr("INTERVAL 3 DAYS"))
    assert contract.verify_published(publish(replayed, tmp_path / "v1"), service_levels=False).passed
    broken = replayed.withColumn("score", _one_row("score", F.lit(1.5)))
    result = contract.verify_published(publish(broken, tmp_path / "v2"), service_levels=False)
    assert not result.passed and any("Check that field score has a maximum of 1" in f for f in result.failures)
