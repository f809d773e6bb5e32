"""The bucket posture on moto S3: the bucket_lifecycle job applies and reads back each bucket's encryption, public
access block, policy, versioning and lifecycle; puts back and audits drift; fails, naming bucket and setting, on an
audit bucket whose Object Lock it must not set itself; and our writes (boto3 and delta-rs) ask for SSE-KMS under
the environment's key. Moto stores bucket policies but cannot evaluate their conditions (TLS, principal, encryption
header): under the posture's policy it refuses every object request alike, so a refused unencrypted write is AWS's
to prove, not these tests'."""

import json
import re

import boto3
import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from aiml_assets.governance.bucket_posture import AUDIT_LOCK_FILE, PostureMismatch, object_lock_days, postures
from aiml_assets.governance.retention_assets import lifecycle_job
from aiml_assets.resources.audit import AUDIT_ROLE, AuditLog
from aiml_assets.resources.storage import S3Storage
from aiml_assets.settings import RESOURCES_DIR, SettingsError, load_settings, parse_settings
from aiml_assets_tests.test_retention import moto_url  # noqa: F401 (moto's server, for delta-rs)

EVENT = {"actor": "dave", "environment": "lab", "run_id": "r"}
DEPLOYED_LOCK = json.loads(AUDIT_LOCK_FILE.read_text())


def create_buckets(s3, settings, lock: dict | None = DEPLOYED_LOCK):
    """The environment's buckets as the platform creates them: the audit bucket with Object Lock (`lock`) or not."""
    for role, uri in settings.storage.buckets.items():
        bucket = uri.removeprefix("s3://")
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"},
                         ObjectLockEnabledForBucket=role == AUDIT_ROLE and lock is not None)
        if role == AUDIT_ROLE and lock is not None:
            s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=lock)


def job_resources(settings, aiml_home):
    return {"storage": S3Storage(buckets=settings.storage.buckets, kms_key_alias=settings.storage.kms_key_alias),
            "audit": AuditLog(location=str(aiml_home / "audit_log"))}


def found_before_applying(result) -> dict:
    [materialization] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return materialization.event_specific_data.metadata["found_before_applying"].data


def drift_events(resources) -> list[dict]:
    return [e for e in resources["audit"].read() if e["action"] == "bucket_posture_drift"]


