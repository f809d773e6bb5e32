"""Prod inference and CDP publication end to end on seeded data, with real Spark, MLflow, Nexus folder and catalog.

One module-scoped platform: a seeded EDP, the lab features, a model per product promoted through UAT to prod's
champion under the local change request, and a second credit_card version promoted to prod as its challenger (the
canary's model). Tests then run the daily scoring job for their own days, on or before the day after the EDP
data ends (2026-11-01): later days would be scored on stale data, and scoring_features refuses them. A test that
breaks something puts it back, so the tests run in any order.
"""

import hashlib
import shutil
import threading
from datetime import date
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetSelection, DagsterInstance, materialize
from pyspark.sql import functions as F

from aiml_assets import cli
from aiml_assets.definitions import MAIN_JOB, MODELS_JOB, SCORING_JOB, build_definitions
from aiml_assets.edp.seed import seed_edp
from aiml_assets.features.customer_features import offers
from aiml_assets.resources.audit import PUBLICATION, PUBLICATION_REFUSED
from aiml_assets.sources.erased import digest, erasure_key
from aiml_assets.governance.erasure import ERASURE_JOB, RETRAIN_TAG
from aiml_assets.inference.assets import inference_assets
from aiml_assets.keys import CDP_KEY, DEPLOYED_MODEL_KEY, PARALLEL_RUN_KEY, SCORES_KEY, SCORING_FEATURES_KEY
from aiml_assets.models.binary import nexus_paths
from aiml_assets.models.registry import CHALLENGER, alias_version
from aiml_assets.models.training import registered_name
from aiml_assets.publication.cdp import cdp_name, contract_version
from aiml_assets.publication.contract import verify_published
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from local_environment import local_environment
from nexus_server import NexusServer

SNAPSHOTS = ("2026-08-01", "2026-10-01")
CUSTOMERS = 4000  # enough positives per product for every model to pass the gate (see test_models)
END_DATE = date(2026, 11, 1)  # the seeded EDP's last day of data
DAY = "2026-11-01"  # published first; 2026-11-02, the day after the data ends, is the latest that may be scored


@dataclass
class Platform:
    home: Path
    instance: DagsterInstance
    settings: object
    resources: dict
    challenger: int  # credit_card's second version: prod's challenger

    def run(self, day: str, settings=None, selection=None):
        defs = build_definitions(settings=settings or self.settings)
        return defs.resolve_job_def(SCORING_JOB).execute_in_process(
            instance=self.instance, partition_key=day, raise_on_error=False, asset_selection=selection)

    @property
    def catalog(self) -> LocalCatalog:
        return self.resources["catalog"]

    def table(self, name: str):
        return self.catalog.read(self.resources["spark"].get_session(), name)

    def scores(self, day: str):
        return self.table("aiml_local.inference.propensity_scores").filter(F.col("snapshot_date") == day)

    def cdp_entry(self) -> dict:
        return self.catalog.entry(cdp_name(self.settings))

    def materialization(self, result, key: AssetKey):
        return next(e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, spark):
    home = tmp_path_factory.mktemp("inference_home")
    with local_environment(home, DAGSTER_HOME=str(tmp_path_factory.mktemp("inference_dagster"))):
        settings = load_settings("local")
        seed_edp(LocalCatalog(home=str(home)), customers=CUSTOMERS, seed=7, end_date=END_DATE,
                 products=settings.products, log=lambda _: None)
        defs = build_definitions("local")
        with DagsterInstance.get() as instance:
            assert defs.resolve_job_def(MAIN_JOB).execute_in_process(instance=instance, tags={
                "dagster/asset_partition_range_start": SNAPSHOTS[0],
                "dagster/asset_partition_range_end": SNAPSHOTS[1]}).success
            models = defs.resolve_job_def(MODELS_JOB)
            for product in settings.products:
                assert models.execute_in_process(instance=instance, partition_key=product).success, product
            resources = build_resources(settings)
            client = resources["mlflow"].client()
            for product in settings.products:
                version = alias_version(client, registered_name(settings.catalog.aiml_catalog, product), CHALLENGER)
                for target in ("uat", "prod"):
                    assert cli.promote(product, version, cli.LOCAL_CHANGE_REQUEST, target, None), (product, target)
            assert models.execute_in_process(instance=instance, partition_key="credit_card").success
            name = registered_name(settings.catalog.aiml_catalog, "credit_card")
            challenger = alias_version(client, name, CHALLENGER)
            assert challenger == 2
            assert cli.promote("credit_card", challenger, cli.LOCAL_CHANGE_REQUEST, "uat", None)
            assert cli.promote("credit_card", challenger, cli.LOCAL_CHANGE_REQUEST, "prod", None, role="challenger")
            yield Platform(home, instance, settings, resources, challenger)


