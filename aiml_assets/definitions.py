"""The aiml_assets code location. `AIML_ENV` picks the environment; this module builds its Definitions."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, JobDefinition, define_asset_job

from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from aiml_assets.sources.edp import edp_source_products

MAIN_JOB = "main"


def build_definitions(env: str | None = None) -> Definitions:
    settings = load_settings(env)
    main_job = define_asset_job(
        MAIN_JOB,
        selection=AssetSelection.all(include_sources=True),
        description="Observe the EDP sources and materialize every asset of this environment.",
    )
    return Definitions(
        assets=[edp_source_products],
        resources=build_resources(settings),
        jobs=[main_job],
    )


defs = build_definitions()


def main_job_for_current_env() -> JobDefinition:
    """Module-level, so that `reconstructable` can rebuild the job in another process."""
    return defs.resolve_job_def(MAIN_JOB)
