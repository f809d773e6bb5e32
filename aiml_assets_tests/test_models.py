"""Model versions end to end on seeded data: the family trained in one step, gated, challenger alias, Nexus binary.

One module-scoped AIML home: a seeded EDP, the main job's three snapshots, then the models job (all products in one
run, or one product as a data scientist runs it) on a real SQLite MLflow registry and the local Nexus folder. Tests
that change the training data run last.
"""

import hashlib
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow import MlflowClient

from aiml_assets.definitions import MODELS_JOB, build_definitions
from aiml_assets.edp.seed import seed_edp
from aiml_assets.models.assets import BINARY_KEY, MODEL_KEY
from aiml_assets.models.binary import fetch_metadata, fetch_model, nexus_paths
from aiml_assets.models.promotion import failure_reason, promotion_job, promotion_resources, promotion_run_config
from aiml_assets.models.registry import BINARY_TAG, CHALLENGER, CHAMPION, GATE_TAG
from aiml_assets.models.training import VERSION_TAG, prepare, registered_name
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import RESOURCES_DIR, NexusSettings, load_settings
from local_environment import local_environment
from nexus_server import NexusServer

SNAPSHOTS = ("2026-08-01", "2026-10-01")  # range of the main job: three monthly snapshots
CUSTOMERS = 4000  # enough positives per product for a stable validation AUC on a 30-day label window


@pytest.fixture(scope="module")
def lab(tmp_path_factory, spark):
    home = tmp_path_factory.mktemp("models_home")
    with local_environment(home):
        settings = load_settings("local")
        seed_edp(LocalCatalog(home=str(home)), customers=CUSTOMERS, seed=7, products=settings.products,
                 log=lambda _: None)
        defs = build_definitions("local")
        with DagsterInstance.ephemeral(tempdir=str(tmp_path_factory.mktemp("models_dagster"))) as instance:
            features = defs.resolve_job_def("main").execute_in_process(instance=instance, tags={
                "dagster/asset_partition_range_start": SNAPSHOTS[0],
                "dagster/asset_partition_range_end": SNAPSHOTS[1]})
            assert features.success
            yield Lab(defs, instance, settings, build_resources(settings))


class Lab:
    def __init__(self, defs, instance, settings, resources):
        self.defs, self.instance, self.settings, self.resources = defs, instance, settings, resources

    def train(self, products: str | tuple[str, str], only=None, defs=None, job=None):
        """One product (a partition), or the products from `products[0]` to `products[1]` in one run (the
        single-run backfill)."""
        tags = ({"dagster/partition": products} if isinstance(products, str) else
                {"dagster/asset_partition_range_start": products[0], "dagster/asset_partition_range_end": products[1]})
        return (job or (defs or self.defs).resolve_job_def(MODELS_JOB)).execute_in_process(
            instance=self.instance, tags=tags, raise_on_error=False, asset_selection=only)

    @property
    def mlflow(self) -> MlflowClient:
        return self.resources["mlflow"].client()

    def name(self, product: str) -> str:
        return registered_name(self.settings.catalog.aiml_catalog, product)

    def materialization(self, result, key: AssetKey, product: str | None = None):
        events = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key
                  and product in (None, e.materialization.partition)]
        assert len(events) <= 1, (key, product)
        return events[0] if events else None

    def check(self, result, name: str, product: str | None = None):
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name
                       and product in (None, e.event_specific_data.partition)]
        assert len(evaluations) == 1, name
        return evaluations[0]


def _png(markdown: str) -> bool:
    return markdown.startswith("![") and "data:image/png;base64," in markdown


