"""The GDPR erasure: keyed digests, reads that leave erased customers out, and a job that leaves nothing of them in
the lab bucket (statistics, history and bucket versions included: test_retention.py scrubs a versioned bucket). The
end-to-end run through training and scoring is in test_inference.py."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from aiml_assets import cli
from aiml_assets.asset_tables import table_name
from aiml_assets.definitions import build_definitions
from aiml_assets.features.assets import FEATURES_KEY
from aiml_assets.sources.erased import ErasureKeyMissing, digest, erasure_key, without_erased
from aiml_assets.governance.erasure import ERASURE_JOB, RETRAIN_TAG, ErasureRequest, erasure_job
from aiml_assets.inference.assets import SCORING_FEATURES_KEY
from aiml_assets.keys import STEP_LAUNCHER_KEY
from aiml_assets.models.training import registered_name
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import ENVIRONMENTS, load_settings
from aiml_assets_tests.local_environment import TEST_ERASURE_KEY

KEY = TEST_ERASURE_KEY.encode()
ERASED = ["C00000001", "C00000004"]  # the lowest and highest ids: every file's min/max statistics name them
KEPT = ["C00000002", "C00000003"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_can_record_an_erasure_and_its_reads_leave_the_customers_out(env, aiml_home):
    defs = build_definitions(env)
    [erase] = defs.resolve_job_def(ERASURE_JOB).graph.node_defs
    assert STEP_LAUNCHER_KEY in erase.required_resource_keys  # it reads and rewrites tables: on the cluster
    graph = defs.resolve_asset_graph()
    readers = [key for key in (FEATURES_KEY, SCORING_FEATURES_KEY) if graph.has(key)]
    assert readers  # every environment computes features from the EDP sources somewhere
    for key in readers:  # read_sources needs the environment's audit log: the erased customers are there
        assert "audit" in defs.get_assets_def(key).required_resource_keys, key


def test_the_job_takes_digests_never_customer_ids():
    keyed = digest("C00000042", KEY)
    assert ErasureRequest(request_id="DSR-2026-0042", customer_digests=[keyed, keyed]).customer_digests == [keyed]
    with pytest.raises(ValidationError, match="not hex digests"):
        ErasureRequest(request_id="DSR-2026-0042", customer_digests=["C00000042"])
    with pytest.raises(ValidationError, match="request_id"):
        ErasureRequest(request_id="please forget me", customer_digests=[keyed])


def test_sequential_ids_cannot_be_guessed_back_from_the_digests_without_the_key():
    recorded = {digest(c, KEY) for c in ("C00000042", "C00000007")}
    candidates = [f"C{n:08d}" for n in range(100)]  # the tester's attack: hash every id in order
    assert not recorded & {hashlib.sha256(c.encode()).hexdigest() for c in candidates}
    assert not recorded & {digest(c, b"a guessed key") for c in candidates}
    assert {c for c in candidates if digest(c, KEY) in recorded} == {"C00000042", "C00000007"}  # the key reverses


def test_aiml_digest_prints_keyed_digests_and_refuses_without_the_key(capsys, aiml_home, monkeypatch):
    assert cli.main(["digest", "C00000042", "C00000007", "C00000042"]) == 0
    assert capsys.readouterr().out.split() == sorted(digest(c, KEY) for c in ("C00000042", "C00000007"))
    monkeypatch.delenv("AIML_ERASURE_KEY")
    assert cli.main(["digest", "C00000042"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "REFUSED: AIML_ERASURE_KEY is not set (local" in err


def test_a_remote_environment_expects_the_key_from_its_secret_scope(monkeypatch):
    monkeypatch.delenv("AIML_ERASURE_KEY", raising=False)
    with pytest.raises(ErasureKeyMissing, match=r"AIML_ERASURE_KEY is not set \(prod: expected from its Databricks "
                                                r"secret scope"):
        erasure_key(load_settings("prod"))


def plans(df) -> str:
    execution = df._jdf.queryExecution()
    return "\n".join(str(p) for p in (execution.logical(), execution.optimizedPlan(), execution.executedPlan()))


def test_reads_leave_erased_customers_out_with_no_id_or_key_in_any_plan(spark, aiml_home, monkeypatch):
    settings = load_settings()
    customers = spark.createDataFrame([(c, 30) for c in ERASED + KEPT], "customer_id string, age int")
    events = spark.createDataFrame([(c, 1.0) for c in ERASED + KEPT + KEPT], "customer_id string, amount double")
    digests = {digest(c, KEY) for c in ERASED}

    left = without_erased(customers, [events], digests, settings)

    assert [sorted(r[0] for r in df.select("customer_id").collect()) for df in left] == [KEPT, sorted(KEPT * 2)]
    text = plans(left[1])
    assert not [secret for secret in (*ERASED, TEST_ERASURE_KEY, KEY.hex()) if secret in text]
    assert without_erased(customers, [events], set(), settings)[1] is events  # no request: as read
    monkeypatch.delenv("AIML_ERASURE_KEY")
    assert without_erased(customers, [events], set(), settings)[1] is events  # ... and no key needed
    with pytest.raises(ErasureKeyMissing, match="AIML_ERASURE_KEY is not set"):  # never silently keeps them
        without_erased(customers, [events], digests, settings)


# --- the job: nothing of the customers left in the lab bucket ---------------------------------------------------


def found_in(folder: Path, ids: list[str]) -> dict[str, set[str]]:
    """Every file under `folder` that names any of `ids`, in its bytes, its Parquet rows or its footer statistics."""
    found = {}
    for path in (p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":
            metadata = pq.ParquetFile(path).metadata
            text += json.dumps(pq.read_table(path).to_pylist(), default=str) + str(metadata.to_dict())
        hits = {c for c in ids if c in text}
        if hits:
            found[str(path.relative_to(folder))] = hits
    return found


@pytest.fixture
def lab(spark, aiml_home):
    """Lab feature and training tables and the scores (written by the local writer, with statistics) holding four
    customers, and a model version trained on the training set; returns the buckets' folder."""
    settings, resources = load_settings(), build_resources(load_settings())
    catalog = LocalCatalog(home=str(aiml_home))
    snapshots = ["2026-09-01", "2026-10-01"]
    rows = {("lab", "customer_features"): ([(c, s, 1.0) for c in ERASED + KEPT for s in snapshots],
                                           "customer_id string, snapshot_date string, spend double"),
            ("lab", "training_set"): ([(c, "credit_card", s, 1) for c in ERASED + KEPT for s in snapshots],
                                      "customer_id string, product_code string, snapshot_date string, label int"),
            ("scoring", "propensity_scores"): ([(c, "2026-10-27", 0.5) for c in ERASED + KEPT],
                                               "customer_id string, snapshot_date string, score double")}
    for (role, table), (data, schema) in rows.items():
        location = resources["storage"].uri(role, table)
        resources["tables"].write(spark.createDataFrame(data, schema), location, run_id="seed",
                                  partition_by=["snapshot_date"])
        catalog.register(table_name(settings, role, table), location, owner="aiml-engineers")
    client, name = resources["mlflow"].client(), registered_name(settings.catalog.aiml_catalog, "credit_card")
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(aiml_home), tags={
        "training_table": "aiml_local.lab.training_set", "training_table_version": str(catalog.version(
            "aiml_local.lab.training_set")), "training_partitions": ",".join(snapshots)})
    return aiml_home / "buckets", client, name, version.version


