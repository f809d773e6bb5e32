"""Customer features and training sets: point-in-time correctness, partitions, catalog names, metadata."""

from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, define_asset_job
from deltalake import DeltaTable

from aiml_assets.definitions import build_definitions
from aiml_assets.features.assets import FEATURES_KEY, TRAINING_KEY, labelled
from aiml_assets.features.customer_features import Sources, customer_features
from aiml_assets.settings import load_settings
from aiml_assets_tests.test_quality import _corrupt, _set

SNAPSHOT = date(2025, 6, 1)
PRODUCTS = ["credit_card", "mortgage"]
CUSTOMERS = "customer_id string, birth_date date, region string, segment string, income_band string, joined_date date"
TRANSACTIONS = ("transaction_id long, customer_id string, transaction_ts timestamp, amount double, category string, "
                "channel string")
HOLDINGS = "holding_id string, customer_id string, product_code string, opened_date date, closed_date date"
RESPONSES = ("response_id string, campaign_id string, customer_id string, product_code string, contact_date date, "
             "channel string, responded boolean, response_date date")


def _ts(d: date, hour: int = 12) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=timezone.utc)


def _sources(spark, transactions=(), holdings=(), responses=(), customers=None) -> Sources:
    customers = customers or [
        ("C00000001", date(1980, 3, 1), "London", "affluent", "70k_100k", date(2020, 1, 1)),
        ("C00000002", date(1999, 9, 9), "Wales", "mass", "20k_40k", date(2025, 5, 20)),
    ]
    base_tx = [(1, "C00000001", _ts(SNAPSHOT - timedelta(days=10)), 50.0, "groceries", "online"),
               (2, "C00000001", _ts(SNAPSHOT - timedelta(days=200)), 150.0, "travel", "online")]
    base_holdings = [("H1", "C00000001", "credit_card", date(2021, 1, 1), None)]
    changed = {h[0] for h in holdings}  # a holding with a base holding's id replaces it
    base_responses = [("R1", "CMP-1", "C00000001", "mortgage", SNAPSHOT - timedelta(days=40), "email", True,
                       SNAPSHOT - timedelta(days=35))]
    return Sources(
        spark.createDataFrame(customers, CUSTOMERS),
        spark.createDataFrame(base_tx + list(transactions), TRANSACTIONS),
        spark.createDataFrame([h for h in base_holdings if h[0] not in changed] + list(holdings), HOLDINGS),
        spark.createDataFrame(base_responses + list(responses), RESPONSES),
    )


def _features(spark, **extra) -> dict:
    rows = customer_features(_sources(spark, **extra), SNAPSHOT, PRODUCTS).collect()
    return {row["customer_id"]: row.asDict() for row in rows}


def test_features_as_of_the_snapshot(spark):
    features = _features(spark)
    c1 = features["C00000001"]
    assert (c1["txn_count_30d"], c1["txn_count_90d"], c1["txn_count_365d"]) == (1, 1, 2)
    assert (c1["spend_30d"], c1["spend_365d"], c1["avg_ticket_365d"]) == (50.0, 200.0, 100.0)
    assert c1["share_travel_365d"] == pytest.approx(0.75)
    assert (c1["days_since_last_txn"], c1["days_since_last_contact"]) == (10, 40)
    assert (c1["holds_credit_card"], c1["holds_mortgage"]) == (1, 0)
    assert (c1["contacts_365d"], c1["responses_365d"]) == (1, 1)
    assert (c1["age_band"], c1["tenure_days"]) == ("45-54", (SNAPSHOT - date(2020, 1, 1)).days)
    c2 = features["C00000002"]
    assert (c2["txn_count_365d"], c2["spend_365d"], c2["days_since_last_txn"], c2["days_since_last_contact"]) == \
        (0, 0.0, None, None)


