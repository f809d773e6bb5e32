"""Rules across rows and products of the EDP sources (sources/relationships.py) and their monthly volume
(sources/volume.py): a broken source is stopped at the source, its message naming product, column, rule and counts
and never a customer key; the clean seed passes every rule."""

import re
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from dagster import DagsterInstance, build_reconstructable_job, execute_job, multiprocess_executor, serialize_value
from deltalake import DeltaTable, write_deltalake

from aiml_assets.definitions import main_job_for_current_env
from aiml_assets.features.assets import FEATURES_KEY, TRAINING_KEY
from aiml_assets.quality import validate
from aiml_assets.settings import load_settings
from aiml_assets.sources.horizon import DataHorizon
from aiml_assets.sources.relationships import (
    CHECK_NAME, CHILDREN, CUSTOMERS, HOLDINGS, RESPONSES, TRANSACTIONS, evaluate,
)
from aiml_assets.sources.schemas import SOURCE_MODELS
from aiml_assets.sources.volume import MonthlyVolume, complete_months, read_window, volume_violations
# by its package name: the multiprocess executor's step processes import this module so
from aiml_assets_tests.test_quality import _corrupt  # rewrites a seeded source as a new Delta version

SNAPSHOT = {"dagster/partition": "2026-10-01"}  # reads 2025-10-01 to 2026-10-31: months 2025-10 to 2026-10
EVERY_SNAPSHOT = {"dagster/asset_partition_range_start": "2024-11-01",
                  "dagster/asset_partition_range_end": "2026-10-01"}
CUSTOMER_KEY = re.compile(r"C[0-9]{8}")
UNKNOWN = "C99999999"  # no such customer in the seed
BAND = (0.5, 2.0)


def _outcome(catalog, spark, child, tags=SNAPSHOT):
    return evaluate(child, lambda name: catalog.read(spark, name), load_settings("local"), tags)


def _described(outcome) -> list[str]:
    return [v.describe(outcome.rows) for v in outcome.violations]


def _recent_joiners(catalog) -> set[str]:
    customers = DeltaTable(catalog.location(CUSTOMERS)).to_pandas()
    return set(customers.loc[customers["joined_date"] >= date(2025, 1, 1), "customer_id"])


class _Rows:
    """Picks disjoint rows of a product to break, so that each rule's failures are counted exactly."""

    def __init__(self, df: pd.DataFrame, recent: set[str]):
        self.df, self.recent, self.taken = df.copy(), recent, set()

    def pick(self, n: int, *, recent: bool, where=None) -> pd.Index:
        mask = self.df["customer_id"].isin(self.recent) == recent
        if where is not None:
            mask &= where(self.df)
        rows = [i for i in self.df.index[mask] if i not in self.taken][:n]
        self.taken |= set(rows)
        return pd.Index(rows)

    def set(self, rows: pd.Index, column: str, value) -> None:
        self.df[column] = self.df[column].astype(object)
        self.df.loc[rows, column] = value


def _broken_transactions(recent):
    def change(df):
        rows = _Rows(df, recent)
        rows.set(rows.pick(3, recent=False), "customer_id", UNKNOWN)
        rows.set(rows.pick(2, recent=True), "transaction_ts", pd.Timestamp("2024-06-01", tz="UTC"))
        return rows.df
    return change


def _broken_holdings(recent):
    def change(df):
        rows = _Rows(df, recent)
        rows.set(rows.pick(2, recent=False), "customer_id", UNKNOWN)
        rows.set(rows.pick(2, recent=True), "opened_date", date(2024, 6, 1))
        closed = rows.pick(3, recent=False, where=lambda d: d["closed_date"].notna())
        rows.set(closed, "closed_date", rows.df.loc[closed, "opened_date"] - timedelta(days=1))
        return rows.df
    return change


