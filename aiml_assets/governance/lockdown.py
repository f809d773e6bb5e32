"""Every environment's executor refuses, before any step, a run whose config sets anything but declared op config.
A locked environment's (UAT, prod) also refuses a run unless the instance's records and a key prove who launched
it: a schedule or sensor tick of this instance that lists the run (launch_provenance) and that schedule's or sensor's
signature (signed_schedules), or a launch CI signed under an approved change for this release (launch_signature,
ci_launch), for its whole job and nothing else; each signature runs once, which a create-if-absent object per
signature in the audit bucket remembers. Or a break-glass grant in force (break_glass). Re-executions and backfills
prove none of these, so they are refused. The reason is in the run's failure; every refusal, signed run and
break-glass run is in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, Executor, ExecutorDefinition

from aiml_assets.governance import break_glass
from aiml_assets.governance.launch_provenance import claimed_instigator, tick_refusal
from aiml_assets.governance.launch_signature import (CHANGE_REQUEST_TAG, CI_ORIGIN, REQUESTED_BY_TAG, SIGNATURE_TAG,
                                                     SIGNED_TAGS, signature_refusal, signing_key)
from aiml_assets.governance.registers import RegisterError
from aiml_assets.provenance import shipped_release
from aiml_assets.resources.audit import AUDIT_ROLE, AuditLog, actor_of
from aiml_assets.resources.storage import Storage
from aiml_assets.settings import LockdownSettings

ALLOWED_RUN_CONFIG = frozenset({"ops"})  # the declared run parameters: the assets' and ops' Config
RUN_REFUSED, RUN_ACCEPTED, BREAK_GLASS_RUN = "run_refused", "run_accepted", "break_glass_run"  # audit actions
SIGNATURE_LEDGER = "launch_signatures"  # in the audit bucket: one object per signature ever accepted


class ProdLocked(RuntimeError):
    """A run that a locked environment must not execute; nothing ran."""


class ResourceOverrideRefused(RuntimeError):
    """A run whose config sets what only the environment's code sets; nothing ran."""


def run_config_refusal(run_config: dict | None) -> str | None:
    """Why a run's config must not run: it sets resources, executor, loggers or anything else but op config."""
    set_keys = sorted(key for key, value in (run_config or {}).items() if key not in ALLOWED_RUN_CONFIG and value)
    if not set_keys:
        return None
    resources = sorted((run_config or {}).get("resources") or {})
    return (f"its config sets {', '.join(set_keys)}" + (f" ({', '.join(resources)})" if resources else "")
            + "; a run may set only op config (ops:), the rest only the environment's code sets")


@dataclass(frozen=True)
class LaunchPolicy:
    """What a locked environment accepts; the defaults are the deployment's, tests replace the clock and files."""

    lockdown: LockdownSettings
    release: Callable[[], str | None] = shipped_release
    grants: Path = break_glass.REGISTER
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def signature_refusal(self, environment: str, origin: str, run: DagsterRun, now: datetime) -> str | None:
        ci = origin == CI_ORIGIN
        term = (timedelta(minutes=self.lockdown.max_signature_minutes) if ci
                else timedelta(hours=self.lockdown.schedule_signature_hours))
        return signature_refusal(
            environment=environment, origin=origin, job=run.job_name, tags=dict(run.tags), run_config=run.run_config,
            key=signing_key(self.lockdown.signing_key_env), release=self.release() if ci else None, now=now,
            max_term=term)


# What Dagster itself adds to a run it launches for a schedule, a sensor or `dagster job launch`; any other tag on a
# signed run (priority, retries, concurrency, partition ranges or dimensions, ...) changes what or how it runs
# without the signature covering it.
DAGSTER_LAUNCH_TAGS = frozenset({
    "dagster/code_location", ".dagster/repository", "dagster/schedule_name", "dagster/sensor_name", "dagster/tick",
    "dagster/partition_set", ".dagster/scheduled_execution_time", "dagster/run_key", ".dagster/grpc_info",
    ".dagster/run_worker", "dagster/image", "dagster/user",
})


