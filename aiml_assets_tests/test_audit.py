"""The audit log: a real append-only Delta table (delta-rs) that refuses deletes, updates and rewrites, and a hash
chain whose head Dagster's instance keeps, so that tampering with its files (a folder, or S3 on a moto server) is
refused, and so is every control that records to it."""

import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import boto3
import pytest
from dagster import asset, materialize
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from aiml_assets.resources import audit_chain as chain
from aiml_assets.resources.audit import AUDIT_ROLE, AUDIT_TABLE, SCHEMA, AuditLog, AuditLogError, actor_of
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.resources.storage import S3Storage
from aiml_assets.settings import ENVIRONMENTS, load_settings
from aiml_assets_tests.test_retention import bucket, moto_url  # noqa: F401 (a folder, or a bucket on moto's server)

EVENT = {"actor": "dave", "environment": "uat", "run_id": "r"}


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(location=str(tmp_path / "audit" / AUDIT_TABLE))
    log.record("promotion", "models:/m/1", actor="alice", environment="uat", run_id="run-1",
               change_request="CHG0000001", details={"version": 1, "sha256": "ab" * 32})
    log.record("erasure", "customer C00000042", actor="bob", environment="lab", run_id=None)
    return log


@pytest.fixture
def kept(audit, instance):
    """The log with its chain head kept in a Dagster instance (3 events, the last recorded with the instance)."""
    log = audit.for_instance(instance)
    log.record("publication", "cdp.nba_propensity v1", actor="svc", environment="prod", run_id="run-2")
    return log


def files(log: AuditLog):
    return chain.filesystem(log.location, log.storage_options)


def commit_file(version: int) -> str:
    return f"_delta_log/{version:020d}.json"


def commit(log: AuditLog, version: int) -> list[dict]:
    with files(log).open_input_stream(commit_file(version)) as stream:
        return [json.loads(line) for line in stream.read().decode().splitlines()]


def write_commit(log: AuditLog, version: int, actions: list[dict]) -> None:
    # a local log only: delta-rs' pyarrow handler cannot write files under pyarrow 25
    (Path(log.location) / commit_file(version)).write_text("\n".join(json.dumps(action) for action in actions))


def added(log: AuditLog, version: int) -> str:
    return next(action["add"]["path"] for action in commit(log, version) if "add" in action)


def forge(log: AuditLog, version: int, rehash: bytes | None = None, **changes) -> dict:
    """Replace commit `version`'s data file with a new one holding its event with `changes` (and, with `rehash`,
    a hash recomputed under that key), and point the commit's add action at it, as someone who can write the bucket
    could."""
    table = Path(log.location)
    event = {**pq.read_table(table / added(log, version)).to_pylist()[0], **changes}
    if rehash:
        event["event_hash"] = chain.event_hash(event, rehash)
    forged = f"part-forged-{version}.parquet"
    pq.write_table(pa.Table.from_pylist([event], schema=SCHEMA), table / forged)
    write_commit(log, version, [{"add": {**action["add"], "path": forged, "size": (table / forged).stat().st_size,
                                         "stats": None}} if "add" in action else action
                                for action in commit(log, version)])
    return event


def refused(log: AuditLog, match: str) -> None:
    """Every read, verification and append of `log` fails naming the log and `match`."""
    for attempt in (log.verify, log.read, lambda: log.record("promotion", "models:/m/9", **EVENT)):
        with pytest.raises(AuditLogError, match=f"{re.escape(log.location)}: audit log failed verification: .*{match}"):
            attempt()


def test_events_read_back_in_order_with_who_what_when_where(audit):
    before = datetime.now(timezone.utc)
    audit.record("promotion_refused", "models:/m/2", actor="carol", environment="prod", run_id="run-3",
                 details={"reason": "no change request id"})
    events = audit.read()
    assert [e["action"] for e in events] == ["promotion", "erasure", "promotion_refused"]
    first, last = events[0], events[-1]
    assert {k: first[k] for k in ("environment", "actor", "subject", "run_id", "change_request")} == {
        "environment": "uat", "actor": "alice", "subject": "models:/m/1", "run_id": "run-1",
        "change_request": "CHG0000001"}
    assert first["details"] == {"version": 1, "sha256": "ab" * 32}
    assert events[1]["change_request"] is None and events[1]["details"] == {}
    assert last["recorded_at"].utcoffset() == timedelta(0) and last["recorded_at"] >= before - timedelta(seconds=1)
    assert len({e["event_id"] for e in events}) == 3
    assert [e["subject"] for e in audit.read("promotion_refused")] == ["models:/m/2"]  # one kind of event only
    commits = DeltaTable(audit.location).history()
    assert commits[0]["dagster_run_id"] == "run-3"  # newest first