def _broken_responses(recent):
    def change(df):
        rows = _Rows(df, recent)
        rows.set(rows.pick(1, recent=False, where=lambda d: ~d["responded"]), "customer_id", UNKNOWN)
        rows.set(rows.pick(2, recent=True, where=lambda d: ~d["responded"]), "contact_date", date(2024, 6, 1))
        answered = rows.pick(3, recent=False, where=lambda d: d["responded"])
        rows.set(answered, "response_date", rows.df.loc[answered, "contact_date"] - timedelta(days=1))
        again = rows.df.loc[rows.pick(2, recent=False)].assign(response_id=["R-again-1", "R-again-2"])
        return pd.concat([rows.df, again], ignore_index=True)
    return change


BROKEN = {  # product: how to break it, and the violations its check must report (of N rows)
    TRANSACTIONS: (_broken_transactions, [
        "column customer_id: references edp.fdp.customers.customer_id failed for 3 of {n} rows",
        "column transaction_ts: not before edp.fdp.customers.joined_date failed for 2 of {n} rows",
    ]),
    HOLDINGS: (_broken_holdings, [
        "column customer_id: references edp.fdp.customers.customer_id failed for 2 of {n} rows",
        "column opened_date: not before edp.fdp.customers.joined_date failed for 2 of {n} rows",
        "column closed_date: not before opened_date failed for 3 of {n} rows",
    ]),
    RESPONSES: (_broken_responses, [
        "column customer_id: references edp.fdp.customers.customer_id failed for 1 of {n} rows",
        "column contact_date: not before edp.fdp.customers.joined_date failed for 2 of {n} rows",
        "column response_date: not before contact_date failed for 3 of {n} rows",
        "column campaign_id,customer_id: unique failed for 2 of {n} rows",
    ]),
}


def test_the_clean_seed_passes_every_rule(local_edp, spark):
    for tags in (SNAPSHOT, EVERY_SNAPSHOT):  # the main job's snapshot; a backfill of every snapshot
        for child in CHILDREN:
            outcome = _outcome(local_edp, spark, child, tags)
            assert outcome.rows and outcome.months and outcome.violations == [], (child, tags, _described(outcome))
    assert [m.isoformat() for m in _outcome(local_edp, spark, HOLDINGS).months][::12] == ["2025-10-01", "2026-10-01"]


def test_broken_references_order_and_keys_are_counted_per_rule(local_edp, spark, tmp_path):
    recent = _recent_joiners(local_edp)
    for child, (breaking, _) in BROKEN.items():
        _corrupt(local_edp, child, breaking(recent), tmp_path)
    for child, (_, expected) in BROKEN.items():
        outcome = _outcome(local_edp, spark, child)
        assert _described(outcome) == [line.format(n=outcome.rows) for line in expected], child
        assert not CUSTOMER_KEY.search(" ".join(_described(outcome)))


def _without_month(column: str, month: str, keep: float = 0.0, times: int = 1):
    """Keeps `keep` of the rows whose `column` falls in `month` (YYYY-MM), repeated `times`."""
    def change(df):
        in_month = pd.to_datetime(df[column]).dt.strftime("%Y-%m") == month
        kept = df[in_month].iloc[:int(in_month.sum() * keep)]
        return pd.concat([df[~in_month]] + [kept] * times, ignore_index=True)
    return change


def _compose(*changes):
    def change(df):
        for step in changes:
            df = step(df)
        return df
    return change


def _flagged_months(outcome) -> dict[str, str]:
    return {re.search(r"monthly volume: (\d{4}-\d{2})", line).group(1): line for line in _described(outcome)}


