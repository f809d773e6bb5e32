"""The aiml_assets code location. `AIML_ENV` picks the environment; this module builds its Definitions.

The graph reads like the HLD's data flow: EDP sources -> lab features -> training sets -> models -> Nexus binaries,
and EDP sources -> scoring features -> deployed models -> scores -> CDP. Which parts an environment runs is its env
file's `asset_groups`.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from dagster import (
    AssetSelection,
    AssetSpec,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    Definitions,
    ExecutorDefinition,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    StaticPartitionsDefinition,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
)

from aiml_assets.keys import (
    BINARY_KEY, EDP_GROUP, FEATURES_GROUP, GOVERNANCE_GROUP, INFERENCE_GROUP, MODEL_GROUP, PARALLEL_RUN_GROUP,
)
from aiml_assets.governance.audit_trail import audit_trail_sensor
from aiml_assets.resources.egress import check_lineage, check_own_buckets
from aiml_assets.governance.erasure import erasure_job
from aiml_assets.governance.lockdown import LaunchPolicy, locked
from aiml_assets.governance.signed_schedules import signed_schedule
from aiml_assets.governance.retention_assets import lifecycle_job, retention_assets
from aiml_assets.features.assets import lab_feature_assets
from aiml_assets.inference.assets import inference_assets, scoring_partitions
from aiml_assets.inference.parallel_run import parallel_run_assets
from aiml_assets.models.assets import model_assets
from aiml_assets.models.promotion import promotion_job
from aiml_assets.publication.cdp import cdp_assets
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import (
    ENVIRONMENTS, RESOURCES_DIR, Settings, aiml_home, current_env, load_settings, parse_settings,
)
from aiml_assets.sources.edp import edp_source_products_for

MAIN_JOB = "main"
MODELS_JOB = "train_models"
SCORING_JOB = "daily_scoring"
RETENTION_JOB = "retention"


def graph_for(settings: Settings) -> list:
    components = {
        "edp_sources": lambda: [edp_source_products_for(settings)],
        "lab_features": lambda: lab_feature_assets(settings),
        "model_versions": lambda: model_assets(settings),
        "prod_inference": lambda: inference_assets(settings),
        "uat_parallel_run": lambda: parallel_run_assets(settings),
        "cdp_publication": lambda: cdp_assets(settings),
    }
    nodes = [node for group in settings.asset_groups for node in components[group]()]
    if "prod_inference" in settings.asset_groups and "model_versions" not in settings.asset_groups:
        nodes.append(lab_model_binaries(settings))
    if settings.storage.perishable:
        nodes.extend(retention_assets(settings))
    return nodes


def lab_model_binaries(settings: Settings) -> AssetSpec:
    """Where UAT and prod get their models: the lab's Nexus binaries, external here (they arrive only through a
    promotion's release manifest), so that the lineage reads on from the lab to the CDP."""
    return AssetSpec(BINARY_KEY, group_name=MODEL_GROUP, kinds={"nexus"}, owners=["team:aiml"],
                     partitions_def=StaticPartitionsDefinition(settings.products),
                     description="Model binaries published to Nexus by the lab (materialized there, not here); this "
                     "environment deploys the versions its release manifest names.")


def daily_scoring_schedule(job, partitions: DailyPartitionsDefinition,
                           status: DefaultScheduleStatus) -> ScheduleDefinition:
    """05:00 UK time (the partitions' timezone), scoring the day's partition (end_offset=1): published before the
    contract's 07:00. A plain schedule rather than Dagster's partitioned-job builder, so a locked one can be signed."""
    def the_days_partition(context) -> RunRequest:
        day = context.scheduled_execution_time.astimezone(ZoneInfo(partitions.timezone)).date()
        return RunRequest(partition_key=day.strftime(partitions.fmt))

    return ScheduleDefinition(name=f"{job.name}_schedule", job=job, cron_schedule="0 5 * * *",
                              execution_timezone=partitions.timezone, default_status=status,
                              execution_fn=the_days_partition)


def executor_for(settings: Settings, resources: dict | None = None) -> ExecutorDefinition:
    # Locally all steps share one in-process SparkSession (starting one costs 15-30 s); remotely each step is its
    # own Databricks run. Every environment refuses runs whose config sets more than op config; a locked one (UAT,
    # prod) also runs nobody can prove were launched by its daemon, by CI or under break-glass, before any step.
    chosen = in_process_executor if settings.is_local else multiprocess_executor
    policy = LaunchPolicy(settings.lockdown) if settings.lockdown else None
    resources = resources or {}
    return locked(chosen, settings.environment, policy, resources.get("audit"), resources.get("storage"))


