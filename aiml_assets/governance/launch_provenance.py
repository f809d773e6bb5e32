"""Did this instance's daemon launch the run? A run that claims a schedule or a sensor (its `dagster/schedule_name`
or `dagster/sensor_name` tag, which anyone launching can type, and which a re-execution copies) is the daemon's only
if the tick it names (`dagster/tick`) lists its run id: the scheduler adds each run it submitted to the tick, the
sensor reserves its run ids on the tick before it creates them. No launch path of the webserver, the CLI or the
GraphQL API writes a tick, but whoever holds the instance's database credentials can: so the tick proves the
daemon's hand only together with the schedule's or sensor's own signature (launch_signature, signed_schedules).
"""

from __future__ import annotations

import re
import time

from dagster import DagsterInstance, DagsterRun
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

CLAIMS = (("dagster/schedule_name", InstigatorType.SCHEDULE), ("dagster/sensor_name", InstigatorType.SENSOR))
TICK_TAG = "dagster/tick"


def claimed_instigator(tags: dict[str, str]) -> tuple[str, InstigatorType] | None:
    return next(((tags[tag].strip(), kind) for tag, kind in CLAIMS if (tags.get(tag) or "").strip()), None)


def tick_refusal(instance: DagsterInstance, run: DagsterRun, wait_seconds: float, poll_seconds: float = 1.0) -> str:
    """Why the tick that `run` names did not launch it, or "" if it did. A schedule's tick lists its runs once it has
    submitted them all, so a run waits up to `wait_seconds` while its tick is still being evaluated."""
    name, kind = claimed_instigator(dict(run.tags))
    what = f"{kind.value.lower()} {name}"
    tick_id = run.tags.get(TICK_TAG, "")
    if not re.fullmatch(r"[0-9]{1,18}", tick_id):
        return f"it claims {what} but names no tick of it ({TICK_TAG})"
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            tick = instance.schedule_storage.get_tick(int(tick_id))
        except DagsterInvariantViolationError:
            return f"it claims {what}, but tick {tick_id} is not on this instance"
        except Exception as exc:  # noqa: BLE001 (storage errors refuse, with the reason, like a missing tick)
            return f"it claims {what}, but tick {tick_id} could not be read: {type(exc).__name__}: {exc}"
        if tick.instigator_name != name or tick.instigator_type != kind:
            return f"it claims {what}, but tick {tick_id} is {tick.instigator_type.value.lower()} " \
                   f"{tick.instigator_name}'s"
        if run.run_id in {*tick.run_ids, *(tick.tick_data.reserved_run_ids or [])}:
            return ""
        if tick.status != TickStatus.STARTED or time.monotonic() >= deadline:
            return f"it claims {what}, but {name}'s tick {tick_id} did not launch run {run.run_id}"
        time.sleep(poll_seconds)