def test_gaps_and_out_of_band_months_name_product_and_month(local_edp, spark, tmp_path):
    _corrupt(local_edp, TRANSACTIONS, _compose(_without_month("transaction_ts", "2026-03"),
                                               _without_month("transaction_ts", "2026-06", keep=0.3),
                                               _without_month("transaction_ts", "2026-01", keep=1.0, times=3)),
             tmp_path)
    _corrupt(local_edp, HOLDINGS, _without_month("opened_date", "2026-05"), tmp_path)
    _corrupt(local_edp, RESPONSES, _compose(_without_month("contact_date", "2026-04"),
                                            _without_month("contact_date", "2026-05")), tmp_path)

    transactions = _flagged_months(_outcome(local_edp, spark, TRANSACTIONS))
    assert sorted(transactions) == ["2026-01", "2026-03", "2026-06"]
    assert transactions["2026-03"].startswith("column transaction_ts: monthly volume: 2026-03 has no rows (a gap)")
    assert re.search(r"2026-06 has \d+ rows, 0\.[23]\dx against the median \d+", transactions["2026-06"])
    assert re.search(r"2026-01 has \d+ rows, 2\.\d\dx .* \(band 0.5x-2.0x\)", transactions["2026-01"])
    assert _described(_outcome(local_edp, spark, HOLDINGS))[0].startswith(
        "column opened_date: monthly volume: 2026-05 has no rows (a gap)")
    assert _described(_outcome(local_edp, spark, RESPONSES)) == [
        "column contact_date: monthly volume: 2026-04 and 2026-05 have no rows (a gap: a sparse product may miss "
        "one month, never two running)"]


def test_natural_keys_are_unique_over_the_whole_product(local_edp, spark, tmp_path):
    """A duplicate in another commit (another file) of the product is one: the keys are judged over all of it."""
    for name in (HOLDINGS, RESPONSES):
        _corrupt(local_edp, name, lambda df: df, tmp_path)
        head = DeltaTable(local_edp.location(name)).to_pandas().head(2)
        key = SOURCE_MODELS[name].to_schema().unique[0]
        write_deltalake(local_edp.location(name), head.assign(**{key: head[key] + "-again"}) if name == RESPONSES
                        else head, mode="append")
    rows, violations = validate(SOURCE_MODELS[HOLDINGS], local_edp.read(spark, HOLDINGS))
    assert [(v.column, v.rule, v.failed_rows) for v in violations] == [("holding_id", "unique", 2)]
    assert _described(_outcome(local_edp, spark, RESPONSES))[-1].startswith(
        "column campaign_id,customer_id: unique failed for 2 of ")


def test_a_column_the_rules_need_is_reported_not_crashed(local_edp, spark):
    def read(name):
        df = local_edp.read(spark, name)
        return df.drop("joined_date") if name == CUSTOMERS else df

    outcome = evaluate(HOLDINGS, read, load_settings("local"), SNAPSHOT)
    assert _described(outcome) == ["column joined_date: missing or not date in edp.fdp.customers: the relationship "
                                   "and volume rules cannot run"]


def test_small_months_are_not_flagged_for_noise_nor_the_partial_horizon_month():
    dense = MonthlyVolume(TRANSACTIONS, "transaction_ts", dense=True)
    months = [date(2026, m, 1) for m in range(1, 9)]
    # a few openings a month (a small local seed): a month of 0 or 2x its neighbours is chance
    assert volume_violations(dense, dict(zip(months, [4, 0, 5, 9, 3, 4, 6, 5])), months, BAND) == []
    # the same shape at volume is a gap and an out-of-band month
    flagged = volume_violations(dense, dict(zip(months, [400, 0, 500, 900, 300, 400, 600, 500])), months, BAND)
    assert [v.rule.split(" has ")[0] for v in flagged] == ["monthly volume: 2026-02", "monthly volume: 2026-04"]
    sparse = MonthlyVolume(RESPONSES, "contact_date", dense=False)
    assert volume_violations(sparse, dict(zip(months, [40, 0, 50, 9, 0, 4, 0, 5])), months, BAND) == []
    # a snapshot's window is its features' year and its labels; a run without partitions judges the default
    # main run's snapshots (the latest three whose labels the data completes: 2026-08-01 to 2026-10-01)
    settings, horizon = load_settings("local"), DataHorizon(date(2026, 10, 15))
    assert read_window(settings, horizon, {"dagster/partition": "2026-09-01"}) == (date(2025, 9, 1), date(2026, 10, 1))
    assert read_window(settings, DataHorizon(date(2026, 10, 31)), {}) == (date(2025, 8, 1), date(2026, 10, 31))
    # data ending 2026-10-15: October is not judged
    assert complete_months((date(2025, 9, 1), date(2026, 10, 20)), horizon)[-1] == date(2026, 9, 1)