def test_an_event_needs_who_what_and_where(audit):
    with pytest.raises(AuditLogError, match="actor"):
        audit.record("promotion", "models:/m/1", actor=" ", environment="uat", run_id="r")
    assert len(audit.read()) == 2


def test_the_table_is_append_only_by_the_delta_protocol(audit):
    table = DeltaTable(audit.location)
    assert table.metadata().configuration["delta.appendOnly"] == "true"
    with pytest.raises(CommitFailedError, match="append-only"):
        table.delete("actor = 'alice'")
    with pytest.raises(CommitFailedError, match="append-only"):
        DeltaTable(audit.location).update({"actor": "'mallory'"})
    with pytest.raises(CommitFailedError, match="append-only"):
        write_deltalake(audit.location, DeltaTable(audit.location).to_pyarrow_table().slice(0, 1), mode="overwrite")
    assert [e["actor"] for e in audit.read()] == ["alice", "bob"]


@pytest.mark.parametrize("rewrite", [
    # delta-rs 1.6.6 lets these through on an append-only table; the log refuses itself afterwards
    pytest.param(lambda t: t.restore(1), id="restore drops the later appends"),
    pytest.param(lambda t: t.alter.set_table_properties({"delta.appendOnly": "false"}), id="append-only unset"),
])
def test_a_rewritten_log_is_refused_for_reading_and_writing(audit, rewrite):
    rewrite(DeltaTable(audit.location))
    with pytest.raises(AuditLogError, match="audit log"):
        audit.read()
    with pytest.raises(AuditLogError, match="audit log"):
        audit.record("promotion", "models:/m/3", actor="dave", environment="uat", run_id="r")
    with pytest.raises(AuditLogError):
        audit.verify()


def test_a_table_without_append_only_is_not_taken_for_the_audit_log(tmp_path):
    location = str(tmp_path / "not_audit")
    write_deltalake(location, pa.table({"x": [1]}))
    with pytest.raises(AuditLogError, match="append-only"):
        AuditLog(location=location).read()


def test_an_empty_log_reads_empty_and_is_created_on_first_record(tmp_path):
    log = AuditLog(location=str(tmp_path / "fresh"))
    assert log.read() == []
    log.verify()
    log.record("publication", "cdp.nba_propensity v1", actor="svc", environment="prod", run_id="r")
    assert [e["action"] for e in log.read()] == ["publication"]


