"""A lab job for test_step_launcher: one small Spark asset behind the project's own Databricks step launcher.

Module level so `reconstructable(lab_launcher_job)` can rebuild the job, which the step launcher needs: the "remote"
step (run in-process by the test's fake Databricks) re-imports this module from the pickled step run ref.
"""

# No `from __future__ import annotations` here: Dagster checks the `context` annotation when the asset is decorated.
import os

from dagster import AssetExecutionContext, Definitions, MaterializeResult, asset, define_asset_job

from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY, build_resources
from aiml_assets.resources.spark import SparkResource
from aiml_assets.settings import load_settings

JOB_NAME = "lab_step_launcher_probe"
STEP_LOG_PREFIX = "launcher probe counted"


@asset(required_resource_keys={STEP_LAUNCHER_KEY, "spark"}, group_name="step_launcher_probe")
def launcher_probe(context: AssetExecutionContext) -> MaterializeResult:
    """Counts the even ids of a small Spark range and reports the environment the step ran with."""
    spark = context.resources.spark.get_session()
    evens = spark.range(1000).filter("id % 2 = 0").count()
    context.log.info(f"{STEP_LOG_PREFIX} {evens} even ids with Spark {spark.version}")
    return MaterializeResult(
        metadata={
            "row_count": evens,
            "aiml_env": os.environ.get("AIML_ENV", "<unset>"),
            "nexus_username_set": "NEXUS_USERNAME" in os.environ,
        }
    )


def lab_launcher_job():
    """The probe asset with lab's step launcher exactly as the code location builds it.

    Only `spark` is ours: the shared test session stands in for the cluster's session, because the fake
    Databricks runs the remote step in the test process.
    """
    launcher = build_resources(load_settings("lab"))[STEP_LAUNCHER_KEY]
    spark = SparkResource(master="local[2]", shuffle_partitions=2, driver_memory="2g")
    defs = Definitions(
        assets=[launcher_probe],
        jobs=[define_asset_job(JOB_NAME, selection=[launcher_probe])],
        resources={STEP_LAUNCHER_KEY: launcher, "spark": spark},
    )
    return defs.resolve_job_def(JOB_NAME)
