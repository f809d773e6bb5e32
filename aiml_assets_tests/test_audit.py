"""The audit log: a real append-only Delta table (delta-rs) that refuses deletes, updates and rewrites."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from aiml_assets.governance.audit import AUDIT_ROLE, AUDIT_TABLE, AuditLog, AuditLogError, actor
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import ENVIRONMENTS, load_settings


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(location=str(tmp_path / "audit" / AUDIT_TABLE))
    log.record("promotion", "models:/m/1", actor="alice", environment="uat", run_id="run-1",
               change_request="CHG0000001", details={"version": 1, "sha256": "ab" * 32})
    log.record("erasure", "customer C00000042", actor="bob", environment="lab", run_id=None)
    return log


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
    assert actor(SimpleNamespace(run=SimpleNamespace(tags=tags))) == expected


def test_actor_falls_back_to_the_os_user(monkeypatch):
    import getpass

    for key in ("GITLAB_USER_LOGIN", "AIML_USER"):
        monkeypatch.delenv(key, raising=False)
    assert actor() == getpass.getuser()


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_keeps_its_audit_log_in_its_audit_bucket(aiml_home, env):
    resources = build_resources(load_settings(env))
    assert resources["audit"].location == resources["storage"].uri(AUDIT_ROLE, AUDIT_TABLE)
    assert resources["audit"].location.startswith(str(aiml_home) if env == "local" else "s3://buk-aiml-audit-")
