"""The retention job as the lab runs it: the purge asset, its proving check and audit event, on the local
environment's real resources; the lifecycle job on (moto) S3; and the freshness policy agreeing with the purge."""

import json
import re
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from dagster import materialize
from deltalake import write_deltalake

import aiml_assets.governance.retention_assets as retention_assets
from aiml_assets.definitions import RETENTION_JOB, build_definitions
from aiml_assets.features.assets import FEATURES_KEY
from aiml_assets.governance.retention import PurgeReport, cutoff
from aiml_assets.keys import STEP_LAUNCHER_KEY
from aiml_assets.governance.bucket_posture import drift, postures
from aiml_assets.governance.lifecycle import lifecycle_document
from aiml_assets.governance.retention_assets import LIFECYCLE_JOB, PURGE_KEY, ClockRefused, lifecycle_job
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from aiml_assets_tests.test_bucket_posture import create_buckets, deployed_lab, job_resources  # noqa: F401

NAME = "aiml_local.lab.customer_features"


@pytest.fixture
def lab_table(aiml_home):
    """A lab feature table written now, registered under its catalog name."""
    location = aiml_home / "buckets" / "lab" / "customer_features"
    write_deltalake(str(location), pa.table({"customer_id": ["c1"], "snapshot_date": ["2026-11-01"]}),
                    partition_by=["snapshot_date"])
    LocalCatalog(home=str(aiml_home)).register(NAME, str(location), owner="aiml-engineers")
    return datetime.now(timezone.utc)


def run_retention(instance, as_of: datetime):
    """The retention job's selection (the governance group: the purge, its proof in its step) on local resources."""
    settings = load_settings("local")
    config = {"ops": {PURGE_KEY.to_python_identifier(): {"config": {"as_of": as_of.isoformat()}}}}
    return materialize(retention_assets.retention_assets(settings), resources=build_resources(settings),
                       instance=instance, run_config=config, raise_on_error=False,
                       tags={"aiml/requested_by": "svc-aiml-gitlab-lab"})


def check_result(result):
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


@pytest.mark.parametrize("days_later", [89, 91])
def test_the_freshness_policy_and_the_purge_agree_on_what_is_past_retention(lab_table, instance, aiml_home, days_later):
    written = lab_table
    policy = build_definitions("local").resolve_asset_graph().get(FEATURES_KEY).freshness_policy
    as_of = written + timedelta(days=days_later)
    stale = as_of - written > policy.fail_window.to_timedelta()  # how Dagster judges the lab asset's freshness

    result = run_retention(instance, as_of)

    assert result.success and check_result(result).passed
    assert stale == (days_later > 90)
    assert LocalCatalog(home=str(aiml_home)).exists(NAME) is not stale  # purged exactly when freshness fails
    assert (aiml_home / "buckets" / "lab" / "customer_features").exists() is not stale


def test_the_purge_is_audited_with_who_when_and_what(lab_table, instance, aiml_home):
    result = run_retention(instance, lab_table + timedelta(days=91))
    [event] = [e for e in build_resources(load_settings("local"))["audit"].read() if e["action"] == "purge"]
    assert (event["actor"], event["environment"], event["run_id"]) == ("svc-aiml-gitlab-lab", "local", result.run_id)
    assert event["details"]["lab"]["tables_removed"] == ["customer_features"]
    assert datetime.fromisoformat(event["details"]["cutoff"]) == lab_table + timedelta(days=1)


def test_the_proving_check_fails_when_the_purge_leaves_old_data(lab_table, instance, monkeypatch):
    def no_purge(storage, tables, catalog, *, role, retention_days, now, **_):
        return PurgeReport(role, cutoff(now, retention_days), timedelta(days=retention_days))

    monkeypatch.setattr(retention_assets, "purge", no_purge)
    result = run_retention(instance, lab_table + timedelta(days=91))
    evaluation = check_result(result)
    assert (evaluation.check_name, evaluation.passed) == ("nothing_past_retention", False)
    assert "customer_features/_delta_log/00000000000000000000.json" in evaluation.description
    [failure] = result.get_step_failure_events()  # the purge's own step proves it, and fails with the proof
    assert "object versions written before" in str(failure.step_failure_data.user_failure_data.description)


# --- bucket lifecycle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["lab", "uat"])
def test_the_lifecycle_job_applies_and_verifies_each_perishable_bucket(env, s3, aiml_home):
    settings = load_settings(env)
    create_buckets(s3, settings)
    job = lifecycle_job(settings)

    assert job.execute_in_process(resources=job_resources(settings, aiml_home)).success

    for role, uri in settings.storage.buckets.items():
        bucket = uri.removeprefix("s3://")
        if role in settings.storage.perishable:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
            assert {r["Expiration"].get("Days") for r in rules} - {None} == {settings.storage.retention_days + 2}
            assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        else:  # the audit bucket never expires
            with pytest.raises(s3.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):
                s3.get_bucket_lifecycle_configuration(Bucket=bucket)


def test_a_lifecycle_changed_by_hand_is_put_back_and_on_record(s3, deployed_lab):  # noqa: F811
    resources, job = deployed_lab
    deployed = lifecycle_document(load_settings("lab"))
    changed = json.loads(json.dumps(deployed))
    changed["Rules"][0]["Expiration"]["Days"] = 365
    s3.put_bucket_lifecycle_configuration(Bucket="buk-aiml-lab", LifecycleConfiguration=changed)
    s3.put_bucket_versioning(Bucket="buk-aiml-lab", VersioningConfiguration={"Status": "Suspended"})
    [lab] = [p for p in postures(resources["storage"], load_settings("lab")) if p.bucket == "buk-aiml-lab"]
    found = "; ".join(drift(s3, lab))
    assert re.fullmatch(r"versioning is not enabled; lifecycle rules .*expire-after-92-days.*", found), found

    result = job.execute_in_process(resources=resources)

    assert result.success
    assert drift(s3, lab) == []  # put back as deployments/s3 has it
    # the first run found a new bucket unconfigured, the second the change by hand
    first, second = [e for e in resources["audit"].read()
                     if e["action"] == "bucket_posture_drift" and e["subject"] == "buk-aiml-lab"]
    assert first["subject"] == second["subject"] == "buk-aiml-lab"
    assert "expire-after-92-days" in second["details"]["drift"] and "versioning" in second["details"]["drift"]


def test_a_purge_as_of_another_time_is_refused_outside_local():
    with pytest.raises(ClockRefused, match="refused in lab"):
        retention_assets._as_of(retention_assets.PurgeConfig(as_of="2030-01-01T00:00:00"), load_settings("lab"))


def test_the_purge_proves_itself_in_its_own_step_on_the_environments_cluster():
    [purge] = retention_assets.retention_assets(load_settings("lab"))  # no separate check step to start
    assert [key.name for key in purge.check_keys] == ["nothing_past_retention"]
    assert {STEP_LAUNCHER_KEY, "storage", "tables", "catalog", "audit"} <= purge.required_resource_keys


def test_prod_has_no_retention_job_but_checks_its_bucket_posture(aiml_home):
    jobs = {job.name for job in build_definitions("prod").jobs}
    assert RETENTION_JOB not in jobs and LIFECYCLE_JOB in jobs
