"""Bad source input is stopped by the blocking pandera check: a clear message with counts only, nothing downstream
written, the offending rows in the check's quarantine table; an unexpected column passes with a warning, or fails
where its product's setting says so."""

import re
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pandera.pyspark as pandera
import pyarrow as pa
import pyspark.sql.types as T
import pytest
from dagster import AssetCheckKey, AssetSelection, DagsterInstance, define_asset_job
from deltalake import DeltaTable, write_deltalake

from aiml_assets.definitions import build_definitions
from aiml_assets.features.assets import FEATURES_KEY, TRAINING_KEY
from aiml_assets.quality import FINITE, validate
from aiml_assets.asset_tables import TableAccess
from aiml_assets.quarantine import offending_rows, quarantine, quarantine_table
from aiml_assets.settings import load_settings
from aiml_assets.sources.edp import asset_key
from aiml_assets.sources.relationships import CHECK_NAME as RELATIONSHIPS
from aiml_assets.sources.schemas import CUSTOMERS, HOLDINGS, SOURCE_MODELS, TRANSACTIONS as TX

FUTURE = datetime.now(timezone.utc) + timedelta(days=30)
EXTRA = "loyalty_tier"


def _set(column, value, rows=3):
    def change(df):
        df = df.copy()
        df[column] = df[column].astype(object)
        df.loc[df.index[:rows], column] = value
        return df
    return change


def _infinite_amounts(df):
    return _set("amount", float("-inf"), rows=1)(_set("amount", float("inf"), rows=3)(df))


def _with_extra_column(df):
    return df.assign(**{EXTRA: "gold"})


# table, how to break it, column and rule the message must name, failed rows (None: schema level)
BAD_INPUTS = {
    "null_keys": (TX, _set("customer_id", None), "customer_id", "not_null", 3),
    "duplicate_keys": (CUSTOMERS, lambda df: pd.concat([df, df.head(2)]), "customer_id", "unique", 2),
    "negative_amounts": (TX, _set("amount", -12.5), "amount", "greater_than(min_value=0)", 3),
    "nan_amounts": (TX, _set("amount", float("nan"), rows=4), "amount", FINITE, 4),
    "infinite_amounts": (TX, _infinite_amounts, "amount", FINITE, 3),  # 2 x inf, then 1 x -inf over the first
    "future_events": (TX, _set("transaction_ts", pd.Timestamp(FUTURE), rows=2), "transaction_ts",
                      "not in the future", 2),
    "far_future_events": (TX, _set("transaction_ts", pd.Timestamp("2200-01-01", tz="UTC")), "transaction_ts",
                          "not in the future", 3),
    "before_the_banks_data": (HOLDINGS, _set("opened_date", date(1969, 12, 31), rows=2), "opened_date",
                              "greater_than_or_equal_to(min_value=1970-01-01)", 2),
    "under_18_when_joining": (CUSTOMERS, _set("birth_date", date(2020, 1, 1)), "birth_date",
                              "age at joined_date at least 18 years", 3),
    "over_110": (CUSTOMERS, _set("birth_date", date(1900, 1, 1), rows=2), "birth_date",
                 "age today at most 110 years", 2),
    "extra_column_where_it_fails": (TX, _with_extra_column, EXTRA, "unexpected column", None),
    "unknown_product": (HOLDINGS, _set("product_code", "crypto_wallet", rows=5), "product_code", "isin(", 5),
    "missing_column": (TX, lambda df: df.drop(columns=["channel"]), "channel", "column_in_dataframe", None),
    "wrong_type": (TX, lambda df: df.assign(amount=df["amount"].astype(str)), "amount",
                   "expected column 'amount' to have type DoubleType(), got StringType()", None),
    "empty_product": (HOLDINGS, lambda df: df.head(0), "(all)", "not empty", None),
}
FAILS_ON_EXTRA_COLUMNS = {"extra_column_where_it_fails"}  # with `extra_columns: {<product>: fail}`


def _corrupt(catalog, name, change, tmp_path):
    table = DeltaTable(catalog.location(name))
    df = change(table.to_pandas())
    schema = pa.schema([field.with_nullable(True) for field in pa.schema(table.schema().to_arrow())])
    try:  # keep the product's column types unless the change is about them
        data = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
        data = pa.Table.from_pandas(df, preserve_index=False)
    for i, field in enumerate(data.schema):  # from_pandas reads NaN as null: a NaN stays a NaN
        if pa.types.is_floating(field.type):
            data = data.set_column(i, field, pa.array(df[field.name].to_numpy(object), field.type, from_pandas=False))
    for added in df.columns.difference(data.column_names):  # from_pandas(schema=) leaves them out
        data = data.append_column(added, pa.array(df[added]))
    location = str(tmp_path / "bad" / name)
    write_deltalake(location, data, mode="overwrite")
    catalog.register(name, location, owner="EDP")