ON_OR_AFTER = [
    {"transactions": [(9, "C00000001", _ts(SNAPSHOT, 0), 999.0, "retail", "online")]},
    {"transactions": [(9, "C00000001", _ts(SNAPSHOT + timedelta(days=3)), 999.0, "retail", "online")]},
    {"holdings": [("H9", "C00000001", "mortgage", SNAPSHOT, None)]},
    {"holdings": [("H1", "C00000001", "credit_card", date(2021, 1, 1), SNAPSHOT)]},  # closed on the day: still held
    {"responses": [("R9", "CMP-9", "C00000001", "credit_card", SNAPSHOT, "sms", True, SNAPSHOT)]},
    {"customers": [("C00000001", date(1980, 3, 1), "London", "affluent", "70k_100k", date(2020, 1, 1)),
                   ("C00000002", date(1999, 9, 9), "Wales", "mass", "20k_40k", date(2025, 5, 20)),
                   ("C00000003", date(1990, 1, 1), "Wales", "mass", "20k_40k", SNAPSHOT)]},
]
BEFORE = [
    {"transactions": [(9, "C00000001", _ts(SNAPSHOT - timedelta(days=1), 23), 999.0, "retail", "online")]},
    {"holdings": [("H9", "C00000001", "mortgage", SNAPSHOT - timedelta(days=1), None)]},
    {"holdings": [("H1", "C00000001", "credit_card", date(2021, 1, 1), SNAPSHOT - timedelta(days=1))]},
    {"responses": [("R9", "CMP-9", "C00000001", "credit_card", SNAPSHOT - timedelta(days=1), "sms", False, None)]},
]


@pytest.mark.parametrize("change", ON_OR_AFTER, ids=lambda c: next(iter(c)))
def test_events_on_or_after_the_snapshot_leave_features_unchanged(spark, change):
    assert _features(spark, **change) == _features(spark)


@pytest.mark.parametrize("change", BEFORE, ids=lambda c: next(iter(c)))
def test_events_before_the_snapshot_change_features(spark, change):
    assert _features(spark, **change)["C00000001"] != _features(spark)["C00000001"]


def test_labels_come_only_from_the_window_after_the_snapshot_and_skip_holders(spark):
    sources = _sources(spark, holdings=[
        ("H2", "C00000001", "mortgage", SNAPSHOT + timedelta(days=29), None),   # inside the window: positive
        ("H3", "C00000002", "mortgage", SNAPSHOT + timedelta(days=30), None),   # one day late: negative
        ("H4", "C00000002", "credit_card", SNAPSHOT - timedelta(days=1), None),  # before: a feature, not a label
    ])
    features = customer_features(sources, SNAPSHOT, PRODUCTS)
    rows = labelled(features, sources.holdings, SNAPSHOT, timedelta(days=30), PRODUCTS).collect()
    labels = {(r["customer_id"], r["product_code"]): r["label"] for r in rows}
    # C1 holds credit_card and C2 holds credit_card at the snapshot: not eligible for it
    assert labels == {("C00000001", "mortgage"): 1, ("C00000002", "mortgage"): 0}


def _files(location: str) -> list[tuple[str, str]]:
    actions = pa.table(DeltaTable(location).get_add_actions(flatten=True)).to_pylist()
    return [(a["path"], str(a["partition.snapshot_date"])) for a in actions]