def shape_refusal(run: DagsterRun, plan) -> str | None:
    """Why a signed run is not the whole job the signature names: a signature covers no selection and no tag but its
    own and Dagster's launch tags."""
    selections = {"assets": run.asset_selection, "asset checks": run.asset_check_selection,
                  "ops": run.resolved_op_selection or run.op_selection,
                  "steps": set(plan.step_keys_to_execute) != {step.key for step in plan.steps} or None}
    if chosen := [name for name, selection in selections.items() if selection is not None]:
        return f"it selects only some {', '.join(chosen)} of its job; a signed launch runs its whole job"
    if extra := sorted(set(run.tags) - SIGNED_TAGS - DAGSTER_LAUNCH_TAGS):
        return f"it carries tags its signature does not cover: {', '.join(extra)}"
    return None


@dataclass(frozen=True)
class Verdict:
    refusal: str | None
    origin: str = ""  # ci, schedule:<name>, sensor:<name>, break_glass
    change_request: str | None = None
    details: dict = field(default_factory=dict)


def launch_verdict(instance: DagsterInstance, run: DagsterRun, policy: LaunchPolicy, environment: str) -> Verdict:
    """Whether the run's launch is proven, before the replay check (which needs the audit log)."""
    tags, now = dict(run.tags), policy.clock()
    if grant_id := tags.get(break_glass.GRANT_TAG, "").strip():
        try:
            grant, reason = break_glass.grant_refusal(grant_id, tags, environment, now, policy.grants)
        except RegisterError as exc:
            return Verdict(f"break-glass grant {grant_id!r} refused: {exc}", "break_glass")
        details = {"grant": grant.id, "incident": grant.incident, "reason": grant.reason} if grant else {}
        return Verdict(reason, "break_glass", details=details)
    if parent := run.parent_run_id:
        return Verdict(f"it re-executes run {parent}; re-executions prove no schedule, sensor or CI launch, and CI "
                       "re-runs a partition as a new signed launch")
    if backfill := tags.get("dagster/backfill"):
        return Verdict(f"it is part of backfill {backfill}; backfills in {environment} are CI's signed launches")
    if claimed := claimed_instigator(tags):
        origin = f"{claimed[1].value.lower()}:{claimed[0]}"
        reason = tick_refusal(instance, run, policy.lockdown.tick_wait_seconds) or policy.signature_refusal(
            environment, origin, run, now)
        return Verdict(reason, origin)
    if SIGNATURE_TAG in tags or tags.get(REQUESTED_BY_TAG) == policy.lockdown.ci_principal:
        ci, change_request = policy.lockdown.ci_principal, tags.get(CHANGE_REQUEST_TAG)
        if tags.get(REQUESTED_BY_TAG) != ci:
            return Verdict(f"it carries a launch signature but {REQUESTED_BY_TAG} is not {ci}", CI_ORIGIN)
        reason = policy.signature_refusal(environment, CI_ORIGIN, run, now)
        return Verdict(reason and f"{ci}'s launch refused: {reason}", CI_ORIGIN, change_request)
    who = f"{REQUESTED_BY_TAG}={tags[REQUESTED_BY_TAG]!r}" if tags.get(REQUESTED_BY_TAG) else "no launch tags"
    return Verdict(f"no schedule or sensor tick of this instance, signed CI launch or break-glass grant started it "
                   f"({who})")


