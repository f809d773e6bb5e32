"""The retention purge as a daily asset whose step proves it (its blocking check), and the bucket posture job
(`bucket_lifecycle`: lifecycle rules and the rest of each bucket's posture)."""

from datetime import datetime, timedelta, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    asset,
    job,
    op,
)

from aiml_assets.asset_tables import SCHEMA_OF_ROLE, table_name
from aiml_assets.governance.bucket_posture import POSTURE_DRIFT, apply_posture
from aiml_assets.governance.retention import cutoff, past_retention, purge
from aiml_assets.keys import GOVERNANCE_GROUP as GROUP, PURGE_KEY, StepLauncherParam
from aiml_assets.resources.audit import AuditLog, actor_of
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.settings import Settings

PURGE = "purge"  # audit action
PROOF = "nothing_past_retention"  # the purge's blocking check
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


def proof_of_retention(storage: Storage, roles: list[str], limit: datetime) -> AssetCheckResult:
    """The purge's check: no object version written before `limit` is left in any of the `roles`' buckets."""
    found = [f"{role}: {v.key}" + (f" (version {v.version_id})" if v.version_id else "")
             for role in roles for v in past_retention(storage, role, limit)]
    metadata = {"cutoff": MetadataValue.text(limit.isoformat()), "past_retention": MetadataValue.int(len(found))}
    if not found:
        return AssetCheckResult(check_name=PROOF, asset_key=PURGE_KEY, passed=True, metadata=metadata)
    return AssetCheckResult(check_name=PROOF, asset_key=PURGE_KEY, passed=False, severity=AssetCheckSeverity.ERROR,
                            metadata=metadata, description=f"{PURGE_KEY.to_user_string()}: {len(found)} object "
                            f"versions written before {limit:%Y-%m-%d} remain: " + "; ".join(found[:10]))


def retention_assets(settings: Settings) -> list:
    retention, perishable = settings.storage.retention_days, settings.storage.perishable

    @asset(
        key=PURGE_KEY, group_name=GROUP, owners=["team:aiml"], kinds={"s3", "delta"},
        freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(days=2)),  # a stopped schedule shows
        description=f"Daily purge of the perishable buckets ({', '.join(perishable)}): every "
        f"object, partition, object version and Delta history entry (statistics included) written more than "
        f"{retention} days ago; a partition's age is its first write, which no rewrite restarts.",
        check_specs=[AssetCheckSpec(PROOF, asset=PURGE_KEY, blocking=True, description="No object or object "
                                    "version written before the purge's cutoff remains in any perishable bucket "
                                    "(listed by the purge's own step, after it)")],
    )
    def retention_purge(context: AssetExecutionContext, config: PurgeConfig, pyspark_step_launcher: StepLauncherParam,
                        storage: Storage, tables: DeltaTables, catalog: Catalog, audit: AuditLog):
        now, run_id = _as_of(config, settings), context.run.run_id
        limit = cutoff(now, retention)
        reports = [
            purge(storage, tables, catalog, role=role, retention_days=retention, now=now, run_id=run_id,
                  log=context.log.info, name_of=lambda key, role=role: table_name(settings, role, key)
                  if role in SCHEMA_OF_ROLE and key.isidentifier() else None)
            for role in perishable
        ]
        details = {r.role: {"partitions_deleted": r.partitions_deleted, "tables_removed": r.tables_removed,
                            "versions_destroyed": r.versions_destroyed} for r in reports}
        audit.record(PURGE, ", ".join(perishable), actor=actor_of(context.run.tags), environment=settings.environment,
                     run_id=run_id, details={"cutoff": limit.isoformat(), **details})
        proof = proof_of_retention(storage, perishable, limit)
        yield MaterializeResult(check_results=[proof], metadata={
            "cutoff": MetadataValue.text(limit.isoformat()),
            "versions_destroyed": MetadataValue.int(sum(r.versions_destroyed for r in reports)),
            "tables_removed": MetadataValue.json({r.role: r.tables_removed for r in reports}),
            "partitions_deleted": MetadataValue.json({r.role: r.partitions_deleted for r in reports}),
        })
        if not proof.passed:
            raise Failure(proof.description)

    return [retention_purge]


def lifecycle_job(settings: Settings):
    @op
    def apply_and_verify_posture(context: OpExecutionContext, storage: Storage, audit: AuditLog) -> None:
        reports = apply_posture(storage, settings, log=context.log.info)
        for report in (r for r in reports if r.drift):  # changed outside deployments/s3: put back, and on record
            context.log.warning(f"{report.bucket}: {'; '.join(report.drift)}")
            audit.record(POSTURE_DRIFT, report.bucket, actor=actor_of(context.run.tags),
                         environment=settings.environment, run_id=context.run.run_id,
                         details={"drift": "; ".join(report.drift), "refused": "; ".join(report.refused)})
        found = MetadataValue.json({r.bucket: "; ".join(r.drift) or "as deployed" for r in reports})
        if refused := [f"{r.bucket}: {'; '.join(r.refused)}" for r in reports if r.refused]:
            raise Failure("bucket posture not put right (the job must not change these by itself): "
                          + " | ".join(refused), metadata={"found_before_applying": found})
        context.add_output_metadata({"found_before_applying": found})

    @job(name=LIFECYCLE_JOB, description="Apply each bucket's posture (deployments/s3: SSE-KMS, public access "
         "blocked, TLS- and roles-only policy, versioning, lifecycle rules) and read it back; audits what drifted; "
         "fails on any difference left, and on an audit bucket whose Object Lock is off, not in compliance mode or "
         "shorter than the env file states.")
    def bucket_lifecycle():
        apply_and_verify_posture()

    return bucket_lifecycle