OBSERVATION_STEP = "edp_source_products"  # the one step observing and checking every product
REPOSITORY = str(Path(__file__).parents[1])  # where the multiprocess executor's step processes import this module


def _steps(result, event_type: str) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == event_type}


def _evaluations(result) -> list:
    return [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def _failed_checks(result) -> list:
    return [e.event_specific_data for e in _evaluations(result) if not e.event_specific_data.passed]


def _main_job_on_separate_processes():
    """The main job on the executor the remote environments use (each step its own process; there, its own run)."""
    return main_job_for_current_env().with_executor_def(multiprocess_executor)


def test_a_broken_relationship_stops_the_main_job_before_any_lab_asset(local_edp, tmp_path):
    """On the multiprocess executor, as remotely: the lab steps wait on the observation step's outputs, not on a
    shared process (in-process, test_quality's bad inputs stop the features step the same way)."""
    _corrupt(local_edp, TRANSACTIONS, _compose(_broken_transactions(_recent_joiners(local_edp)),
                                               _without_month("transaction_ts", "2026-02")), tmp_path)
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:  # multiprocess needs a persistent one
        job = build_reconstructable_job(
            "aiml_assets_tests.test_source_relationships", "_main_job_on_separate_processes",
            reconstructor_working_directory=REPOSITORY)
        result = execute_job(job, instance=instance, tags=SNAPSHOT, raise_on_error=False)
        # every check ran in the observation's step, which failed: no lab step started
        assert not result.success
        assert _steps(result, "STEP_START") == _steps(result, "STEP_FAILURE") == {OBSERVATION_STEP}
        assert len(_evaluations(result)) == 7 and {e.step_key for e in _evaluations(result)} == {OBSERVATION_STEP}
        failed = _failed_checks(result)
        assert [(f.asset_key.to_user_string(), f.check_name) for f in failed] == [
            ("edp/fdp/transactions", CHECK_NAME)]
        message = failed[0].description
        assert message.startswith("edp/fdp/transactions failed its relationship and volume rules:"), message
        assert "column customer_id: references edp.fdp.customers.customer_id failed for 3 of " in message
        assert "column transaction_ts: monthly volume: 2026-02 has no rows (a gap)" in message
        table = failed[0].metadata["quarantine_table"].value  # the 5 failing rows, none for the month's gap
        assert f"5 offending rows (one per failing rule and row) are in quarantine table {table}" in message
        quarantined = DeltaTable(local_edp.location(table)).to_pandas()
        assert quarantined["quarantine_rule"].value_counts().to_dict() == {
            "customer_id: references edp.fdp.customers.customer_id": 3,
            "transaction_ts: not before edp.fdp.customers.joined_date": 2}
        assert list(quarantined.columns[2:]) == list(DeltaTable(local_edp.location(TRANSACTIONS)).to_pandas().columns)
        assert (quarantined["customer_id"] == UNKNOWN).sum() == 3
        assert instance.get_latest_materialization_event(FEATURES_KEY) is None
        assert instance.get_latest_materialization_event(TRAINING_KEY) is None
        # no customer key anywhere in the run's event log: messages, metadata, logs
        records = instance.all_logs(result.run_id)
        assert records and not CUSTOMER_KEY.search(" ".join(serialize_value(r) for r in records))
    assert not local_edp.exists("aiml_local.lab.customer_features")