class _GuardedExecutor(Executor):
    def __init__(self, inner: Executor, environment: str, policy: LaunchPolicy | None, audit: AuditLog | None,
                 storage: Storage | None):
        self._inner, self._environment, self._policy = inner, environment, policy
        self._audit, self._storage = audit, storage

    @property
    def retries(self):
        return self._inner.retries

    def execute(self, plan_context, execution_plan):
        run = plan_context.dagster_run
        refused = f"run {run.run_id} of {run.job_name} refused before any step ran"
        if self._audit is not None:  # an executor's audit log is not set up by Dagster: give it the run's instance
            self._audit = self._audit.for_instance(plan_context.instance)  # (one executor per run)
        if reason := run_config_refusal(run.run_config):
            unrecorded = self._record(RUN_REFUSED, run, details={"reason": reason})
            raise ResourceOverrideRefused(f"{refused}: {reason}{unrecorded}")
        if self._policy is not None:
            verdict = launch_verdict(plan_context.instance, run, self._policy, self._environment)
            if verdict.refusal is None and verdict.origin != "break_glass":
                shape = shape_refusal(run, execution_plan)
                verdict = Verdict(shape, verdict.origin, verdict.change_request) if shape else self._first_use(run,
                                                                                                             verdict)
            if verdict.refusal:
                unrecorded = self._record(RUN_REFUSED, run, verdict.change_request,
                                          {"reason": verdict.refusal, "origin": verdict.origin, **verdict.details})
                raise ProdLocked(f"{self._environment} is locked against runs launched by hand: {refused}: "
                                 f"{verdict.refusal}{unrecorded}")
            action = BREAK_GLASS_RUN if verdict.origin == "break_glass" else RUN_ACCEPTED
            details = {**verdict.details, "origin": verdict.origin}
            if unrecorded := self._record(action, run, verdict.change_request, details):  # audited, or nothing runs
                raise ProdLocked(f"{refused}: its acceptance must be audited first{unrecorded}")
        yield from self._inner.execute(plan_context, execution_plan)

    def _first_use(self, run: DagsterRun, verdict: Verdict) -> Verdict:
        """`verdict`, or a refusal if its signature was used before: a signed launch runs once. The ledger is a
        create-if-absent object per signature in the audit bucket (run storage can be edited; of two runs racing
        with one signature, exactly one creates it)."""
        signature = run.tags[SIGNATURE_TAG]
        key = f"{SIGNATURE_LEDGER}/{self._environment}/{signature}"
        try:
            if self._storage.create(AUDIT_ROLE, key, run.run_id.encode()):
                return verdict
            first = self._storage.get(AUDIT_ROLE, key).decode()
        except Exception as exc:  # noqa: BLE001 (no record of first use, no run)
            return Verdict(f"its first use could not be recorded: {type(exc).__name__}: {exc}", verdict.origin,
                           verdict.change_request)
        return Verdict(f"its launch signature was used before, by run {first}: a signed launch runs once",
                       verdict.origin, verdict.change_request)

    def _record(self, action: str, run: DagsterRun, change_request: str | None = None,
                details: dict | None = None) -> str:
        """Append the audit event; "" once recorded, else why it could not be (said in the refusal, never lost)."""
        if self._audit is None:
            return ""
        try:
            self._audit.record(action, run.job_name, actor=actor_of(run.tags), environment=self._environment,
                               run_id=run.run_id, change_request=change_request, details=details)
        except Exception as exc:  # noqa: BLE001 (any failure to record is reported with the refusal)
            return f" (and the audit log could not record it: {type(exc).__name__}: {exc})"
        return ""


def locked(inner: ExecutorDefinition, environment: str, policy: LaunchPolicy | None = None,
           audit: AuditLog | None = None, storage: Storage | None = None) -> ExecutorDefinition:
    """`inner`, refusing before any step a run whose config sets more than op config and, with a `policy`, a run
    whose launch `launch_verdict` does not accept or whose signature ran before (the audit bucket remembers)."""
    if policy is not None and (audit is None or storage is None):
        raise ValueError(f"{environment}: a locked executor needs the audit log and the audit bucket's storage")
    return ExecutorDefinition(
        name=inner.name,  # the same run config as the executor it wraps
        config_schema=inner.config_schema,
        requirements=inner.get_requirements,
        executor_creation_fn=lambda init: _GuardedExecutor(inner.executor_creation_fn(init), environment, policy,
                                                           audit, storage),
        description=f"{inner.description or inner.name}; refuses runs whose config sets more than op config"
        + ("; refuses runs no tick of this instance, signed CI launch or break-glass grant started" if policy else ""),
    )
