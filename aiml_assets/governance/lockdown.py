"""Prod lockdown: prod runs only what a schedule, a sensor, or the CI service principal under an approved change
request started. Anything else (a run launched by hand from the UI or the CLI, a backfill) is refused by the
executor before any step runs, with the reason in the run's failure.

Who launched a run is read from its tags: Dagster's daemon sets `dagster/schedule_name` and `dagster/sensor_name`,
and the GitLab prod job sets `aiml/requested_by` and `aiml/change_request`. OSS Dagster lets whoever can launch a
run set tags too, so this stops runs launched by accident or habit; it is not access control. That is the prod
webserver's (read-only, no launch permission for people) and the workspace's.
"""

from dagster import Executor, ExecutorDefinition

from aiml_assets.models.promotion import CHANGE_REQUEST
from aiml_assets.settings import LockdownSettings

UNATTENDED_TAGS = ("dagster/schedule_name", "dagster/sensor_name")
REQUESTED_BY_TAG, CHANGE_REQUEST_TAG = "aiml/requested_by", "aiml/change_request"


class ProdLocked(RuntimeError):
    """A run that prod must not execute; nothing ran."""


class ResourceOverrideRefused(RuntimeError):
    """A run whose config re-points where data goes or what records it; nothing ran."""


# Where data is read and written, and what records it: set per environment in code, never by a run's config (which
# whoever launches a run can write, and which would otherwise override these resources' settings)
GUARDED_RESOURCES = frozenset({"storage", "tables", "catalog", "audit", "release_manifest", "nexus", "mlflow"})


def overridden_resources(run_config: dict | None) -> list[str]:
    return sorted(set((run_config or {}).get("resources") or {}) & GUARDED_RESOURCES)


def refusal(tags: dict[str, str], lockdown: LockdownSettings) -> str | None:
    """Why a run with these tags must not run in a locked environment, or None if it may."""
    if any(tags.get(tag) for tag in UNATTENDED_TAGS):
        return None
    requested_by, change_request = tags.get(REQUESTED_BY_TAG, ""), tags.get(CHANGE_REQUEST_TAG, "").strip()
    if requested_by == lockdown.ci_principal:
        if CHANGE_REQUEST.fullmatch(change_request):
            return None
        return (f"{lockdown.ci_principal} launched it without an approved change request id "
                f"({CHANGE_REQUEST_TAG}={change_request!r}, expected CHG + 7 digits)")
    who = f"{REQUESTED_BY_TAG}={requested_by!r}" if requested_by else "no schedule, sensor or CI tags"
    return f"it was not started by a schedule, a sensor, or {lockdown.ci_principal} with a change request ({who})"


class _GuardedExecutor(Executor):
    def __init__(self, inner: Executor, lockdown: LockdownSettings | None, environment: str):
        self._inner, self._lockdown, self._environment = inner, lockdown, environment

    @property
    def retries(self):
        return self._inner.retries

    def execute(self, plan_context, execution_plan):
        run = plan_context.dagster_run
        if overrides := overridden_resources(run.run_config):
            raise ResourceOverrideRefused(f"run {run.run_id} of {run.job_name} refused before any step ran: its config "
                                          f"overrides the {', '.join(overrides)} resources, which only "
                                          f"resources/{self._environment}.yaml sets")
        reason = refusal(dict(run.tags), self._lockdown) if self._lockdown else None
        if reason:
            raise ProdLocked(f"{self._environment} is locked against runs launched by hand: run {run.run_id} of "
                             f"{run.job_name} refused before any step ran: {reason}")
        yield from self._inner.execute(plan_context, execution_plan)


def locked(inner: ExecutorDefinition, lockdown: LockdownSettings | None, environment: str) -> ExecutorDefinition:
    """`inner`, refusing before any step a run that overrides a guarded resource and, with a `lockdown`, a run that
    `refusal` names."""
    return ExecutorDefinition(
        name=inner.name,  # the same run config as the executor it wraps
        config_schema=inner.config_schema,
        requirements=inner.get_requirements,
        executor_creation_fn=lambda init: _GuardedExecutor(inner.executor_creation_fn(init), lockdown, environment),
        description=f"{inner.description or inner.name}; refuses runs that override where data goes"
        + ("; refuses runs not started by a schedule, a sensor or CI with a change request" if lockdown else ""),
    )