def _run(defs, instance, *partitions):
    tags = ({"dagster/partition": partitions[0]} if len(partitions) == 1 else
            {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]})
    return defs.resolve_job_def("main").execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def test_backfill_range_then_one_new_snapshot_touches_only_its_partition(local_edp, spark, aiml_home, tmp_path):
    defs = build_definitions("local")
    with DagsterInstance.ephemeral() as instance:
        result = _run(defs, instance, "2026-08-01", "2026-09-01")
        assert result.success
        features = local_edp.read(spark, "aiml_local.lab.customer_features")
        assert {str(r[0]) for r in features.select("snapshot_date").distinct().collect()} == {"2026-08-01", "2026-09-01"}
        # a range run's metadata is each partition's own, not the range's total
        counts = {str(r[0]): r[1] for r in features.groupBy("snapshot_date").count().collect()}
        assert counts["2026-08-01"] != counts["2026-09-01"]  # the seeded bank grows month by month
        for key in ("2026-08-01", "2026-09-01"):
            events = instance.fetch_materializations(records_filter=AssetRecordsFilter(
                asset_key=FEATURES_KEY, asset_partitions=[key]), limit=1).records
            meta = events[0].asset_materialization.metadata
            assert meta["dagster/row_count"].value == counts[key]
            assert str(date.fromisoformat(key) - timedelta(days=3)) <= meta["max_event_time_used"].value < key
            training = instance.fetch_materializations(records_filter=AssetRecordsFilter(
                asset_key=TRAINING_KEY, asset_partitions=[key]), limit=1).records[0].asset_materialization.metadata
            rows = local_edp.read(spark, "aiml_local.lab.training_set").filter(f"snapshot_date = '{key}'").count()
            assert training["dagster/row_count"].value == sum(training["rows_per_product"].value.values()) == rows
        location = local_edp.location("aiml_local.lab.customer_features")
        before = _files(location)

        assert _run(defs, instance, "2026-10-01").success
        after = _files(location)
        assert {(p, s) for p, s in after if s != "2026-10-01"} == set(before)  # earlier snapshots untouched
        assert {s for _, s in after} == {"2026-08-01", "2026-09-01", "2026-10-01"}

        training = local_edp.read(spark, "aiml_local.lab.training_set")
        assert training.select("snapshot_date").distinct().count() == 3
        event = instance.get_latest_materialization_event(TRAINING_KEY).asset_materialization
        assert event.partition == "2026-10-01"
        rates = event.metadata["positive_rate_per_product"].value
        assert set(rates) == set(load_settings("local").products)
        assert all(0 < rate < 0.2 for rate in rates.values())
        meta = instance.get_latest_materialization_event(FEATURES_KEY).asset_materialization.metadata
        october = local_edp.read(spark, "aiml_local.lab.customer_features").filter("snapshot_date = '2026-10-01'")
        october_rows = october.count()
        assert meta["dagster/row_count"].value == october_rows > 1000
        assert meta["max_event_time_used"].value < "2026-10-01"
        assert set(meta["null_rate"].value) >= {"spend_365d", "days_since_last_contact"}
        assert meta["distribution_plot"].value.startswith("![feature distributions](data:image/png;base64,")

        # a snapshot whose features break their schema (sources left unchecked) replaces nothing: write-audit-publish
        _corrupt(local_edp, "edp.fdp.customers", _set("region", "Atlantis", rows=4), tmp_path)
        lab_only = define_asset_job("lab_only", selection=[FEATURES_KEY, TRAINING_KEY]).resolve(
            asset_graph=defs.resolve_asset_graph(), resource_defs=defs.resources)
        result = lab_only.execute_in_process(instance=instance, tags={"dagster/partition": "2026-10-01"},
                                             resources=defs.resources, raise_on_error=False)
        [evaluation] = [e.event_specific_data for e in result.all_events
                        if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert not result.success and not evaluation.passed
        assert evaluation.description.startswith("lab/customer_features failed its pandera schema; nothing was written")
        assert "partition 2026-10-01: column region: isin(" in evaluation.description
        assert "failed for 4 of " in evaluation.description and "Atlantis" not in evaluation.description
        quarantined = local_edp.read(spark, evaluation.metadata["quarantine_table"].value).toPandas()
        assert f"4 offending rows (one per failing rule and row) are in quarantine table " \
            f"{evaluation.metadata['quarantine_table'].value}" in evaluation.description
        assert (len(quarantined), set(quarantined["region"]), set(quarantined["quarantine_partition"])) == (
            4, {"Atlantis"}, {"2026-10-01"})
        assert not any(c in evaluation.description + str(evaluation.metadata) for c in quarantined["customer_id"])
        assert _files(location) == after  # the good October partition is still the current one
        assert local_edp.read(spark, "aiml_local.lab.customer_features").filter(
            "snapshot_date = '2026-10-01'").count() == october_rows
        assert instance.get_latest_materialization_event(TRAINING_KEY).run_id != result.run_id  # nothing after ran


def test_label_window_must_be_complete(local_edp):
    defs = build_definitions("local")
    with DagsterInstance.ephemeral() as instance:
        # the EDP data ends 2026-10-31; a November snapshot's 30-day labels would reach past it
        result = defs.resolve_job_def("main").execute_in_process(
            instance=instance, tags={"dagster/partition": "2026-11-01"}, raise_on_error=False)
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].step_failure_data.error.to_string() if failures else ""
    assert "lab/training_set: the EDP data ends 2026-10-31; 2026-11-01: the 30-day label window ends 2026-12-01" \
        in message
    assert "aiml_local.lab.training_set" not in {n for n in local_edp.names()}  # refused before anything is written