@pytest.fixture(scope="module")
def first_day(platform):
    result = platform.run(DAY)
    assert result.success
    return result


def test_every_customer_is_scored_and_the_cdp_is_published_by_catalog_name(platform, first_day):
    features = platform.table("aiml_local.inference.scoring_features").filter(F.col("snapshot_date") == DAY)
    scores = platform.scores(DAY)
    products = platform.settings.products
    eligible = offers(features, products).count()
    assert scores.count() == eligible > features.count()  # one row per customer and product they may be offered
    assert scores.select("model_role").distinct().collect() == [("champion",)]  # canary share 0
    ranks = scores.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n"), F.max("rank").alias("top"),
                                              F.countDistinct("rank").alias("distinct"))
    assert ranks.filter((F.col("n") != F.col("top")) | (F.col("n") != F.col("distinct"))).count() == 0
    best = scores.filter(F.col("rank") == 1).join(
        scores.groupBy("customer_id").agg(F.max("score").alias("max")), "customer_id")
    assert best.filter(F.col("score") != F.col("max")).count() == 0
    versions = {r["product_code"]: r["model_version"] for r in scores.select("product_code", "model_version").distinct().collect()}
    assert versions == {p: 1 for p in products}  # the champions, not credit_card's challenger

    # scoring data lives in the scoring bucket (buckets/prod locally), never the lab's
    for name in ("scoring_features", "propensity_scores", "deployed_model"):
        location = Path(platform.catalog.location(f"aiml_local.inference.{name}"))
        assert location.is_relative_to(platform.home / "buckets" / "prod"), location

    # tenants read the CDP by its catalog name; what they read is exactly the day's scores
    entry = platform.cdp_entry()
    cdp = platform.table("edp.cdp.nba_propensity")
    assert cdp.count() == eligible
    assert cdp.select("customer_id", "product_code", "score").exceptAll(
        scores.select("customer_id", "product_code", "score")).count() == 0
    assert Path(entry["location"]).is_relative_to(platform.home / "buckets" / "prod" / "cdp" / "nba_propensity")
    assert entry["owner"] == platform.settings.publication.owner
    properties = entry["properties"]
    assert properties["classification"] == "confidential" and properties["snapshot_date"] == DAY
    assert properties["contract_version"] == contract_version()
    assert properties["read_grants"] == sorted(platform.settings.publication.tenant_groups)
    published = [e for e in platform.resources["audit"].read() if e["action"] == PUBLICATION]
    assert [(e["subject"], e["run_id"], e["details"]["cdp_version"]) for e in published] == [
        ("edp.cdp.nba_propensity", first_day.run_id, properties["cdp_version"])]
    assert (platform.home / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()
    # datacontract-cli on what tenants read; DAY is fixed, so its age is no test of the service levels
    against_contract = verify_published(entry["location"], service_levels=False)
    assert against_contract.passed, against_contract.failures
    metadata = platform.materialization(first_day, CDP_KEY).metadata
    assert metadata["published"].value is True


def _drift_check(result):
    return next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.event_specific_data.check_name == "feature_drift")


def test_drift_check_compares_scoring_features_with_the_deployed_training_data(platform, first_day):
    evaluation = _drift_check(first_day)
    drift = platform.settings.inference.drift
    worst = evaluation.metadata["worst_feature_per_product"].value
    assert set(worst) == set(platform.settings.products) | {"credit_card (challenger)"}  # the canary's model too
    assert all(0 <= v["psi"] <= drift.fail_psi for v in worst.values())  # the same synthetic population
    # a warning (the campaign calendar moves the contact features a little) never blocks the scores
    assert evaluation.passed or evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.passed == all(v["psi"] <= drift.warn_psi for v in worst.values())