@pytest.mark.parametrize("tags, env, expected", [
    ({"dagster/user": "ui.user@buk", "aiml/requested_by": "cli"}, {"GITLAB_USER_LOGIN": "ci"}, "ui.user@buk"),
    ({"aiml/requested_by": "cli.user"}, {"GITLAB_USER_LOGIN": "ci"}, "cli.user"),
    ({}, {"GITLAB_USER_LOGIN": "ci.user", "AIML_USER": "me"}, "ci.user"),
    ({"aiml/requested_by": "  "}, {"AIML_USER": "me"}, "me"),
])
def test_actor_prefers_the_run_tag_then_ci_then_aiml_user(monkeypatch, tags, env, expected):
    for key in ("GITLAB_USER_LOGIN", "AIML_USER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert actor_of(tags) == expected


def test_actor_falls_back_to_the_os_user(monkeypatch):
    import getpass

    for key in ("GITLAB_USER_LOGIN", "AIML_USER"):
        monkeypatch.delenv(key, raising=False)
    assert actor_of({}) == getpass.getuser()


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_keeps_its_audit_log_in_its_audit_bucket(aiml_home, env):
    resources = build_resources(load_settings(env))
    assert resources["audit"].location == resources["storage"].uri(AUDIT_ROLE, AUDIT_TABLE)
    assert resources["audit"].location.startswith(str(aiml_home) if env == "local" else "s3://buk-aiml-audit-")


def test_each_event_links_the_hash_of_the_one_before(kept):
    events = kept.read()
    assert [e["prev_hash"] for e in events] == [chain.GENESIS] + [e["event_hash"] for e in events[:-1]]
    assert all(chain.event_hash(e | {"details": json.dumps(e["details"], sort_keys=True)}, kept.key()) == e["event_hash"]
               for e in events)


def test_the_newest_commit_deleted_from_the_bucket_is_refused(bucket, instance):  # noqa: F811
    log = AuditLog(location=bucket.uri("lab", AUDIT_TABLE)).for_instance(instance)
    for subject in ("lab", "uat"):
        log.record("purge", subject, **EVENT)
    assert [e["subject"] for e in log.read()] == ["lab", "uat"]
    files(log).delete_file(commit_file(2))
    refused(log, r"it holds 1 event\(s\) but Dagster's instance recorded 2 event\(s\) up to version 2")


@asset
def purged(audit: AuditLog) -> None:  # records as the retention assets do
    audit.record("purge", "lab", actor="svc", environment="lab", run_id=None)


def test_a_run_stops_when_its_audit_log_lost_the_newest_commit(tmp_path, instance):
    log = AuditLog(location=str(tmp_path / "audit" / AUDIT_TABLE))
    for _ in range(2):
        assert materialize([purged], resources={"audit": log}, instance=instance).success
    assert chain.latest_head(instance, log.location).events == 2  # the run's resource kept the head
    files(log).delete_file(commit_file(2))
    with pytest.raises(AuditLogError, match="events were deleted"):
        materialize([purged], resources={"audit": log}, instance=instance)


def test_a_commit_labelled_append_that_removes_an_event_is_refused(audit):
    write_commit(audit, 3, [{"commitInfo": {"timestamp": 0, "operation": "WRITE",
                                            "operationParameters": {"mode": "Append"}}},
                            {"remove": {"path": added(audit, 1), "dataChange": True, "deletionTimestamp": 0}}])
    assert DeltaTable(audit.location).history()[0]["operation"] == "WRITE"  # the label the old check trusted
    assert DeltaTable(audit.location).to_pyarrow_table()["actor"].to_pylist() == ["bob"]  # alice's event gone
    refused(audit, "version 3 holds a 'remove' action; only appends are allowed")


def test_an_earlier_commit_rewritten_to_a_forged_event_is_refused(audit):
    forge(audit, 1, actor="mallory")
    assert "mallory" in DeltaTable(audit.location).to_pyarrow_table()["actor"].to_pylist()  # delta-rs serves it
    refused(audit, r"event \w+ \(#1\) does not match its hash under the environment.s audit key: it was altered")


def rebuild(log: AuditLog, key: bytes) -> None:
    prev = chain.GENESIS
    for version in (1, 2, 3):  # every hash recomputed: a consistent chain, but not the one recorded
        prev = forge(log, version, rehash=key, prev_hash=prev, **({"actor": "mallory"} if version == 1 else {}))[
            "event_hash"]


def test_a_chain_rebuilt_without_the_key_is_refused_even_without_an_instance(kept):
    rebuild(kept, b"a guess at the key")
    refused(AuditLog(location=kept.location), r"event \w+ \(#1\) does not match its hash under the environment's "
            "audit key")


def test_a_chain_rebuilt_with_the_key_is_refused_by_the_head_dagster_keeps(kept):
    rebuild(kept, kept.key())  # an insider holding the key
    assert AuditLog(location=kept.location).read()[0]["actor"] == "mallory"  # no instance: undetectable
    refused(kept, r"event #3 is not the one Dagster's instance recorded .*: the chain was rewritten")


def test_forged_events_appended_after_the_newest_are_refused(audit):
    """The attack the chain alone let through: a new commit of validly linked events, hashed without the key."""
    prev = audit.read()[-1]
    forged = []
    for action in ("publication", "erasure_requested"):
        event = {**prev, "event_id": f"forged-{action}", "action": action, "actor": "mallory", "details": "{}",
                 "prev_hash": prev["event_hash"]}
        event["event_hash"] = chain.event_hash(event, b"not the key")
        forged.append(prev := event)
    write_deltalake(audit.location, pa.Table.from_pylist(forged, schema=SCHEMA), mode="append")
    refused(audit, r"event forged-publication \(#3\) does not match its hash under the environment's audit key")


def test_a_commit_file_that_is_not_delta_json_is_refused_as_tampering(audit):
    write_commit(audit, 3, [{}])
    refused(audit, "version 3's commit file is not a Delta commit")


def test_without_its_key_the_log_neither_records_nor_verifies(audit, monkeypatch):
    monkeypatch.delenv("AIML_AUDIT_KEY")
    for attempt in (audit.verify, lambda: audit.record("promotion", "models:/m/9", **EVENT)):
        with pytest.raises(AuditLogError, match="needs its HMAC key in AIML_AUDIT_KEY"):
            attempt()
    local = AuditLog(location=audit.location, development_key=True)  # what resources/local.yaml says
    with pytest.raises(AuditLogError, match="does not match its hash"):  # chained under the tests' key, not that one
        local.verify()


def test_deleting_the_whole_table_is_refused_and_nothing_is_recreated(kept):
    shutil.rmtree(kept.location)
    refused(kept, "the table is missing or empty but Dagster's instance recorded 3 event")
    assert not DeltaTable.is_deltatable(kept.location)


def test_a_corrupted_data_file_fails_verification_and_stops_appends(audit):
    path = added(audit, 2)
    (Path(audit.location) / path).write_bytes(b"not parquet")
    refused(audit, f"its data files cannot be read: .*{path}")


def test_a_second_event_linked_to_the_same_predecessor_is_refused(audit):
    first = audit.read()[0]
    twin = {**first, "event_id": "twin", "details": "{}", "actor": "mallory"}
    twin["event_hash"] = chain.event_hash(twin, audit.key())
    write_deltalake(audit.location, pa.Table.from_pylist([twin], schema=SCHEMA), mode="append")
    refused(audit, f"events \\w+ and twin both follow {first['prev_hash']}: the chain forked")


def test_racing_appends_link_one_chain(audit):
    rival = AuditLog(location=audit.location)
    raced = []

    class Raced(AuditLog):
        def _verified(self):
            seen = super()._verified()
            if not raced:  # a rival appends between this writer's verification and its commit
                raced.append(rival.record("erasure", "customer C1", **EVENT))
            return seen

    mine = Raced(location=audit.location).record("promotion", "models:/m/3", **EVENT)
    events = audit.read()
    assert [e["event_id"] for e in events[-2:]] == [raced[0]["event_id"], mine["event_id"]]
    assert mine["prev_hash"] == raced[0]["event_hash"]


def test_the_audit_bucket_refuses_to_delete_the_log(s3):
    deployments, bucket = Path(__file__).parents[1] / "deployments" / "s3", "buk-aiml-audit-test"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True,
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=json.loads(
        (deployments / "audit-object-lock.json").read_text()))
    key = f"{AUDIT_TABLE}/{commit_file(1)}"
    version = s3.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")["VersionId"]
    assert s3.head_object(Bucket=bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):  # Object Lock alone
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)

    s3.put_bucket_policy(Bucket=bucket, Policy=(deployments / "audit-bucket-policy.json").read_text().replace(
        "AUDIT_BUCKET", bucket))
    with pytest.raises(s3.exceptions.ClientError, match="Forbidden|AccessDenied"):  # not even a delete marker
        s3.delete_object(Bucket=bucket, Key=key)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"
    s3.put_object(Bucket=bucket, Key=f"{AUDIT_TABLE}/part-1.parquet", Body=b"rows")  # appends go on
    # (moto does not evaluate s3:if-none-match, so the policy's create-only commits are S3's to prove)


