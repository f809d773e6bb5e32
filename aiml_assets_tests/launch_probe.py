"""A small code location on a locked (prod) executor, with a signed schedule and a signed sensor, for the daemon's real
ticks; the tests set its release, clock and break-glass register through PROBE."""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from dagster import (DefaultScheduleStatus, DefaultSensorStatus, Definitions, RunRequest, ScheduleDefinition, asset,
                     define_asset_job, in_process_executor, sensor)

from aiml_assets.resources.audit import AuditLog
from aiml_assets.governance.lockdown import LaunchPolicy, locked
from aiml_assets.governance.signed_schedules import signed_requests, signed_schedule
from aiml_assets.resources.storage import LocalStorage
from aiml_assets.settings import LockdownSettings

CI = "svc-aiml-gitlab-prod"
_folder = Path(tempfile.mkdtemp(prefix="launch_probe_"))
_storage = LocalStorage(home=str(_folder), buckets={"audit": "audit"})
PROBE = {"release": "v1.4.2", "now": None, "grants": _folder / "break_glass.yaml", "storage": _storage,
         "audit": AuditLog.in_bucket(_storage)}
POLICY = LaunchPolicy(LockdownSettings(ci_principal=CI, tick_wait_seconds=0.5), release=lambda: PROBE["release"],
                      grants=PROBE["grants"], clock=lambda: PROBE["now"] or datetime.now(UTC))


@asset
def touched() -> int:
    return 1


probe_job_def = define_asset_job("probe_job", selection=[touched])


@sensor(job=probe_job_def, default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=1)
def probe_sensor():
    yield from signed_requests("prod", "sensor:probe_sensor", "probe_job", [RunRequest()], POLICY.lockdown,
                               datetime.now(UTC))


defs = Definitions(
    assets=[touched], jobs=[probe_job_def], sensors=[probe_sensor],
    schedules=[signed_schedule(ScheduleDefinition(name="probe_schedule", job=probe_job_def, cron_schedule="* * * * *",
                                                  default_status=DefaultScheduleStatus.RUNNING), "prod",
                               POLICY.lockdown)],
    executor=locked(in_process_executor, "prod", POLICY, PROBE["audit"], PROBE["storage"]),
)


def probe_job():
    return defs.resolve_job_def("probe_job")