def test_drift_above_the_fail_threshold_blocks_scoring(platform, first_day):
    day = "2026-10-24"
    strict = platform.settings.inference.drift.model_copy(update={"warn_psi": 1e-6, "fail_psi": 2e-6})
    settings = platform.settings.model_copy(update={
        "inference": platform.settings.inference.model_copy(update={"drift": strict})})
    result = platform.run(day, settings)
    assert not result.success
    evaluation = _drift_check(result)
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
    assert "feature drift against the deployed models' training data" in evaluation.description
    # the step stopped at the failing check: nothing after it was computed or written
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {SCORING_FEATURES_KEY}
    assert platform.table("aiml_local.inference.deployed_model").filter(F.col("snapshot_date") == day).count() == 0
    assert platform.scores(day).count() == 0


def test_a_rerun_of_the_same_day_publishes_nothing_new(platform, first_day):
    before = platform.cdp_entry()
    versions = sorted((platform.home / "buckets" / "prod" / "cdp" / "nba_propensity" / "versions").iterdir())
    rerun = platform.run(DAY)
    assert rerun.success
    assert platform.cdp_entry() == before  # not even re-registered
    assert sorted((platform.home / "buckets" / "prod" / "cdp" / "nba_propensity" / "versions").iterdir()) == versions
    metadata = platform.materialization(rerun, CDP_KEY).metadata
    assert metadata["published"].value is False and metadata["cdp_version"].value == before["properties"]["cdp_version"]
    assert [e["action"] for e in platform.resources["audit"].read()].count(PUBLICATION) == 1


def test_an_earlier_day_never_replaces_the_published_later_one(platform, first_day):
    before = platform.cdp_entry()
    earlier = platform.run("2026-10-31")
    assert earlier.success
    metadata = platform.materialization(earlier, CDP_KEY).metadata
    assert metadata["published"].value is False and "a later scoring day (2026-11-01)" in metadata["reason"].value
    assert platform.cdp_entry() == before


def test_uat_parallel_run_scores_champion_and_challenger_side_by_side(platform, first_day):
    side = platform.table("aiml_local.inference.parallel_run_report").filter(F.col("snapshot_date") == DAY)
    assert side.count() == platform.scores(DAY).count()
    pairs = {(r["product_code"], r["champion_version"], r["challenger_version"])
             for r in side.select("product_code", "champion_version", "challenger_version").distinct().collect()}
    assert ("credit_card", 1, platform.challenger) in pairs
    others = side.filter(F.col("product_code") != "credit_card")
    assert others.filter(F.col("champion_score") != F.col("challenger_score")).count() == 0
    metadata = platform.materialization(first_day, PARALLEL_RUN_KEY).metadata
    assert metadata["products_without_challenger"].value == [p for p in platform.settings.products
                                                             if p != "credit_card"]
    assert "credit_card" in metadata["score_shift_per_product"].value
    assert 0 < metadata["best_product_agreement"].value <= 1