def _check_key(name):
    return AssetCheckKey(asset_key(name), f"{SOURCE_MODELS[name].__name__}_schema")


def _definitions(settings=None):
    return build_definitions("local", settings)


def _run(selection, instance, settings=None):
    defs = _definitions(settings)
    job = define_asset_job("bad_input", selection=selection).resolve(asset_graph=defs.resolve_asset_graph(),
                                                                      resource_defs=defs.resources)
    return job.execute_in_process(instance=instance, tags={"dagster/partition": "2026-10-01"},
                                  resources=defs.resources, raise_on_error=False)


def _events(result, event_type):
    return [e.event_specific_data for e in result.all_events if e.event_type_value == event_type]


def _failing_on_extra_columns(name):
    settings = load_settings("local")
    sources = settings.sources.model_copy(update={"extra_columns": {name: "fail"}})
    return settings.model_copy(update={"sources": sources})


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_source_input_stops_the_graph(case, local_edp, tmp_path):
    name, change, column, rule, failed_rows = BAD_INPUTS[case]
    settings = _failing_on_extra_columns(name) if case in FAILS_ON_EXTRA_COLUMNS else None
    _corrupt(local_edp, name, change, tmp_path)
    source = asset_key(name)

    with DagsterInstance.ephemeral() as instance:
        result = _run(AssetSelection.checks(_check_key(name)) | AssetSelection.assets(FEATURES_KEY, TRAINING_KEY),
                      instance, settings)
        evaluation = _events(result, "ASSET_CHECK_EVALUATION")[0]
        assert not evaluation.passed
        message = evaluation.description
        assert message.startswith(f"{source.to_user_string()} failed its pandera schema")
        assert f"column {column}: " in message and rule in message, message
        if failed_rows is not None:
            assert f"failed for {failed_rows} of " in message, message
        assert not re.search(r"C[0-9]{8}", message + str(evaluation.metadata)), "counts only, no customer keys"
        if failed_rows is not None:  # a row rule: its rows are in the quarantine the message names
            table = evaluation.metadata["quarantine_table"].value
            assert f"{failed_rows} offending rows (one per failing rule and row) are in quarantine table {table}" \
                in message, message
            rules = DeltaTable(local_edp.location(table)).to_pandas()["quarantine_rule"]
            assert len(rules) == failed_rows and rules.str.startswith(f"{column}: ").all(), rules
        # nothing downstream ran or was written: the observation's step failed, no lab step started
        assert {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"} == {
            "edp_source_products"}
        assert instance.get_latest_materialization_event(FEATURES_KEY) is None
        assert instance.get_latest_materialization_event(TRAINING_KEY) is None
    assert not local_edp.exists("aiml_local.lab.customer_features")


