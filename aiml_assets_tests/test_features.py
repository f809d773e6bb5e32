"""Customer features and training sets: point-in-time correctness, partitions, catalog names, metadata, and their
one step's write-audit-publish per key."""

from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from dagster import AssetCheckKey, AssetRecordsFilter, AssetSelection, DagsterInstance, define_asset_job
from deltalake import DeltaTable
from pyspark.sql import functions as F

from aiml_assets.definitions import build_definitions
from aiml_assets.features import assets
from aiml_assets.features.assets import labelled
from aiml_assets.features.customer_features import customer_features
from aiml_assets.features.schemas import training_set_schema
from aiml_assets.keys import FEATURES_KEY, TRAINING_KEY
from aiml_assets.model_inputs import NON_FEATURES, feature_columns
from aiml_assets.sources.erased import Sources
from aiml_assets.settings import load_settings, product_codes
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


def _run(defs, instance, selection, *partitions):
    """One run of `selection` (asset keys or an AssetSelection) over `partitions` (one, or a range's first and last)."""
    tags = ({"dagster/partition": partitions[0]} if len(partitions) == 1 else
            {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]})
    job = define_asset_job("lab_selection", selection=selection).resolve(
        asset_graph=defs.resolve_asset_graph(), resource_defs=defs.resources)
    return job.execute_in_process(instance=instance, tags=tags, resources=defs.resources, raise_on_error=False)