def test_every_product_trains_passes_the_gate_and_publishes_its_binary_in_one_step(lab, tmp_path):
    training = lab.resources["catalog"].read(lab.resources["spark"].get_session(), "aiml_local.lab.training_set")
    training_version = lab.resources["catalog"].version("aiml_local.lab.training_set")
    products = lab.settings.products
    result = lab.train((products[0], products[-1]))
    assert result.success
    assert [e.step_key for e in result.get_step_success_events()] == ["model_family"]  # one step: one cluster
    for product in products:
        model = lab.materialization(result, MODEL_KEY, product).metadata
        name, version = lab.name(product), model["model_version"].value
        assert model["model_name"].value == name
        assert model["roc_auc"].value > 0.6, (product, model["roc_auc"].value)  # the seeded data carries signal
        assert _png(model["roc_curve"].value) and _png(model["feature_importance"].value)
        assert model["training_snapshots"].value == "2026-08-01, 2026-09-01"
        assert model["validation_snapshot"].value == "2026-10-01"

        assert lab.check(result, "validation_gate", product).passed
        assert lab.check(result, "ModelScores_schema", product).passed
        registered = lab.mlflow.get_model_version_by_alias(name, CHALLENGER)
        assert int(registered.version) == version and registered.tags[GATE_TAG] == "passed"
        run = lab.mlflow.get_run(registered.run_id)
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert run.data.tags["training_table_version"] == str(training_version)
        assert run.data.tags["training_partitions"] == "2026-08-01,2026-09-01,2026-10-01"
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])
        artifacts = {a.path for a in lab.mlflow.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/roc_curve.png", "plots/feature_importance.png"} <= artifacts

        binary = lab.materialization(result, BINARY_KEY, product).metadata
        assert lab.check(result, "ModelBinary_schema", product).passed
        nexus = lab.resources["nexus"]
        paths = nexus_paths(name, version)
        assert binary["model_sha256"].value == nexus.sha256(paths.model)
        metadata = fetch_metadata(nexus, name, version)
        assert (metadata["name"], metadata["version"]) == (name, version)
        assert metadata["training_data"]["training_table_version"] == str(training_version)
        assert metadata["metrics"]["roc_auc"] == pytest.approx(model["roc_auc"].value, abs=1e-5)

    # the Nexus binary is the model that was validated: same scores as the registry's version
    product = lab.settings.products[0]
    name = lab.name(product)
    version = int(lab.mlflow.get_model_version_by_alias(name, CHALLENGER).version)
    rows = training.filter(f"product_code = '{product}'").limit(200).toPandas()
    from_nexus = mlflow.sklearn.load_model(str(fetch_model(lab.resources["nexus"], name, version, tmp_path)))
    from_registry = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    np.testing.assert_allclose(from_nexus.predict_proba(prepare(rows)), from_registry.predict_proba(prepare(rows)))


def test_back_to_back_trainings_record_their_own_versions(lab):
    product = "personal_loan"
    first, second = lab.train(product), lab.train(product)
    assert first.success and second.success
    versions = [lab.materialization(r, MODEL_KEY).metadata["model_version"].value for r in (first, second)]
    assert versions[1] == versions[0] + 1
    for result, version in zip((first, second), versions):
        registered = lab.mlflow.get_model_version(lab.name(product), str(version))
        assert lab.mlflow.get_run(registered.run_id).data.tags["dagster_run_id"] == result.run_id
        # each run's binary is its own version's
        assert lab.materialization(result, BINARY_KEY).metadata["model_version"].value == version


# --- issue 14: the MLflow store locked and Nexus down inside real train_models runs -----------------------------

LOCK_SECONDS = 24  # longer than MLflow's SQLite busy timeout (20 s): one attempt fails, its retry finds the lock gone


class StoreLock:
    """Another connection holding SQLite's write lock on the MLflow database (BEGIN EXCLUSIVE), taken once the
    query `when` counts a row (at once without one) and released by a timer thread `LOCK_SECONDS` later."""

    def __init__(self, lab, when: str | None = None):
        lab.resources["mlflow"].activate()  # the database and its tables exist before anyone polls them
        self.db = Path(lab.resources["mlflow"].home) / "mlflow" / "mlflow.db"
        self.when, self.taken, self.done = when, threading.Event(), threading.Event()

    def _hold(self) -> None:
        connection = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False, timeout=30)
        while self.when and not self.done.is_set() and not connection.execute(self.when).fetchone()[0]:
            time.sleep(0.01)
        if self.done.is_set():
            return
        connection.execute("BEGIN EXCLUSIVE")
        self.taken.set()
        threading.Timer(LOCK_SECONDS, self._release, args=[connection]).start()

    def _release(self, connection) -> None:
        connection.rollback()
        connection.close()
        self.done.set()

    def __enter__(self) -> "StoreLock":
        threading.Thread(target=self._hold, daemon=True).start()
        if self.when is None:
            assert self.taken.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        if not self.taken.is_set():
            self.done.set()  # never taken: stop waiting for `when`
        assert self.done.wait(LOCK_SECONDS + 30)


