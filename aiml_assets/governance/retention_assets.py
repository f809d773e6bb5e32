"""The retention purge as a daily asset with a check that proves it, and the bucket lifecycle job."""

from datetime import datetime, timedelta, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    job,
    op,
)

from aiml_assets.asset_tables import SCHEMA_OF_ROLE, table_name
from aiml_assets.governance.audit import actor
from aiml_assets.governance.lifecycle import LIFECYCLE_DRIFT, apply_lifecycle
from aiml_assets.governance.retention import cutoff, past_retention, purge
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings

GROUP = "governance"
PURGE_KEY = AssetKey(["governance", "retention_purge"])
PURGE = "purge"  # audit action
RESOURCES = {STEP_LAUNCHER_KEY, "storage", "tables", "catalog", "audit"}
LIFECYCLE_JOB = "bucket_lifecycle"


class PurgeConfig(Config):
    as_of: str | None = None  # local only: an ISO timestamp to purge as of (an injected clock); default: now


class ClockRefused(ValueError):
    """A purge as of another time than now outside local: it would purge too much, or prove too little."""


def _as_of(config: PurgeConfig, settings: Settings) -> datetime:
    if config.as_of is None:
        return datetime.now(timezone.utc)
    if not settings.is_local:
        raise ClockRefused(f"{PURGE_KEY.to_user_string()}: as_of={config.as_of!r} refused in {settings.environment}; "
                           "only a local purge may be run as of another time than now")
    moment = datetime.fromisoformat(config.as_of)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def retention_assets(settings: Settings) -> list:
    retention = settings.storage.retention_days

    @asset(
        key=PURGE_KEY, group_name=GROUP, required_resource_keys=RESOURCES, owners=["team:aiml"], kinds={"s3", "delta"},
        freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(days=2)),  # a stopped schedule shows
        description=f"Daily purge of the perishable buckets ({', '.join(settings.storage.perishable)}): every "
        f"object, partition, object version and Delta history entry (statistics included) written more than "
        f"{retention} days ago; a partition's age is its first write, which no rewrite restarts.",
    )
    def retention_purge(context: AssetExecutionContext, config: PurgeConfig) -> MaterializeResult:
        resources, now = context.resources, _as_of(config, settings)
        reports = [
            purge(resources.storage, resources.tables, resources.catalog, role=role, retention_days=retention,
                  now=now, run_id=context.run.run_id, log=context.log.info,
                  name_of=lambda key, role=role: table_name(settings, role, key)
                  if role in SCHEMA_OF_ROLE and key.isidentifier() else None)
            for role in settings.storage.perishable
        ]
        details = {report.role: {"partitions_deleted": report.partitions_deleted, "tables_removed": report.tables_removed,
                                 "versions_destroyed": report.versions_destroyed} for report in reports}
        resources.audit.record(PURGE, ", ".join(settings.storage.perishable), actor=actor(context),
                               environment=settings.environment, run_id=context.run.run_id,
                               details={"cutoff": cutoff(now, retention).isoformat(), **details})
        return MaterializeResult(metadata={
            "cutoff": MetadataValue.text(cutoff(now, retention).isoformat()),
            "versions_destroyed": MetadataValue.int(sum(r.versions_destroyed for r in reports)),
            "tables_removed": MetadataValue.json({r.role: r.tables_removed for r in reports}),
            "partitions_deleted": MetadataValue.json({r.role: r.partitions_deleted for r in reports}),
        })

    # storage only, so that it runs where the run does (not through the step launcher), with the instance's events
    @asset_check(asset=PURGE_KEY, name="nothing_past_retention", blocking=True, required_resource_keys={"storage"},
                 description="No object or object version written before the purge's cutoff remains in any "
                 "perishable bucket")
    def nothing_past_retention(context) -> AssetCheckResult:
        event = context.instance.get_latest_materialization_event(PURGE_KEY)
        if event is None:
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                                    description="no purge has run here yet: nothing proves the retention")
        limit = datetime.fromisoformat(event.asset_materialization.metadata["cutoff"].value)
        left = {role: past_retention(context.resources.storage, role, limit) for role in settings.storage.perishable}
        found = [f"{role}: {v.key}" + (f" (version {v.version_id})" if v.version_id else "")
                 for role, versions in left.items() for v in versions]
        metadata = {"cutoff": MetadataValue.text(limit.isoformat()), "past_retention": MetadataValue.int(len(found))}
        if found:
            message = f"{PURGE_KEY.to_user_string()}: {len(found)} object versions written before {limit:%Y-%m-%d} " \
                      f"remain: " + "; ".join(found[:10])
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=message,
                                    metadata=metadata)
        return AssetCheckResult(passed=True, metadata=metadata)

    return [retention_purge, nothing_past_retention]


def lifecycle_job(settings: Settings):
    @op(required_resource_keys={"storage", "audit"})
    def apply_and_verify_lifecycle(context) -> None:
        found = apply_lifecycle(context.resources.storage, settings, log=context.log.info)
        for bucket, drift in found.items():
            if drift != "as deployed":  # changed outside deployments/s3: put back, and on record
                context.log.warning(f"{bucket}: {drift}; restored")
                context.resources.audit.record(LIFECYCLE_DRIFT, bucket, actor=actor(context),
                                               environment=settings.environment, run_id=context.run.run_id,
                                               details={"drift": drift})
        context.add_output_metadata({"found_before_applying": MetadataValue.json(found)})

    @job(name=LIFECYCLE_JOB, description="Apply deployments/s3's versioning and lifecycle rules to the perishable "
         "buckets and read them back; fails on any difference.")
    def bucket_lifecycle():
        apply_and_verify_lifecycle()

    return bucket_lifecycle