def build_definitions(env: str | None = None, settings: Settings | None = None) -> Definitions:
    """The Definitions of `env` (default: AIML_ENV), or of `settings` as given (tests vary a setting this way)."""
    settings = settings or load_settings(env)
    others = {other: parse_settings(RESOURCES_DIR / f"{other}.yaml").storage.buckets for other in ENVIRONMENTS}
    check_own_buckets(settings.environment, settings.storage.buckets, others)
    # Jobs run one partitions definition each: the main job covers sources and snapshot-partitioned features,
    # the models job the product-partitioned model family (every selected product in one step, one product's
    # failure its own), the scoring job the daily-partitioned scores and CDP. `aiml run-local` runs all three.
    # Remotely every step is a Databricks run: test_cluster_starts.py holds each job's budget.
    models = AssetSelection.groups(MODEL_GROUP)
    scoring = AssetSelection.groups(INFERENCE_GROUP, PARALLEL_RUN_GROUP)
    main_job = define_asset_job(
        MAIN_JOB,
        # by group, not "all minus": in UAT and prod the lab's model binaries are external assets, not runnable
        selection=AssetSelection.groups(EDP_GROUP, FEATURES_GROUP, include_sources=True),
        description="Observe the EDP sources, check them, and materialize the features of this environment.",
    )
    jobs, schedules = [main_job, erasure_job(settings)], []
    # Remote environments run these with no human in the loop; locally the schedules are there to switch on.
    unattended = DefaultScheduleStatus.RUNNING if not settings.is_local else DefaultScheduleStatus.STOPPED
    if settings.storage.perishable:
        retention = define_asset_job(RETENTION_JOB, selection=AssetSelection.groups(GOVERNANCE_GROUP),
                                     description="Purge the perishable buckets of everything past retention, "
                                     "and prove it.")
        jobs.append(retention)
        schedules.append(ScheduleDefinition(job=retention, cron_schedule="0 2 * * *",
                                            execution_timezone="Europe/London", default_status=unattended))
    if settings.storage.kind == "s3":  # every bucket's posture, prod's (permanent, no lifecycle rules) too
        lifecycle = lifecycle_job(settings)
        jobs.append(lifecycle)
        schedules.append(ScheduleDefinition(job=lifecycle, cron_schedule="30 1 * * *",
                                            execution_timezone="Europe/London", default_status=unattended))
    if "prod_inference" in settings.asset_groups:
        scoring_job = define_asset_job(
            SCORING_JOB, selection=scoring,
            description="Score every customer with the deployed models for the day"
            + ("; publish the CDP" if "cdp_publication" in settings.asset_groups else "")
            + ("; compare champion and challenger side by side" if "uat_parallel_run" in settings.asset_groups else ""),
        )
        jobs.append(scoring_job)
        schedules.append(daily_scoring_schedule(scoring_job, scoring_partitions(settings), unattended))
    if MODEL_GROUP in settings.asset_groups:
        jobs.append(define_asset_job(
            MODELS_JOB, selection=models,
            description="Every selected product in one step (a single-run backfill over the products): train on the "
            "executors, gate (challenger alias on pass), publish the binary to Nexus; one product's failure is its own.",
        ))
        jobs.append(promotion_job(settings))  # promotes from the registry these environments train into
    if settings.lockdown:  # what a locked environment's schedules launch carries their signature
        schedules = [signed_schedule(schedule, settings.environment, settings.lockdown) for schedule in schedules]
    resources = build_resources(settings)
    definitions = Definitions(
        assets=graph_for(settings),  # asset checks are assets definitions too
        resources=resources,
        jobs=jobs,
        schedules=schedules,
        sensors=[audit_trail_sensor(settings)],
        executor=executor_for(settings, resources),
    )
    check_lineage(definitions.resolve_asset_graph(), allowed={BINARY_KEY})
    return definitions


defs = build_definitions()
_built = {(current_env(), aiml_home()): defs}


def definitions_for_current_env() -> Definitions:
    """The Definitions of the environment as it is now (AIML_ENV, AIML_HOME): `defs`, unless either changed since
    this module was imported (a test's own AIML home); built once per environment and home."""
    key = (current_env(), aiml_home())
    if key not in _built:
        _built[key] = build_definitions()
    return _built[key]


def main_job_for_current_env() -> JobDefinition:
    """Module-level, so that `reconstructable` can rebuild the job in another process."""
    return definitions_for_current_env().resolve_job_def(MAIN_JOB)


def models_job_for_current_env() -> JobDefinition:
    return definitions_for_current_env().resolve_job_def(MODELS_JOB)


def scoring_job_for_current_env() -> JobDefinition:
    return definitions_for_current_env().resolve_job_def(SCORING_JOB)
