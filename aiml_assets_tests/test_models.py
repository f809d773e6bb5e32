"""Model versions end to end on seeded data: train per product, gate, challenger alias, Nexus binary.

One module-scoped AIML home: a seeded EDP, the main job's three snapshots, then the models job per product on a
real SQLite MLflow registry and the local Nexus folder. Tests that change the training data run last.
"""

import re

import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow import MlflowClient

from aiml_assets.definitions import MODELS_JOB, build_definitions
from aiml_assets.edp.seed import seed_edp
from aiml_assets.models.assets import BINARY_KEY, MODEL_KEY
from aiml_assets.models.binary import fetch_metadata, fetch_model, nexus_paths
from aiml_assets.models.registry import CHALLENGER, CHAMPION, GATE_TAG
from aiml_assets.models.training import prepare, registered_name
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from local_environment import local_environment

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

    def train(self, product: str, only=None):
        return self.defs.resolve_job_def(MODELS_JOB).execute_in_process(
            instance=self.instance, tags={"dagster/partition": product}, raise_on_error=False, asset_selection=only)

    @property
    def mlflow(self) -> MlflowClient:
        return self.resources["mlflow"].client()

    def name(self, product: str) -> str:
        return registered_name(self.settings.catalog.aiml_catalog, product)

    def materialization(self, result, key: AssetKey):
        events = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
        return events[0].materialization if events else None

    def check(self, result, name: str):
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name]
        assert len(evaluations) == 1, name
        return evaluations[0]


def _png(markdown: str) -> bool:
    return markdown.startswith("![") and "data:image/png;base64," in markdown


def test_every_product_trains_passes_the_gate_and_publishes_its_binary(lab, tmp_path):
    training = lab.resources["catalog"].read(lab.resources["spark"].get_session(), "aiml_local.lab.training_set")
    training_version = lab.resources["catalog"].version("aiml_local.lab.training_set")
    for product in lab.settings.products:
        result = lab.train(product)
        assert result.success, product
        model = lab.materialization(result, MODEL_KEY).metadata
        name, version = lab.name(product), model["model_version"].value
        assert model["model_name"].value == name
        assert model["roc_auc"].value > 0.6, (product, model["roc_auc"].value)  # the seeded data carries signal
        assert _png(model["roc_curve"].value) and _png(model["feature_importance"].value)
        assert model["training_snapshots"].value == "2026-08-01, 2026-09-01"
        assert model["validation_snapshot"].value == "2026-10-01"

        assert lab.check(result, "validation_gate").passed
        assert lab.check(result, "ModelScores_schema").passed
        registered = lab.mlflow.get_model_version_by_alias(name, CHALLENGER)
        assert int(registered.version) == version and registered.tags[GATE_TAG] == "passed"
        run = lab.mlflow.get_run(registered.run_id)
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert run.data.tags["training_table_version"] == str(training_version)
        assert run.data.tags["training_partitions"] == "2026-08-01,2026-09-01,2026-10-01"
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])
        artifacts = {a.path for a in lab.mlflow.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/roc_curve.png", "plots/feature_importance.png"} <= artifacts

        binary = lab.materialization(result, BINARY_KEY).metadata
        assert lab.check(result, "ModelBinary_schema").passed
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
    import mlflow

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


def _assert_blocked(lab, result, name: str, version: int, challenger: int) -> None:
    """The gate failed `version`: nothing downstream ran, the challenger alias did not move, nothing is in Nexus."""
    assert lab.materialization(result, BINARY_KEY) is None
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
    weak = lab.train(product)
    assert not weak.success
    version = lab.materialization(weak, MODEL_KEY).metadata["model_version"].value
    gate = lab.check(weak, "validation_gate")
    assert not gate.passed
    message = gate.description
    assert f"{name} version {version} FAILED" in message and "< min_roc_auc 0.6" in message
    assert f"worse than champion version {champion}" in message
    assert "candidate: roc_auc=" in message and f"champion (version {champion}): roc_auc=" in message
    _assert_blocked(lab, weak, name, version, challenger=champion)

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
    _assert_blocked(lab, leaky, name, version, challenger=champion)
