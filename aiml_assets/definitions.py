"""The aiml_assets code location. `AIML_ENV` picks the environment; this module builds its Definitions.

The graph reads like the HLD's data flow: EDP sources -> lab features -> training sets (-> models -> scores -> CDP,
as those components land). Which parts an environment runs is its env file's `asset_groups`.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, JobDefinition, define_asset_job, in_process_executor, multiprocess_executor

from aiml_assets.features.assets import lab_feature_assets
from aiml_assets.models.assets import GROUP as MODEL_GROUP
from aiml_assets.models.assets import model_assets
from aiml_assets.models.promotion import promotion_job
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import Settings, load_settings
from aiml_assets.sources.edp import EDP_CHECKS, edp_source_products

MAIN_JOB = "main"
MODELS_JOB = "train_models"


def graph_for(settings: Settings) -> list:
    components = {
        "edp_sources": lambda: [edp_source_products, *EDP_CHECKS],
        "lab_features": lambda: lab_feature_assets(settings),
        "model_versions": lambda: model_assets(settings),
    }
    return [node for group in settings.asset_groups for node in components[group]()]


def build_definitions(env: str | None = None) -> Definitions:
    settings = load_settings(env)
    # Jobs run one partitions definition each: the main job covers sources and snapshot-partitioned features,
    # the models job the product-partitioned models (one run per product, so one product's gate failing does not
    # stop another's). `aiml run-local` runs both.
    models = AssetSelection.groups(MODEL_GROUP)
    main_job = define_asset_job(
        MAIN_JOB,
        selection=AssetSelection.all(include_sources=True) - models,
        description="Observe the EDP sources, check them, and materialize the features of this environment.",
    )
    jobs = [main_job]
    if MODEL_GROUP in settings.asset_groups:
        jobs.append(define_asset_job(
            MODELS_JOB, selection=models,
            description="Per product: train, gate (challenger alias on pass), publish the binary to Nexus.",
        ))
        jobs.append(promotion_job(settings))  # promotes from the registry these environments train into
    return Definitions(
        assets=graph_for(settings),  # asset checks are assets definitions too
        resources=build_resources(settings),
        jobs=jobs,
        # Locally all steps share one in-process SparkSession (starting one costs 15-30 s); remotely each step
        # is its own Databricks run.
        executor=in_process_executor if settings.is_local else multiprocess_executor,
    )


defs = build_definitions()


def main_job_for_current_env() -> JobDefinition:
    """Module-level, so that `reconstructable` can rebuild the job in another process."""
    return defs.resolve_job_def(MAIN_JOB)


def models_job_for_current_env() -> JobDefinition:
    return defs.resolve_job_def(MODELS_JOB)