def test_on_s3_the_log_commits_without_deleting_anything(moto_url, monkeypatch):  # noqa: F811
    """The audit bucket denies deletes, so delta-rs' rename (copy, then delete the temporary object) would fail there:
    the log commits by conditional put (If-None-Match), which needs no rename."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.delenv("AWS_S3_ALLOW_UNSAFE_RENAME", raising=False)
    name, s3 = "buk-aiml-audit-conditional", boto3.client("s3", region_name="eu-west-2", endpoint_url=moto_url)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    policy = json.loads((Path(__file__).parents[1] / "deployments" / "s3" / "audit-bucket-policy.json").read_text()
                        .replace("AUDIT_BUCKET", name))
    # moto cannot evaluate the create-only statement's s3:if-none-match condition; the deny-deletes one it can
    policy["Statement"] = [st for st in policy["Statement"] if "Condition" not in st]
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    log = AuditLog.in_bucket(S3Storage(buckets={AUDIT_ROLE: f"s3://{name}"}, endpoint_url=moto_url, region="eu-west-2"))
    for subject in ("first", "second"):
        log.record("promotion", subject, **EVENT)
    assert [e["subject"] for e in log.read()] == ["first", "second"]


def test_a_planted_checkpoint_is_refused(audit):
    """A checkpoint would let Delta's readers (Spark, SQL, an auditor's query) start from a state with events hidden
    that the replay never read; the log writes none, so one found there was planted."""
    log = Path(audit.location) / "_delta_log"
    (log / "_last_checkpoint").write_text(json.dumps({"version": 1, "size": 3}))
    refused(audit, "_delta_log holds .*_last_checkpoint: only commit files belong there")
