"""The audit trail of materializations: a real Dagster instance's event log, read by the sensor into a real
append-only audit log, and read back."""

from datetime import datetime, timezone

import pytest
from dagster import (
    AssetMaterialization, DefaultSensorStatus, StaticPartitionsDefinition, asset, build_sensor_context, materialize,
)

from aiml_assets.resources.audit import AUDIT_TABLE, AuditLog
from aiml_assets.governance.audit_trail import (
    MATERIALIZATION, SENSOR_NAME, audit_trail_sensor, record_materializations,
)
from aiml_assets.settings import load_settings

REGIONS = StaticPartitionsDefinition(["north", "south"])
CI_TAGS = {"aiml/requested_by": "svc-aiml-gitlab-uat", "aiml/change_request": "CHG0012345"}


@asset
def customers() -> int:
    return 1


@asset(partitions_def=REGIONS)
def regional_balances(customers: int) -> int:
    return customers + 1


@asset
def broken() -> int:
    raise ValueError("the source is unreadable")


@pytest.fixture
def audit(tmp_path):
    return AuditLog(location=str(tmp_path / "audit" / AUDIT_TABLE))


@pytest.fixture
def sensor_def(aiml_home):
    return audit_trail_sensor(load_settings("uat"))


def _evaluate(sensor_def, instance, audit, cursor=None) -> str | None:
    with build_sensor_context(instance=instance, cursor=cursor, resources={"audit": audit}) as context:
        sensor_def(context)
        return context.cursor


def _materializations(audit) -> list[dict]:
    return [event for event in audit.read() if event["action"] == MATERIALIZATION]


def test_each_materialization_is_audited_with_who_what_when_where_and_change_request(
        instance, audit, sensor_def):
    before = datetime.now(timezone.utc)
    first = materialize([customers], instance=instance, tags=CI_TAGS)
    second = materialize([customers, regional_balances], instance=instance, partition_key="south",
                         tags={"dagster/user": "j.smith@buk"})
    cursor = _evaluate(sensor_def, instance, audit)
    events = _materializations(audit)
    assert [(e["subject"], e["actor"], e["run_id"], e["change_request"]) for e in events] == [
        ("customers", "svc-aiml-gitlab-uat", first.run_id, "CHG0012345"),
        ("customers", "j.smith@buk", second.run_id, None),
        ("regional_balances[south]", "j.smith@buk", second.run_id, None),
    ]
    assert {e["environment"] for e in events} == {"uat"}
    details = events[-1]["details"]
    assert details["partition"] == "south" and details["step_key"] == "regional_balances"
    assert details["job"] == second.dagster_run.job_name
    assert before.timestamp() - 1 <= datetime.fromisoformat(details["materialized_at"]).timestamp() \
        <= events[-1]["recorded_at"].timestamp()
    storage_ids = [e["details"]["storage_id"] for e in events]
    assert storage_ids == sorted(storage_ids) and int(cursor) == storage_ids[-1]


def test_the_next_tick_records_only_what_is_new(instance, audit, sensor_def):
    materialize([customers], instance=instance)
    cursor = _evaluate(sensor_def, instance, audit)
    assert _evaluate(sensor_def, instance, audit, cursor) == cursor and len(_materializations(audit)) == 1
    later = materialize([customers], instance=instance)
    assert int(_evaluate(sensor_def, instance, audit, cursor)) > int(cursor)
    assert [e["run_id"] for e in _materializations(audit)][1:] == [later.run_id]


def test_a_tick_repeated_from_the_old_cursor_records_no_duplicates(instance, audit, sensor_def):
    """As after a crash between writing the audit events and moving the cursor."""
    materialize([customers], instance=instance)
    cursor = _evaluate(sensor_def, instance, audit)
    materialize([customers, regional_balances], instance=instance, partition_key="north")
    new_cursor = _evaluate(sensor_def, instance, audit, cursor)
    assert _evaluate(sensor_def, instance, audit, cursor) == new_cursor
    assert _evaluate(sensor_def, instance, audit) == new_cursor  # even from the very start
    storage_ids = [e["details"]["storage_id"] for e in _materializations(audit)]
    assert len(storage_ids) == 3 == len(set(storage_ids))


