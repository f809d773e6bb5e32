"""Schedules and sensors of a locked environment sign what they launch (launch_signature), in the code server that
evaluates them and holds the key. A signed request's run key is its signature over a fresh nonce, so the scheduler
adopts no run made before its tick (Dagster takes an existing run with the schedule's tags and run key as the tick's
own), and the UI's preview of a future tick, which evaluates the schedule too, reveals no signature a tick will use."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason

from aiml_assets.governance.launch_signature import signed_launch, signing_key
from aiml_assets.settings import LockdownSettings


def signed_requests(environment: str, origin: str, job: str, requests: Iterable[RunRequest],
                    lockdown: LockdownSettings, now: datetime) -> Iterator[RunRequest]:
    """`requests`, each signed with a fresh nonce; its run key is its signature, which nobody can know before this
    evaluation (a preview of a tick in the UI signs with another nonce)."""
    key = signing_key(lockdown.signing_key_env)
    if key is None:  # the tick fails, visibly, rather than launch runs the executor will refuse
        raise RuntimeError(f"{origin}: {lockdown.signing_key_env} is not set, so its runs cannot be signed")
    for request in requests:
        launch = signed_launch(environment, origin, request.job_name or job, request.partition_key or "",
                               request.run_config, valid_for=timedelta(hours=lockdown.schedule_signature_hours),
                               nonce=secrets.token_hex(16), now=now)
        yield request.with_replaced_attrs(run_key=launch.signature(key), tags={**request.tags, **launch.tags(key)})


def signed_schedule(schedule: ScheduleDefinition, environment: str, lockdown: LockdownSettings) -> ScheduleDefinition:
    """`schedule`, its run requests signed; valid from the scheduled time for the lockdown's schedule term, so a
    catch-up tick later than that is refused at its run."""
    origin = f"schedule:{schedule.name}"

    def evaluate(context: ScheduleEvaluationContext):
        evaluated = schedule.evaluate_tick(context)
        if not evaluated.run_requests:
            yield SkipReason(evaluated.skip_message)
            return
        yield from signed_requests(environment, origin, schedule.job_name, evaluated.run_requests, lockdown,
                                   context.scheduled_execution_time)

    return ScheduleDefinition(name=schedule.name, cron_schedule=schedule.cron_schedule, job=schedule.job,
                              execution_fn=evaluate, execution_timezone=schedule.execution_timezone,
                              default_status=schedule.default_status, description=schedule.description)