def test_scoring_features_alone_are_written_only_with_their_checks(platform, first_day):
    day, features = "2026-10-23", "aiml_local.inference.scoring_features"
    unchecked = materialize(inference_assets(platform.settings), instance=platform.instance, partition_key=day,
                            resources=platform.resources, raise_on_error=False,
                            selection=AssetSelection.assets(SCORING_FEATURES_KEY).without_checks())
    assert not unchecked.success
    failure = unchecked.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "prod/scoring_features selected without its blocking check feature_drift" in failure
    assert platform.table(features).filter(F.col("snapshot_date") == day).count() == 0

    alone = platform.run(day, selection=[SCORING_FEATURES_KEY])  # as the UI materializes one asset, checks included
    assert alone.success
    assert {e.asset_key for e in alone.get_asset_materialization_events()} == {SCORING_FEATURES_KEY}
    evaluations = {e.event_specific_data.check_name for e in alone.all_events
                   if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert evaluations == {"CustomerFeatures_schema", "feature_drift"}
    assert platform.table(features).filter(F.col("snapshot_date") == day).count() > 0
    assert platform.scores(day).count() == 0


def _with_canary(settings, share: float):
    return settings.model_copy(update={"inference": settings.inference.model_copy(update={"canary_share": share})})


def test_a_canary_share_sends_the_same_customers_to_the_challenger_on_every_run(platform):
    day, selection = "2026-10-30", [SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY, SCORES_KEY]
    canaries = []
    for _ in range(2):
        assert platform.run(day, _with_canary(platform.settings, 0.1), selection).success
        scores = platform.scores(day)
        canary = scores.filter(F.col("model_role") == "canary")
        assert {(r[0], r[1]) for r in canary.select("product_code", "model_version").distinct().collect()} == {
            ("credit_card", platform.challenger)}  # only the product with a challenger, and by it
        canaries.append({r[0] for r in canary.select("customer_id").collect()})
        share = len(canaries[-1]) / scores.filter(F.col("product_code") == "credit_card").count()
        assert 0.07 < share < 0.13, share
    assert canaries[0] == canaries[1]
    assert platform.run(day, _with_canary(platform.settings, 0.0), selection).success
    assert platform.scores(day).filter(F.col("model_role") == "canary").count() == 0


def test_a_failing_expectation_keeps_the_published_version_and_registers_nothing(platform, first_day):
    day = "2026-11-02"
    upstream = [SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY, SCORES_KEY]
    assert platform.run(day, selection=upstream).success
    before = platform.cdp_entry()
    scores = platform.scores(day)
    broken = scores.withColumn("score", F.when(F.col("rank") == 1, F.lit(1.5)).otherwise(F.col("score")))
    location = platform.catalog.location("aiml_local.inference.propensity_scores")
    platform.resources["tables"].write(broken, location, run_id="test-corruption", partition_by=["snapshot_date"],
                                       replace={"snapshot_date": day})
    result = platform.run(day, selection=[CDP_KEY])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "expect_column_values_to_be_between" in failure and "column score" in failure
    assert f"still serves version {before['properties']['cdp_version']}" in failure
    assert platform.cdp_entry() == before
    assert platform.table("edp.cdp.nba_propensity").filter(F.col("score") > 1).count() == 0
    refused = [e for e in platform.resources["audit"].read() if e["action"] == PUBLICATION_REFUSED]
    assert [e["run_id"] for e in refused] == [result.run_id]


@contextmanager
def _replaced_in_nexus(stored: Path, content: bytes):
    """`content` at a published path of the local Nexus, with a sidecar to match, put back afterwards."""
    sidecar = stored.with_name(stored.name + ".sha256")
    original = stored.read_bytes(), sidecar.read_bytes()
    try:
        stored.write_bytes(content)
        sidecar.write_text(hashlib.sha256(content).hexdigest())
        yield
    finally:
        stored.write_bytes(original[0])
        sidecar.write_bytes(original[1])


def test_a_tampered_binary_is_refused_and_nothing_is_scored(platform):
    day = "2026-10-29"
    name = registered_name(platform.settings.catalog.aiml_catalog, "personal_loan")
    stored = Path(platform.resources["nexus"].root) / nexus_paths(name, 1).model
    # someone with write access to Nexus replaced the binary and its sidecar: only the manifest knows better
    with _replaced_in_nexus(stored, stored.read_bytes() + b"\0"):
        result = platform.run(day)
    assert not result.success
    failure = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "personal_loan champion" in failure and "release manifest says" in failure
    assert result.get_step_failure_events()[0].step_key == "prod_scoring"
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {SCORING_FEATURES_KEY}
    assert platform.scores(day).count() == 0
    assert platform.cdp_entry()["properties"]["snapshot_date"] == DAY


def test_a_drift_baseline_rewritten_in_nexus_is_refused(platform):
    day = "2026-10-27"
    name = registered_name(platform.settings.catalog.aiml_catalog, "mortgage")
    stored = Path(platform.resources["nexus"].root) / nexus_paths(name, 1).metadata
    metadata = json.loads(stored.read_bytes())
    metadata["reference_profile"]["features"]["tenure_days"]["shares"].reverse()  # a baseline that hides drift
    # binary untouched; metadata.json and its sidecar replaced by someone with write access to Nexus
    with _replaced_in_nexus(stored, json.dumps(metadata).encode()):
        result = platform.run(day)
    assert not result.success
    failures = {e.step_key: str(e.step_failure_data.error) for e in result.get_step_failure_events()}
    assert list(failures) == ["prod_scoring"]
    assert "mortgage champion" in failures["prod_scoring"]
    assert "its reference profile is not the one promoted" in failures["prod_scoring"]
    assert platform.scores(day).count() == 0


def test_a_product_without_a_champion_is_left_out_and_the_others_are_scored(platform):
    day = "2026-10-28"
    manifests = platform.resources["release_manifest"]
    original = manifests.read("prod")
    try:
        manifests.write({"prod": {p: r for p, r in original.items() if p != "mortgage"}})
        result = platform.run(day, selection=[SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY, SCORES_KEY])
        deployed = platform.materialization(result, DEPLOYED_MODEL_KEY).metadata
        manifests.write({"prod": {}})
        refused = platform.run("2026-10-26", selection=[DEPLOYED_MODEL_KEY, SCORES_KEY])
    finally:
        manifests.write({"prod": original})
    assert result.success
    assert deployed["products_not_deployed"].value == ["mortgage"]
    scored = {r[0] for r in platform.scores(day).select("product_code").distinct().collect()}
    assert scored == set(platform.settings.products) - {"mortgage"}
    # a manifest without any champion refuses, and nothing downstream runs
    assert not refused.success
    failure = str(refused.get_step_failure_events()[0].step_failure_data.error)
    assert "no champion for any product in the prod release manifest" in failure
    assert platform.scores("2026-10-26").count() == 0


def test_an_erasure_request_removes_customers_from_every_table_and_from_later_scoring(platform, first_day):
    day = "2026-10-27"
    training = platform.table("aiml_local.lab.training_set")
    erased = sorted(r[0] for r in training.filter(F.col("product_code") == "credit_card")
                    .filter(F.col("snapshot_date") == SNAPSHOTS[1]).select("customer_id").distinct().limit(3).collect())
    features = platform.table("aiml_local.lab.customer_features")
    spared, held = (features.filter(~F.col("customer_id").isin(erased)).count(),
                    features.filter(F.col("customer_id").isin(erased)).count())
    features_before = platform.catalog.version("aiml_local.lab.customer_features")
    job = build_definitions(settings=platform.settings).resolve_job_def(ERASURE_JOB)
    digests = [digest(c, erasure_key(platform.settings)) for c in erased]

    result = job.execute_in_process(instance=platform.instance, tags={"aiml/requested_by": "privacy-office"},
                                    run_config={"ops": {"erase_customers": {"config": {
                                        "request_id": "DSR-2026-0042", "customer_digests": digests}}}})

    assert result.success
    for name in ("aiml_local.lab.customer_features", "aiml_local.lab.training_set"):
        assert platform.table(name).filter(F.col("customer_id").isin(erased)).count() == 0, name
    assert platform.table("aiml_local.lab.customer_features").count() == spared  # nobody else went
    with pytest.raises(Exception):  # the history holding them is gone: no time travel back
        platform.catalog.read(platform.resources["spark"].get_session(), "aiml_local.lab.customer_features",
                              features_before).count()
    events = {e["action"]: e for e in platform.resources["audit"].read() if e["subject"] == "DSR-2026-0042"}
    assert events["erasure_requested"]["actor"] == "privacy-office"
    assert events["erasure_requested"]["details"]["customer_digests"] == sorted(digests)
    assert not any(c in json.dumps(e, default=str) for e in platform.resources["audit"].read() for c in erased)
    assert not any(c in json.dumps(platform.instance.get_run_by_id(result.run_id).run_config) for c in erased)
    models = events["erasure"]["details"]["models_trained_on_them"]
    name = registered_name(platform.settings.catalog.aiml_catalog, "credit_card")
    assert models[f"{name} v1"] == models[f"{name} v{platform.challenger}"] == "yes"
    assert platform.resources["mlflow"].client().get_model_version(name, "1").tags[RETRAIN_TAG] == "DSR-2026-0042"
    assert sum(events["erasure"]["details"]["rows_removed"]["aiml_local.lab.customer_features"].values()) == held

    later = platform.run(day, selection=[SCORING_FEATURES_KEY, DEPLOYED_MODEL_KEY, SCORES_KEY])
    assert later.success
    for table in ("aiml_local.inference.scoring_features", "aiml_local.inference.propensity_scores"):
        rows = platform.table(table).filter(F.col("snapshot_date") == day)
        assert rows.count() > 0 and rows.filter(F.col("customer_id").isin(erased)).count() == 0, table
    assert platform.scores(DAY).filter(F.col("customer_id").isin(erased)).count() == 0  # past scores erased too


class NexusGoingDown(NexusServer):
    """The platform's Nexus folder served over HTTP, going down (the connection dropped, then the port closed) at the
    second binary asked for: inside the scoring step, while prod/deployed_model pulls the deployed binaries."""

    def __init__(self, folder: Path, goes_down: bool = True):
        super().__init__(repositories=[folder.name])
        self.files = {(folder.name, f.relative_to(folder).as_posix()): f.read_bytes()
                      for f in folder.rglob("*") if f.is_file()}
        self.goes_down, self.pulled = goes_down, set()

    def handle(self, method, request_path, authorization, body):
        if self.goes_down and method == "GET" and request_path.endswith("/model.zip"):
            if self.pulled:
                threading.Thread(target=self.stop).start()
                raise ConnectionAbortedError("Nexus went down")  # the client's connection drops unanswered
            self.pulled.add(request_path)
        return super().handle(method, request_path, authorization, body)


def _over_http(settings, url: str):
    return settings.model_copy(update={"nexus": settings.nexus.model_copy(update={"kind": "http", "url": url})})


def test_nexus_going_down_inside_a_scoring_run_scores_nothing_and_a_rerun_completes(platform, first_day, monkeypatch):
    day, scores = "2026-10-25", "aiml_local.inference.propensity_scores"
    monkeypatch.setenv("NEXUS_USERNAME", "aiml-ci")
    monkeypatch.setenv("NEXUS_PASSWORD", "not-a-secret")
    folder = Path(platform.resources["nexus"].root)
    before = platform.cdp_entry(), platform.catalog.entry(scores), platform.catalog.version(scores)
    with NexusGoingDown(folder) as nexus:
        url = nexus.url
        result = platform.run(day, _over_http(platform.settings, url))
    assert not result.success
    failures = {e.step_key: str(e.step_failure_data.error) for e in result.get_step_failure_events()}
    assert list(failures) == ["prod_scoring"]
    for failure in failures.values():  # which binary, where, and that nothing was scored
        assert f"GET {url}/repository/aiml-models/models/" in failure and "failed: ConnectionError" in failure
        assert "Nothing is scored" in failure
    # nothing half-registered: no scores commit, no catalog change, and the CDP step never ran
    assert (platform.cdp_entry(), platform.catalog.entry(scores), platform.catalog.version(scores)) == before
    assert platform.scores(day).count() == 0
    assert CDP_KEY not in {e.asset_key for e in result.get_asset_materialization_events()}

    with NexusGoingDown(folder, goes_down=False) as nexus:  # Nexus is back: the failed step and what follows it
        rerun = platform.run(day, _over_http(platform.settings, nexus.url))
    assert rerun.success
    assert platform.scores(day).count() == platform.table("aiml_local.inference.parallel_run_report").filter(
        F.col("snapshot_date") == day).count() > 0
    assert platform.cdp_entry() == before[0]  # an earlier day than the one published


def test_an_audit_log_missing_its_newest_commit_stops_the_next_publication(platform, first_day, tmp_path):
    audit_log = Path(platform.resources["audit"].location)
    registry = platform.home / "catalog" / "registry.sqlite"
    shutil.copytree(audit_log, tmp_path / "audit_log")
    shutil.copy(registry, tmp_path / "registry.sqlite")
    before = platform.cdp_entry()
    try:
        # someone with write access to the audit bucket removed the newest event's commit
        max((audit_log / "_delta_log").glob("*.json")).unlink()
        result = platform.run(DAY, selection=[CDP_KEY])
        after = platform.cdp_entry()
    finally:  # the platform as it was, for the other tests
        shutil.rmtree(audit_log)
        shutil.copytree(tmp_path / "audit_log", audit_log)
        shutil.copy(tmp_path / "registry.sqlite", registry)
    assert not result.success
    failure = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "audit log" in failure.lower(), failure
    assert after == before