@pytest.mark.parametrize("env", ["lab", "uat"])
def test_a_fresh_bucket_gets_the_whole_posture_and_reads_it_back(env, s3, aiml_home):
    settings = load_settings(env)
    create_buckets(s3, settings)
    resources = job_resources(settings, aiml_home)

    assert lifecycle_job(settings).execute_in_process(resources=resources).success

    for uri in settings.storage.buckets.values():
        bucket = uri.removeprefix("s3://")
        [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms",
                                                              "KMSMasterKeyID": f"alias/buk-aiml-{env}"}
        assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        statements = {s["Sid"]: s for s in json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]}
        assert statements["TlsOnly"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert statements["OnlyTheEnvironmentsRoles"]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == list(
            settings.storage.access_roles)
        assert statements["TlsOnly"]["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
        assert ("NobodyDeletesTheAuditRecord" in statements) == bucket.startswith("buk-aiml-audit-")
    # a fresh bucket is drift from deployments/s3, on record; a second run finds everything as deployed
    assert {e["subject"] for e in drift_events(resources)} == {u.removeprefix("s3://")
                                                               for u in settings.storage.buckets.values()}
    again = lifecycle_job(settings).execute_in_process(resources=resources)
    assert set(found_before_applying(again).values()) == {"as deployed"}
    assert len(drift_events(resources)) == len(settings.storage.buckets)


@pytest.fixture
def deployed_lab(s3, aiml_home):
    """The lab's buckets, created and given their posture by a first run of the job: (resources, the job)."""
    settings = load_settings("lab")
    create_buckets(s3, settings)
    resources, job = job_resources(settings, aiml_home), lifecycle_job(settings)
    assert job.execute_in_process(resources=resources).success
    return resources, job


def test_drift_by_hand_is_reported_audited_and_put_back(s3, deployed_lab):
    resources, job = deployed_lab
    deployed = json.loads(s3.get_bucket_policy(Bucket="buk-aiml-lab")["Policy"])
    s3.delete_bucket_encryption(Bucket="buk-aiml-lab")
    s3.delete_public_access_block(Bucket="buk-aiml-lab")
    s3.put_bucket_policy(Bucket="buk-aiml-lab", Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::buk-aiml-lab/*"}]}))
    s3.put_bucket_encryption(Bucket="buk-aiml-audit-lab", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_lifecycle_configuration(Bucket="buk-aiml-audit-lab", LifecycleConfiguration={"Rules": [
        {"ID": "tidy-up", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 30}}]})

    result = job.execute_in_process(resources=resources)

    assert result.success
    assert found_before_applying(result) == {
        "buk-aiml-lab": "encryption is missing; public access block is missing; policy differs",
        "buk-aiml-audit-lab": "encryption differs; lifecycle rules ['tidy-up'] differ from deployments/s3"}
    lab, audit = drift_events(resources)[-2:]
    assert (lab["subject"], lab["details"]["drift"]) == ("buk-aiml-lab", found_before_applying(result)["buk-aiml-lab"])
    assert audit["subject"] == "buk-aiml-audit-lab" and "tidy-up" in audit["details"]["drift"]
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):  # the audit log never expires
        s3.get_bucket_lifecycle_configuration(Bucket="buk-aiml-audit-lab")
    assert json.loads(s3.get_bucket_policy(Bucket="buk-aiml-lab")["Policy"]) == deployed
    assert all(s3.get_public_access_block(Bucket="buk-aiml-lab")["PublicAccessBlockConfiguration"].values())
    for bucket in ("buk-aiml-lab", "buk-aiml-audit-lab"):
        [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


@pytest.mark.parametrize(("lock", "expected"), [
    (None, "Object Lock is off"),
    ({"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2557}}},
     r"Object Lock is not in COMPLIANCE mode \(found GOVERNANCE\)"),
    ({"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}},
     r"Object Lock keeps 30 days, shorter than storage.audit_lock_days \(2557\)"),
])
def test_an_audit_bucket_without_its_object_lock_fails_the_job_naming_it(lock, expected, s3, aiml_home):
    settings = load_settings("lab")
    create_buckets(s3, settings, lock=lock)
    resources = job_resources(settings, aiml_home)

    result = lifecycle_job(settings).execute_in_process(resources=resources, raise_on_error=False)

    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert re.search(f"buk-aiml-audit-lab: {expected}", description), description
    assert "buk-aiml-lab:" not in description  # the lab bucket's posture was put right
    assert s3.get_bucket_encryption(Bucket="buk-aiml-lab")["ServerSideEncryptionConfiguration"]
    [audited] = [e for e in drift_events(resources) if e["subject"] == "buk-aiml-audit-lab"]
    assert re.search(expected, audited["details"]["refused"])
    if lock is not None:  # never "fixed" by the job
        assert s3.get_object_lock_configuration(Bucket="buk-aiml-audit-lab")["ObjectLockConfiguration"]["Rule"][
            "DefaultRetention"]["Mode"] == lock["Rule"]["DefaultRetention"]["Mode"]


def test_storage_writes_ask_for_sse_kms_under_the_environments_key(s3):
    """On a bucket with no default encryption, so what head_object reads is what the write asked for."""
    s3.create_bucket(Bucket="buk-aiml-lab", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    storage = S3Storage(buckets={"lab": "s3://buk-aiml-lab"}, kms_key_alias="alias/buk-aiml-lab")
    storage.put("lab", "put.bin", b"x")
    assert storage.create("lab", "created.bin", b"y")
    for key in ("put.bin", "created.bin"):
        head = s3.head_object(Bucket="buk-aiml-lab", Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/buk-aiml-lab")
    S3Storage(buckets={"lab": "s3://buk-aiml-lab"}).put("lab", "plain.bin", b"z")  # without a key: the control
    assert "ServerSideEncryption" not in s3.head_object(Bucket="buk-aiml-lab", Key="plain.bin")


def test_delta_rs_writes_ask_for_sse_kms_too(moto_url, monkeypatch):  # noqa: F811
    """delta-rs (object_store) takes aws_server_side_encryption and aws_sse_kms_key_id: the audit log's commits and
    data files, and any table written with the storage's options, carry the headers."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    name, s3 = "buk-aiml-audit-encrypted", boto3.client("s3", region_name="eu-west-2", endpoint_url=moto_url)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    storage = S3Storage(buckets={AUDIT_ROLE: f"s3://{name}", "lab": f"s3://{name}/lab"}, endpoint_url=moto_url,
                        kms_key_alias="alias/buk-aiml-lab")
    AuditLog.in_bucket(storage).record("promotion", "models:/m/1", **EVENT)
    write_deltalake(storage.uri("lab", "features"), pa.table({"x": [1]}),
                    storage_options=storage.delta_storage_options())

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]]
    assert any("_delta_log" in k for k in keys) and any(k.endswith(".parquet") for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=name, Key=key)
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", "alias/buk-aiml-lab"), key


# --- settings and deployments/s3 agree ------------------------------------------------------------------------


def _env_file_with(tmp_path, env: str, **storage):
    raw = yaml.safe_load((RESOURCES_DIR / f"{env}.yaml").read_text())
    for key, value in storage.items():
        raw["storage"].pop(key) if value is None else raw["storage"].__setitem__(key, value)
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("change", "expected"), [
    ({"kms_key_alias": None}, "kms_key_alias, access_roles: required for S3 buckets"),
    ({"access_roles": []}, "kms_key_alias, access_roles: required for S3 buckets"),
    ({"audit_lock_days": None}, "audit_lock_days: required with an S3 audit bucket"),
    ({"kms_key_alias": "buk-aiml-lab"}, r"storage.kms_key_alias: String should match pattern"),
    ({"access_roles": ["arn:aws:iam::111122223333:user/alice"]}, r"storage.access_roles.0: String should match"),
])
def test_an_s3_environment_states_its_posture(tmp_path, change, expected):
    with pytest.raises(SettingsError, match=expected):
        parse_settings(_env_file_with(tmp_path, "lab", **change))


def test_the_object_lock_file_and_the_env_file_state_one_retention(tmp_path):
    for env in ("lab", "uat", "prod"):
        assert object_lock_days(load_settings(env)) == load_settings(env).storage.audit_lock_days
    shorter = parse_settings(_env_file_with(tmp_path, "lab", audit_lock_days=3650))
    with pytest.raises(PostureMismatch, match=r"audit-object-lock.json keeps .*storage.audit_lock_days \(3650\)"):
        postures(S3Storage(buckets=shorter.storage.buckets), shorter)


def test_prod_buckets_have_the_posture_but_never_a_lifecycle_rule():
    settings = load_settings("prod")
    found = {p.bucket: p for p in postures(S3Storage(buckets=settings.storage.buckets), settings)}
    assert set(found) == {"buk-aiml-prod", "buk-aiml-audit-prod"}  # scoring and publication share one bucket
    assert all(p.lifecycle_rules == [] for p in found.values())
    assert found["buk-aiml-audit-prod"].lock_days == 2557 and found["buk-aiml-prod"].lock_days is None