def _retried(lab, result, key: AssetKey) -> list[str]:
    """The transient errors the step tried again after, on its way to `key`'s materialization."""
    return lab.materialization(result, key).metadata["retried_errors"].value


def _versions_trained_by(lab, product: str, result) -> list:
    return [v for v in lab.mlflow.search_model_versions(f"name = '{lab.name(product)}'")
            if v.tags.get("dagster_run_id") == result.run_id]


def _only_usable_version(lab, product: str, result) -> int:
    """The one version `result` trained that passed the gate, is the challenger and is in Nexus; any other it
    registered (an attempt that failed) has no verdict and no binary."""
    name, versions = lab.name(product), _versions_trained_by(lab, product, result)
    gated = [int(v.version) for v in versions if v.tags.get(GATE_TAG) == "passed"]
    assert len(gated) == 1, versions
    assert int(lab.mlflow.get_model_version_by_alias(name, CHALLENGER).version) == gated[0]
    assert lab.materialization(result, BINARY_KEY).metadata["model_version"].value == gated[0]
    for other in (v for v in versions if int(v.version) != gated[0]):
        assert GATE_TAG not in other.tags and BINARY_TAG not in other.tags
        assert not lab.resources["nexus"].exists(nexus_paths(name, int(other.version)).model)
    return gated[0]