def test_batches_move_the_cursor_one_batch_at_a_time(instance, audit):
    for key in ("north", "south"):
        materialize([customers, regional_balances], instance=instance, partition_key=key)
    cursor, recorded, batches = None, 0, 0
    while True:
        new_cursor, count = record_materializations(instance, audit, "lab", after=cursor, limit=3)
        if new_cursor == cursor:
            break
        cursor, recorded, batches = new_cursor, recorded + count, batches + 1
    assert (recorded, batches) == (4, 2)
    assert [e["subject"] for e in _materializations(audit)] == [
        "customers", "regional_balances[north]", "customers", "regional_balances[south]"]


@pytest.mark.parametrize("tags, expected", [
    ({"dagster/schedule_name": "daily_scoring_schedule"}, "schedule:daily_scoring_schedule"),
    ({"dagster/sensor_name": "edp_refreshed"}, "sensor:edp_refreshed"),
    ({"dagster/backfill": "abcdefgh"}, "backfill:abcdefgh"),
    ({"dagster/schedule_name": "daily_scoring_schedule", "dagster/user": "j.smith@buk"}, "j.smith@buk"),
])
def test_a_run_without_a_user_is_attributed_to_what_launched_it(instance, audit, sensor_def, tags, expected):
    materialize([customers], instance=instance, tags=tags)
    _evaluate(sensor_def, instance, audit)
    assert [e["actor"] for e in _materializations(audit)] == [expected]


def test_a_run_with_no_tags_is_attributed_to_who_records(instance, audit, sensor_def, monkeypatch):
    monkeypatch.delenv("GITLAB_USER_LOGIN", raising=False)
    monkeypatch.setenv("AIML_USER", "local.dev")
    materialize([customers], instance=instance)
    _evaluate(sensor_def, instance, audit)
    assert [e["actor"] for e in _materializations(audit)] == ["local.dev"]


def test_a_failed_asset_is_not_audited_as_materialized(instance, audit, sensor_def):
    result = materialize([customers, broken], instance=instance, raise_on_error=False)
    assert not result.success
    _evaluate(sensor_def, instance, audit)
    assert [(e["subject"], e["run_id"]) for e in _materializations(audit)] == [("customers", result.run_id)]


def test_a_materialization_reported_without_a_run_is_audited_once(instance, audit, sensor_def, monkeypatch):
    monkeypatch.setenv("GITLAB_USER_LOGIN", "svc-aiml-gitlab-uat")
    instance.report_runless_asset_event(AssetMaterialization("lab_model_binaries", partition="nba"))
    _evaluate(sensor_def, instance, audit)
    _evaluate(sensor_def, instance, audit)
    assert [(e["subject"], e["actor"], e["run_id"]) for e in _materializations(audit)] == [
        ("lab_model_binaries[nba]", "svc-aiml-gitlab-uat", None)]


def test_nothing_materialized_records_nothing(instance, audit, sensor_def):
    assert _evaluate(sensor_def, instance, audit) == "0"
    assert audit.read() == []


@pytest.mark.parametrize("env, status", [("local", DefaultSensorStatus.STOPPED), ("prod", DefaultSensorStatus.RUNNING)])
def test_the_sensor_is_on_by_default_outside_local(aiml_home, env, status):
    sensor_def = audit_trail_sensor(load_settings(env))
    assert sensor_def.default_status == status and sensor_def.minimum_interval_seconds == 60
    assert sensor_def.required_resource_keys == {"audit"} and not sensor_def.targets


def test_the_code_location_runs_the_sensor(aiml_home):
    from aiml_assets.definitions import build_definitions  # here, as its module builds the current env on import

    defs = build_definitions("local")
    assert defs.resolve_sensor_def(SENSOR_NAME).required_resource_keys == {"audit"}