def _evaluations(result) -> dict:
    return {e.event_specific_data.asset_key: e.event_specific_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def _materialized(result) -> set:
    return {e.asset_key for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}


def _mislabelled(labelled_rows):
    """A labelling defect: every mortgage row labelled 2."""
    def labelled(*args):
        rows = labelled_rows(*args)
        return rows.withColumn("label", F.when(F.col("product_code") == "mortgage", 2).otherwise(F.col("label")))
    return labelled


def test_write_audit_publish_per_key_in_one_step(local_edp, spark, aiml_home, tmp_path, monkeypatch):
    defs = build_definitions("local")
    both, read = [FEATURES_KEY, TRAINING_KEY], lambda table: local_edp.read(spark, f"aiml_local.lab.{table}")
    with DagsterInstance.ephemeral() as instance:
        # a backfill range: both keys, every snapshot, in one step (one Databricks run)
        result = _run(defs, instance, both, "2026-08-01", "2026-09-01")
        assert result.success and _materialized(result) == {FEATURES_KEY, TRAINING_KEY}
        assert len({e.step_key for e in result.all_events if e.step_key}) == 1
        features = read("customer_features")
        assert {str(r[0]) for r in features.select("snapshot_date").distinct().collect()} == {"2026-08-01", "2026-09-01"}
        # a range run's metadata is each partition's own, not the range's total
        counts = {str(r[0]): r[1] for r in features.groupBy("snapshot_date").count().collect()}
        assert counts["2026-08-01"] != counts["2026-09-01"]  # the seeded bank grows month by month
        for key in ("2026-08-01", "2026-09-01"):
            meta = instance.fetch_materializations(records_filter=AssetRecordsFilter(
                asset_key=FEATURES_KEY, asset_partitions=[key]), limit=1).records[0].asset_materialization.metadata
            assert meta["dagster/row_count"].value == counts[key] > 1000
            assert str(date.fromisoformat(key) - timedelta(days=3)) <= meta["max_event_time_used"].value < key
            assert set(meta["null_rate"].value) >= {"spend_365d", "days_since_last_contact"}
            assert meta["distribution_plot"].value.startswith("![feature distributions](data:image/png;base64,")
            training = instance.fetch_materializations(records_filter=AssetRecordsFilter(
                asset_key=TRAINING_KEY, asset_partitions=[key]), limit=1).records[0].asset_materialization.metadata
            rows = read("training_set").filter(f"snapshot_date = '{key}'").count()
            assert training["dagster/row_count"].value == sum(training["rows_per_product"].value.values()) == rows
            rates = training["positive_rate_per_product"].value
            assert set(rates) == set(load_settings("local").products) and all(0 < r < 0.2 for r in rates.values())
        features_at, training_at = (local_edp.location(f"aiml_local.lab.{t}") for t in ("customer_features",
                                                                                        "training_set"))
        features_before, training_before = _files(features_at), _files(training_at)

        # a labelling defect fails the training set's audit: the features are written, the training set is not
        monkeypatch.setattr(assets, "labelled", _mislabelled(assets.labelled))
        result = _run(defs, instance, both, "2026-09-01")
        monkeypatch.undo()
        checks = _evaluations(result)
        assert not result.success and checks[FEATURES_KEY].passed and not checks[TRAINING_KEY].passed
        assert _materialized(result) == {FEATURES_KEY}
        assert checks[TRAINING_KEY].description.startswith(
            "lab/training_set failed its pandera schema; nothing was written and its current partitions stay current")
        assert "partition 2026-09-01: column label: isin(" in checks[TRAINING_KEY].description
        quarantined = local_edp.read(spark, checks[TRAINING_KEY].metadata["quarantine_table"].value)
        assert {r["label"] for r in quarantined.select("label").distinct().collect()} == {2}
        features_after = _files(features_at)
        assert {f for f in features_after if f[1] == "2026-08-01"} == {f for f in features_before if f[1] == "2026-08-01"}
        assert {f for f in features_after if f[1] == "2026-09-01"}.isdisjoint(features_before)  # September replaced
        assert _files(training_at) == training_before  # the training set's partitions are still the current ones

        # a data scientist materializes the training set alone: labelled from the features table as it is
        result = _run(defs, instance, [TRAINING_KEY], "2026-09-01")
        assert result.success and _materialized(result) == {TRAINING_KEY} and _evaluations(result)[TRAINING_KEY].passed
        training_after = _files(training_at)
        assert {f for f in training_after if f[1] == "2026-09-01"}.isdisjoint(training_before)
        assert read("training_set").filter("snapshot_date = '2026-09-01' and label not in (0, 1)").count() == 0

        # features breaking their schema (sources left unchecked) replace nothing, and the training set is not built
        _corrupt(local_edp, "edp.fdp.customers", _set("region", "Atlantis", rows=4), tmp_path)
        result = _run(defs, instance, both, "2026-09-01")
        [evaluation] = _evaluations(result).values()
        assert not result.success and not evaluation.passed and not _materialized(result)
        assert evaluation.description.startswith("lab/customer_features failed its pandera schema; nothing was written")
        assert "partition 2026-09-01: column region: isin(" in evaluation.description
        assert "failed for 4 of " in evaluation.description and "Atlantis" not in evaluation.description
        quarantined = local_edp.read(spark, evaluation.metadata["quarantine_table"].value).toPandas()
        assert f"4 offending rows (one per failing rule and row) are in quarantine table " \
            f"{evaluation.metadata['quarantine_table'].value}" in evaluation.description
        assert (len(quarantined), set(quarantined["region"]), set(quarantined["quarantine_partition"])) == (
            4, {"Atlantis"}, {"2026-09-01"})
        assert not any(c in evaluation.description + str(evaluation.metadata) for c in quarantined["customer_id"])
        assert (_files(features_at), _files(training_at)) == (features_after, training_after)


@pytest.mark.parametrize("selection, refusal", [
    (AssetSelection.assets(FEATURES_KEY).without_checks(),
     "lab/customer_features selected without its blocking check CustomerFeatures_schema"),
    (AssetSelection.assets(FEATURES_KEY) | AssetSelection.checks(AssetCheckKey(TRAINING_KEY, "TrainingSet_schema")),
     "check TrainingSet_schema selected without lab/training_set, whose step it checks"),
], ids=["asset_without_its_check", "check_without_its_asset"])
def test_a_selection_splitting_an_asset_from_its_audit_is_refused(aiml_home, selection, refusal):
    with DagsterInstance.ephemeral() as instance:
        result = _run(build_definitions("local"), instance, selection, "2026-09-01")
    [failure] = [e.step_failure_data.error.to_string() for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert refusal in failure and not _materialized(result)


def test_label_window_must_be_complete(local_edp):
    with DagsterInstance.ephemeral() as instance:
        # the EDP data ends 2026-10-31; a November snapshot's 30-day labels would reach past it
        result = _run(build_definitions("local"), instance, [FEATURES_KEY, TRAINING_KEY], "2026-11-01")
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].step_failure_data.error.to_string() if failures else ""
    assert "lab/training_set: the EDP data ends 2026-10-31; 2026-11-01: the 30-day label window ends 2026-12-01" \
        in message
    # refused before anything is computed or written: the features of that snapshot too
    assert not {"aiml_local.lab.customer_features", "aiml_local.lab.training_set"} & set(local_edp.names())


@pytest.mark.parametrize("count", [6, 49])
def test_the_model_inputs_name_the_training_sets_feature_columns(count):
    """Nexus checks a published model's columns against `model_inputs`, the features build them: they agree."""
    products = product_codes(load_settings().products, count)
    columns = list(training_set_schema(products).columns)
    assert [c for c in columns if c not in NON_FEATURES] == feature_columns(products)