def test_a_store_locked_while_training_logs_fails_naming_it_and_the_retry_leaves_one_usable_version(lab):
    product = "investment_isa"
    running = ("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid where r.status = 'RUNNING' "
               f"and t.key = 'product' and t.value = '{product}'")
    with StoreLock(lab, when=running) as lock:
        result = lab.train(product)
    assert lock.taken.is_set() and result.success
    [error] = _retried(lab, result, MODEL_KEY)
    assert f"MLflow store sqlite:///{lock.db} is locked by another connection" in error
    assert f"while training and registering the model for {product}" in error
    version = _only_usable_version(lab, product, result)
    runs = mlflow.search_runs(experiment_ids=[lab.resources["mlflow"].activate()], output_format="list",
                              filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # nothing left RUNNING
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert finished.data.tags[VERSION_TAG] == str(version)
    assert all(VERSION_TAG not in r.data.tags for r in runs if r is not finished)


def test_a_store_locked_after_registration_holds_the_binary_back_until_the_retry(lab):
    product = "personal_loan"
    name = lab.name(product)
    trained = lab.train(product, only=[MODEL_KEY])
    assert trained.success and lab.check(trained, "validation_gate").passed
    version = lab.materialization(trained, MODEL_KEY).metadata["model_version"].value
    assert BINARY_TAG not in lab.mlflow.get_model_version(name, str(version)).tags
    with StoreLock(lab) as lock:  # from before model_binary reads the gated version
        published = lab.train(product, only=[BINARY_KEY])
    assert published.success
    [error] = _retried(lab, published, BINARY_KEY)
    assert f"MLflow store sqlite:///{lock.db} is locked" in error
    assert f"while publishing the gated version for {product}" in error
    assert lab.materialization(published, BINARY_KEY).metadata["model_version"].value == version
    tags = lab.mlflow.get_model_version(name, str(version)).tags
    assert tags[GATE_TAG] == "passed"
    assert tags[BINARY_TAG] == lab.resources["nexus"].sha256(nexus_paths(name, version).model)


class FailingNexus(NexusServer):
    """The test Nexus going down (503, as Nexus answers while it is stopping or in maintenance) right after it
    stored a model.zip, until `down` is cleared."""

    down = False

    def handle(self, method, request_path, authorization, body):
        if self.down:
            return 503, "Service Unavailable", b""
        answer = super().handle(method, request_path, authorization, body)
        self.down = method == "PUT" and request_path.endswith("/model.zip")
        return answer


def test_nexus_down_during_model_binary_publishes_nothing_usable_and_a_rerun_completes(lab, tmp_path, monkeypatch):
    product = "credit_card"
    name, repository = lab.name(product), "aiml-models"
    monkeypatch.setenv("NEXUS_USERNAME", "aiml")
    monkeypatch.setenv("NEXUS_PASSWORD", "secret")
    with FailingNexus(repositories=[repository], username="aiml", password="secret") as server:
        settings = lab.settings.model_copy(update={"nexus": NexusSettings(kind="http", url=server.url)})
        defs, resources_dir = build_definitions(settings=settings), shutil.copytree(RESOURCES_DIR, tmp_path / "env")

        def promote(version: int):
            return promotion_job(settings, promotion_resources(settings, resources_dir)).execute_in_process(
                run_config=promotion_run_config(product, version, "CHG0000101", "uat"), instance=lab.instance,
                raise_on_error=False)

        result = lab.train(product, defs=defs)
        assert not result.success and lab.check(result, "validation_gate").passed
        version = lab.materialization(result, MODEL_KEY).metadata["model_version"].value
        paths = nexus_paths(name, version)
        assert lab.materialization(result, BINARY_KEY) is None
        [failure] = result.get_step_failure_events()
        error = failure.step_failure_data.error.to_string()
        assert f"{name} version {version}: not published, Nexus failed during publication" in error
        assert f"Nexus HEAD {server.url}/repository/{repository}/{paths.model}: HTTP 503" in error
        assert "(tried 3 times)" in error
        # the model.zip got in, its sidecar and metadata.json did not: nothing takes that for a published version
        assert set(server.files) == {(repository, paths.model)}
        assert BINARY_TAG not in lab.mlflow.get_model_version(name, str(version)).tags
        refused = promote(version)
        assert not refused.success and "no verified binary in Nexus" in failure_reason(refused)

        server.down = False  # Nexus is back
        rerun = lab.train(product, only=[BINARY_KEY], defs=defs)
        assert rerun.success and lab.materialization(rerun, BINARY_KEY).metadata["model_version"].value == version
        assert {path for _, path in server.files} == {paths.model, paths.model + ".sha256", paths.metadata,
                                                      paths.metadata + ".sha256"}
        sha256 = hashlib.sha256(server.files[(repository, paths.model)]).hexdigest()
        assert lab.mlflow.get_model_version(name, str(version)).tags[BINARY_TAG] == sha256
        promoted = promote(version)
        assert promoted.success and promoted.output_for_node("promote")["sha256"] == sha256


def _rewrite_training_column(lab, product: str, snapshots: list[str], column: str, values) -> None:
    """Rewrite the training snapshots with `product`'s `column` set to `values(product's rows)`."""
    spark, catalog, tables = (lab.resources[k] for k in ("spark", "catalog", "tables"))
    session = spark.get_session()
    location = catalog.location("aiml_local.lab.training_set")
    table = catalog.read(session.getActiveSession(), "aiml_local.lab.training_set")
    for snapshot in snapshots:
        rows = table.filter(f"snapshot_date = '{snapshot}'").toPandas()
        mine = rows["product_code"] == product
        rows.loc[mine, column] = values(rows[mine])
        frame = session.createDataFrame(rows, schema=table.schema)
        tables.write(frame, location, run_id="test-shuffle", partition_by=["snapshot_date"],
                     replace={"snapshot_date": snapshot})


def _assert_blocked(lab, result, product: str, version: int, challenger: int) -> None:
    """The gate failed `version`: nothing downstream ran, the challenger alias did not move, nothing is in Nexus."""
    name = lab.name(product)
    assert lab.materialization(result, BINARY_KEY, product) is None
    assert lab.mlflow.get_model_version(name, str(version)).tags[GATE_TAG] == "failed"
    assert int(lab.mlflow.get_model_version_by_alias(name, CHALLENGER).version) == challenger
    assert not lab.resources["nexus"].exists(nexus_paths(name, version).model)


def test_weak_model_is_blocked_by_the_gate_against_thresholds_and_champion(lab):
    product = "savings_account"
    name = lab.name(product)
    good = lab.train(product)
    assert good.success
    champion = lab.materialization(good, MODEL_KEY).metadata["model_version"].value
    lab.mlflow.set_registered_model_alias(name, CHAMPION, str(champion))  # as a promotion would

    # a deliberately weak training set; the validation snapshot keeps true labels
    _rewrite_training_column(lab, product, ["2026-08-01", "2026-09-01"], "label",
                             lambda rows: np.random.default_rng(1).permutation(rows["label"].to_numpy()))
    # trained in one step beside a product that passes: the failure is savings_account's alone
    weak = lab.train(("mortgage", product))
    assert not weak.success
    version = lab.materialization(weak, MODEL_KEY, product).metadata["model_version"].value
    gate = lab.check(weak, "validation_gate", product)
    assert not gate.passed
    message = gate.description
    assert f"{name} version {version} FAILED" in message and "< min_roc_auc 0.6" in message
    assert f"worse than champion version {champion}" in message
    assert "candidate: roc_auc=" in message and f"champion (version {champion}): roc_auc=" in message
    _assert_blocked(lab, weak, product, version, challenger=champion)
    assert lab.check(weak, "validation_gate", "mortgage").passed
    beside = lab.materialization(weak, BINARY_KEY, "mortgage").metadata["model_version"].value
    assert beside == lab.materialization(weak, MODEL_KEY, "mortgage").metadata["model_version"].value
    assert lab.mlflow.get_model_version(lab.name("mortgage"), str(beside)).tags[BINARY_TAG]
    [failure] = weak.get_step_failure_events()
    reason = failure.step_failure_data.user_failure_data.description
    assert reason.startswith("1 of 2 products failed: savings_account: ") and "mortgage" not in reason

    # model_binary on its own publishes the gated challenger, never the blocked version
    alone = lab.train(product, only=[BINARY_KEY])
    assert alone.success and lab.materialization(alone, BINARY_KEY).metadata["model_version"].value == champion
    # and an alias moved by hand onto the blocked version does not get it into Nexus either
    lab.mlflow.set_registered_model_alias(name, CHALLENGER, str(version))
    by_hand = lab.train(product, only=[BINARY_KEY])
    assert not by_hand.success and lab.materialization(by_hand, BINARY_KEY) is None
    failure = by_hand.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert f"version {version}: validation gate verdict is 'failed'" in failure
    assert not lab.resources["nexus"].exists(nexus_paths(name, version).model)


def test_a_model_without_its_blocking_gate_is_refused_before_anything_is_trained(lab):
    from dagster import AssetCheckKey

    product = "credit_card"
    before = lab.mlflow.search_model_versions(f"name = '{lab.name(product)}'")
    job = lab.defs.resolve_job_def(MODELS_JOB).get_subset(
        asset_selection={MODEL_KEY}, asset_check_selection={AssetCheckKey(MODEL_KEY, "ModelScores_schema")})
    result = lab.train(product, job=job)
    assert not result.success and lab.materialization(result, MODEL_KEY) is None
    reason = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "refused: models/propensity_model selected without its blocking check validation_gate" in reason
    assert len(lab.mlflow.search_model_versions(f"name = '{lab.name(product)}'")) == len(before)


def test_a_re_executed_run_finds_the_version_its_parent_registered(lab):
    from aiml_assets.models.registry import ModelVersionNotFound, version_registered_by

    product = "mortgage"
    first = lab.train(product)
    version = lab.materialization(first, MODEL_KEY).metadata["model_version"].value
    experiment = lab.resources["mlflow"].activate()
    # a re-execution from failure is a new run whose parent (and root) is the run that trained
    assert version_registered_by(experiment, ["re-execution-run-id", first.run_id, first.run_id], product)[1] == version
    with pytest.raises(ModelVersionNotFound, match="no mortgage model version was registered by Dagster run other"):
        version_registered_by(experiment, ["other", None, None], product)


def test_a_leaked_feature_is_blocked_by_the_gate_with_the_leak_named(lab):
    product = "home_insurance"
    name = lab.name(product)
    normal = lab.train(product)
    assert normal.success and lab.check(normal, "validation_gate").passed
    champion = lab.materialization(normal, MODEL_KEY).metadata["model_version"].value
    lab.mlflow.set_registered_model_alias(name, CHAMPION, str(champion))

    # spend_30d now carries the label: "too good to be true" on the validation snapshot too
    _rewrite_training_column(lab, product, ["2026-08-01", "2026-09-01", "2026-10-01"], "spend_30d",
                             lambda rows: rows["label"] + np.random.default_rng(2).uniform(0, 0.5, len(rows)))
    leaky = lab.train(product)
    assert not leaky.success
    version = lab.materialization(leaky, MODEL_KEY).metadata["model_version"].value
    gate = lab.check(leaky, "validation_gate")
    assert not gate.passed
    assert "> max_roc_auc 0.97" in gate.description and f"above champion version {champion}'s" in gate.description
    assert "spend_30d" in gate.description.split("top features by importance: ")[1]
    assert next(iter(gate.metadata["top_features"].value)) == "spend_30d"
    _assert_blocked(lab, leaky, product, version, challenger=champion)

