"""Every asset materialization in the audit log, however it was launched (a job, the UI's asset selection, a
schedule, a sensor, a backfill, `materialize()`, a runless report).

The `audit_materializations` sensor reads the Dagster instance's event log after its cursor (an event storage id),
records one `materialization` event per asset materialization, and only then moves the cursor. Should it stop between
the two, the next tick finds those materializations already in the log (by run id and storage id) and skips them.
It launches no runs, so prod's lockdown (which refuses runs) leaves it alone. `aiml run-local` records its own runs
with `record_materializations` (the sensor is off locally, like the schedules).

Who: the run's user tag (`audit.ACTOR_TAGS`), else what launched it (`schedule:<name>`, `sensor:<name>`,
`backfill:<id>`), else whoever records (CI or AIML_USER, then the OS user: the CLI's user; for the sensor, the
daemon's service account, as for an OSS UI launch, which carries no user tag).
"""

from datetime import datetime, timezone

from dagster import (
    AssetRecordsFilter, DagsterInstance, DefaultSensorStatus, EventLogRecord, SensorDefinition, SensorEvaluationContext,
    SkipReason, sensor,
)

from aiml_assets.governance.launch_signature import CHANGE_REQUEST_TAG
from aiml_assets.resources.audit import AuditLog, actor_of
from aiml_assets.settings import Settings

MATERIALIZATION = "materialization"
SENSOR_NAME = "audit_materializations"
BATCH = 500


def materializations_after(instance: DagsterInstance, after: int, limit: int = BATCH) -> list[EventLogRecord]:
    """The first `limit` materializations stored after storage id `after`, of every asset, oldest first."""
    changed = [record.asset_entry.asset_key for record in instance.get_asset_records()
               if (record.asset_entry.last_materialization_storage_id or 0) > after]
    records = [record for key in changed for record in instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=limit, ascending=True).records]
    return sorted(records, key=lambda record: record.storage_id)[:limit]


def record_materializations(instance: DagsterInstance, audit: AuditLog, environment: str, after: int | None = None,
                            limit: int = BATCH) -> tuple[int, int]:
    """Audit the next `limit` materializations after storage id `after` that the log lacks.
    Returns the new cursor (the last storage id looked at; `after` if none) and how many were recorded."""
    after, audit = after or 0, audit.for_instance(instance)  # the chain head kept where the materializations are
    records = materializations_after(instance, after, limit)
    if not records:
        return after, 0
    already = {(event["run_id"], event["details"].get("storage_id")) for event in audit.read(MATERIALIZATION)}
    runs, recorded = {}, 0
    for record in records:
        run_id = record.run_id or None  # None: reported without a run (the UI's "report materialization")
        if (run_id, record.storage_id) in already:
            continue
        if run_id not in runs:
            runs[run_id] = instance.get_run_by_id(run_id) if run_id else None
        run = runs[run_id]
        tags = dict(run.tags) if run else {}
        partition = record.partition_key
        audit.record(
            MATERIALIZATION, record.asset_key.to_user_string() + (f"[{partition}]" if partition else ""),
            actor=actor_of(tags), environment=environment, run_id=run_id,
            change_request=(tags.get(CHANGE_REQUEST_TAG) or "").strip() or None,
            details={"partition": partition, "storage_id": record.storage_id,
                     "step_key": record.event_log_entry.step_key, "job": run.job_name if run else None,
                     "materialized_at": datetime.fromtimestamp(record.timestamp, timezone.utc).isoformat()})
        recorded += 1
    return records[-1].storage_id, recorded


def audit_trail_sensor(settings: Settings) -> SensorDefinition:
    """Records the environment's materializations every minute; on by default outside local."""

    @sensor(name=SENSOR_NAME, minimum_interval_seconds=60,
            default_status=DefaultSensorStatus.STOPPED if settings.is_local else DefaultSensorStatus.RUNNING,
            description="Records every asset materialization (who, what, when, run, change request) in the "
                        "append-only audit log. Launches no runs.")
    def audit_materializations(context: SensorEvaluationContext, audit: AuditLog):  # the environment's `audit`
        cursor, recorded = record_materializations(context.instance, audit, settings.environment,
                                                   after=int(context.cursor) if context.cursor else None)
        context.update_cursor(str(cursor))  # only after the batch is in the log
        return SkipReason(f"recorded {recorded} materialization(s); cursor at storage id {cursor}")

    return audit_materializations
