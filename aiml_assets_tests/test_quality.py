"""Bad source input is stopped by the blocking pandera check: a clear message, nothing downstream written."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest
from dagster import AssetCheckKey, AssetSelection, DagsterInstance, define_asset_job
from deltalake import DeltaTable, write_deltalake

from aiml_assets.definitions import build_definitions
from aiml_assets.features.assets import FEATURES_KEY, TRAINING_KEY
from aiml_assets.quality import validate
from aiml_assets.sources.edp import asset_key
from aiml_assets.sources.schemas import SOURCE_MODELS

TX, CUSTOMERS, HOLDINGS = "edp.fdp.transactions", "edp.fdp.customers", "edp.cdp.product_holdings"
FUTURE = datetime.now(timezone.utc) + timedelta(days=30)


def _set(column, value, rows=3):
    def change(df):
        df = df.copy()
        df[column] = df[column].astype(object)
        df.loc[df.index[:rows], column] = value
        return df
    return change


# table, how to break it, column and rule the message must name, failed rows (None: schema level)
BAD_INPUTS = {
    "null_keys": (TX, _set("customer_id", None), "customer_id", "not_null", 3),
    "duplicate_keys": (CUSTOMERS, lambda df: pd.concat([df, df.head(2)]), "customer_id", "unique", 2),
    "negative_amounts": (TX, _set("amount", -12.5), "amount", "greater_than(min_value=0)", 3),
    "nan_amounts": (TX, _set("amount", float("nan"), rows=4), "amount", "not_null (no NaN)", 4),
    "future_events": (TX, _set("transaction_ts", pd.Timestamp(FUTURE), rows=2), "transaction_ts",
                      "not in the future", 2),
    "unknown_product": (HOLDINGS, _set("product_code", "crypto_wallet", rows=5), "product_code", "isin(", 5),
    "missing_column": (TX, lambda df: df.drop(columns=["channel"]), "channel", "column_in_dataframe", None),
    "wrong_type": (TX, lambda df: df.assign(amount=df["amount"].astype(str)), "amount",
                   "expected column 'amount' to have type DoubleType(), got StringType()", None),
    "empty_product": (HOLDINGS, lambda df: df.head(0), "(all)", "not empty", None),
}


def _corrupt(catalog, name, change, tmp_path):
    table = DeltaTable(catalog.location(name))
    df = change(table.to_pandas())
    schema = pa.schema([field.with_nullable(True) for field in pa.schema(table.schema().to_arrow())])
    try:  # keep the product's column types unless the change is about them
        data = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
        data = pa.Table.from_pandas(df, preserve_index=False)
    location = str(tmp_path / "bad" / name)
    write_deltalake(location, data, mode="overwrite")
    catalog.register(name, location, owner="EDP")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_source_input_stops_the_graph(case, local_edp, tmp_path):
    name, change, column, rule, failed_rows = BAD_INPUTS[case]
    _corrupt(local_edp, name, change, tmp_path)
    defs = build_definitions("local")
    source = asset_key(name)
    check_key = AssetCheckKey(source, f"{SOURCE_MODELS[name].__name__}_schema")
    job = define_asset_job(
        "bad_input", selection=AssetSelection.checks(check_key) | AssetSelection.assets(FEATURES_KEY, TRAINING_KEY)
    ).resolve(asset_graph=defs.resolve_asset_graph(), resource_defs=defs.resources)

    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, tags={"dagster/partition": "2026-10-01"},
                                        resources=defs.resources, raise_on_error=False)
        evaluation = next(e.event_specific_data for e in result.all_events
                          if e.event_type_value == "ASSET_CHECK_EVALUATION")
        assert not evaluation.passed
        message = evaluation.description
        assert message.startswith(f"{source.to_user_string()} failed its pandera schema")
        assert f"column {column}: " in message and rule in message, message
        if failed_rows is not None:
            assert f"failed for {failed_rows} of " in message, message
        # nothing downstream ran or was written
        assert instance.get_latest_materialization_event(FEATURES_KEY) is None
        assert instance.get_latest_materialization_event(TRAINING_KEY) is None
    assert not local_edp.exists("aiml_local.lab.customer_features")


def test_good_sources_pass_every_check(local_edp, spark):
    for name, model in SOURCE_MODELS.items():
        rows, violations = validate(model, local_edp.read(spark, name))
        assert rows > 0 and violations == [], (name, violations)


def test_a_column_pandera_cannot_type_is_reported_not_crashed(spark):
    from aiml_assets.sources.schemas import ProductHoldings

    df = spark.sql("SELECT 'H1' AS holding_id, 'C00000001' AS customer_id, NULL AS product_code, "
                   "DATE'2024-01-01' AS opened_date, CAST(NULL AS DATE) AS closed_date")
    _, violations = validate(ProductHoldings, df)
    assert [v.column for v in violations] == ["product_code"]
    assert "expected StringType(), got NullType()" in violations[0].rule


def test_examples_name_the_failing_keys(spark):
    df = spark.createDataFrame(
        [("C00000001", "credit_card", "H1"), ("C00000002", "gold_bars", "H2"), ("C00000003", "gold_bars", "H3")],
        "customer_id string, product_code string, holding_id string",
    )
    from aiml_assets.sources.schemas import ProductHoldings

    _, violations = validate(ProductHoldings, df)
    unknown = next(v for v in violations if v.column == "product_code")
    assert (unknown.failed_rows, unknown.examples) == (2, ("holding_id=H2", "holding_id=H3"))