def run_erasure(instance, digests):
    settings = load_settings("local")
    return erasure_job(settings).execute_in_process(
        instance=instance, raise_on_error=False, tags={"aiml/requested_by": "privacy"},
        resources=build_resources(settings),
        run_config={"ops": {"erase_customers": {"config": {"request_id": "DSR-2026-0042",
                                                           "customer_digests": digests}}}})


def test_an_erasure_leaves_nothing_of_the_customers_in_any_bucket(lab, instance, spark, aiml_home):
    bucket, client, name, version = lab
    held_before = found_in(bucket, ERASED)
    assert any("_delta_log" in path for path in held_before)  # the attack: the log's statistics name them
    written = max(p.stat().st_mtime for p in bucket.rglob("*.parquet")) * 1000

    result = run_erasure(instance, [digest(c, KEY) for c in ERASED])

    assert result.success
    assert found_in(bucket, ERASED) == {}  # data, log, checkpoints, statistics: nothing names them
    tables = build_resources(load_settings())["tables"]  # the rewrite did not restart the retention clock
    assert all(first <= written for first in tables.first_written(str(bucket / "lab" / "customer_features")).values())
    catalog = LocalCatalog(home=str(aiml_home))
    for table in ("lab.customer_features", "lab.training_set", "inference.propensity_scores"):  # the others stay
        rows = catalog.read(spark, f"aiml_local.{table}").select("customer_id").distinct().collect()
        assert sorted(r[0] for r in rows) == KEPT, table
    assert client.get_model_version(name, version).tags[RETRAIN_TAG] == "DSR-2026-0042"
    [event] = [e for e in build_resources(load_settings())["audit"].read() if e["action"] == "erasure"]
    assert event["details"]["models_trained_on_them"] == {f"{name} v{version}": "yes"}


def test_the_erasure_job_refuses_without_the_key_and_records_nothing(aiml_home, instance, monkeypatch):
    monkeypatch.delenv("AIML_ERASURE_KEY")

    result = run_erasure(instance, [digest(c, KEY) for c in ERASED])

    assert not result.success
    assert "AIML_ERASURE_KEY is not set" in str(result.get_step_failure_events()[0].step_failure_data.error)
    assert build_resources(load_settings())["audit"].read() == []  # refused before anything: run it again with it


def test_an_erasure_that_leaves_them_in_the_log_fails_naming_the_entry(lab, instance):
    bucket = lab[0]
    log = bucket / "lab" / "customer_features" / "_delta_log"
    # what a writer that died mid-commit leaves: its staged commit, add actions and statistics included
    (log / "_commit_0b5e.json.tmp").write_bytes((log / "00000000000000000000.json").read_bytes())

    result = run_erasure(instance, [digest(c, KEY) for c in ERASED])

    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "aiml_local.lab.customer_features: after the rewrite and scrub, 1 Delta log entries still name erased " \
           "customers" in error and "customer_features/_delta_log/_commit_0b5e.json.tmp" in error
    assert not any(c in error for c in ERASED)