def test_an_unexpected_column_passes_with_a_warning(local_edp, tmp_path):
    _corrupt(local_edp, TX, _with_extra_column, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        result = _run(AssetSelection.assets(asset_key(TX)), instance)  # with its checks
    evaluations = {e.check_name: e for e in _events(result, "ASSET_CHECK_EVALUATION")}
    assert result.success and set(evaluations) == {RELATIONSHIPS, _check_key(TX).name}
    evaluation = evaluations[_check_key(TX).name]
    assert evaluation.passed and "quarantine_table" not in evaluation.metadata
    assert evaluation.metadata["extra_columns"].value == EXTRA
    assert f"not in pandera schema Transactions: {EXTRA}; passed" in evaluation.metadata["warning"].value
    [observation] = _events(result, "ASSET_OBSERVATION")
    assert observation.asset_observation.metadata["extra_columns"].value == EXTRA


def test_a_product_is_not_observed_without_its_blocking_checks(local_edp):
    with DagsterInstance.ephemeral() as instance:
        unchecked = AssetSelection.assets(asset_key(TX)).without_checks() | AssetSelection.checks(_check_key(TX))
        result = _run(unchecked, instance)
    [failure] = _events(result, "STEP_FAILURE")
    assert not result.success and _events(result, "ASSET_OBSERVATION") == []
    assert f"edp/fdp/transactions selected without its blocking check {RELATIONSHIPS}" in failure.error.message


def test_good_sources_pass_every_check(local_edp, spark):
    for name, model in SOURCE_MODELS.items():
        rows, violations = validate(model, local_edp.read(spark, name))
        assert rows > 0 and violations == [], (name, violations)


def test_every_float_is_finite_and_a_bad_value_is_reported_once(spark):
    schema = pandera.DataFrameSchema({"x": pandera.Column(T.DoubleType(), pandera.Check.ge(0), nullable=True)},
                                     name="Floats")
    df = spark.createDataFrame([(1.0,), (float("inf"),), (float("-inf"),), (float("nan"),), (None,)], "x double")
    _, violations = validate(schema, df)
    assert [(v.column, v.rule, v.failed_rows) for v in violations] == [("x", FINITE, 3)]


def test_a_column_pandera_cannot_type_is_reported_not_crashed(spark):
    df = spark.sql("SELECT 'H1' AS holding_id, 'C00000001' AS customer_id, NULL AS product_code, "
                   "DATE'2024-01-01' AS opened_date, CAST(NULL AS DATE) AS closed_date")
    _, violations = validate(SOURCE_MODELS[HOLDINGS], df)
    assert [v.column for v in violations] == ["product_code"]
    assert "expected StringType(), got NullType()" in violations[0].rule


def test_the_offending_rows_are_the_rows_each_rule_counts(spark):
    df = spark.createDataFrame(
        [("C00000001", "credit_card", "H1"), ("C00000002", "gold_bars", "H2"), ("C00000003", "gold_bars", "H3"),
         ("C00000004", "credit_card", "H3")],
        "customer_id string, product_code string, holding_id string",
    )
    rows, violations = validate(SOURCE_MODELS[HOLDINGS], df)
    offending = offending_rows(df, violations, "2026-10-01")
    found = offending.rows.toPandas()
    rule = {v.column: f"{v.column}: {v.rule}" for v in violations}
    assert offending.count == len(found) == 3
    failing = {r: found[found["quarantine_rule"] == r] for r in rule.values()}
    assert sorted(failing[rule["product_code"]]["customer_id"]) == ["C00000002", "C00000003"]
    assert list(failing[rule["holding_id"]]["holding_id"]) == ["H3"]  # the repeat of H3, not its first row
    assert set(found["quarantine_partition"]) == {"2026-10-01"}
    assert not any(key in v.describe(rows) for v in violations for key in ("C0000000", "H2", "H3"))


def test_a_failing_partition_replaces_only_its_own_rows_in_the_quarantine(aiml_home, spark):
    """The model family evaluates every product's scores in one step: product B's failure must not erase A's
    evidence, and A's rerun replaces A's rows only."""
    from aiml_assets.resources.per_environment import build_resources

    settings = load_settings("local")
    r = build_resources(settings)
    io = TableAccess(r["spark"], r["catalog"], r["tables"], r["storage"], "run-1")
    table = quarantine_table(settings, TRAINING_KEY, "partitions")
    schema = pandera.DataFrameSchema({"score": pandera.Column(T.DoubleType(), pandera.Check.le(1.0))}, name="S")

    def failing(partition, *scores):
        df = spark.createDataFrame([(s,) for s in scores], "score double")
        return quarantine(io, table, offending_rows(df, validate(schema, df)[1], partition))

    failing("credit_card", 2.0, 3.0)
    failing("mortgage", 4.0)
    failing("credit_card", 5.0)
    kept = io.tables.read(spark, table.location(io)).toPandas()
    assert sorted(zip(kept["quarantine_partition"], kept["score"])) == [("credit_card", 5.0), ("mortgage", 4.0)]
    failing(None, 6.0)  # an unpartitioned evaluation judges the whole asset: it replaces everything
    assert list(io.tables.read(spark, table.location(io)).toPandas()["score"]) == [6.0]


def test_a_rerun_of_a_failing_check_replaces_its_quarantine(local_edp, spark, tmp_path):
    customers = DeltaTable(local_edp.location(CUSTOMERS)).to_pandas()["customer_id"]
    with DagsterInstance.ephemeral() as instance:
        for change, bad in ((_set("segment", "not_a_segment", rows=3), 3), (_set("segment", "mass", rows=2), 1)):
            _corrupt(local_edp, CUSTOMERS, change, tmp_path)  # the second run mends two of the three rows
            [evaluation] = _events(_run(AssetSelection.checks(_check_key(CUSTOMERS)), instance),
                                   "ASSET_CHECK_EVALUATION")
            quarantined = local_edp.read(spark, evaluation.metadata["quarantine_table"].value).toPandas()
            assert not evaluation.passed and evaluation.metadata["quarantined_rows"].value == bad
            assert sorted(quarantined["customer_id"]) == sorted(customers[3 - bad:3])
            assert not any(c in evaluation.description for c in customers[:3])
