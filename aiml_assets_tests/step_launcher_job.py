"""A lab job for test_step_launcher: small Spark steps behind the project's own Databricks step launcher.

Module level so `reconstructable(lab_launcher_job)` can rebuild the job, which the step launcher needs: the "remote"
step (run in-process by the test's fake Databricks) re-imports this module from the pickled step run ref.

The job has each kind of step the cluster count (`databricks_runs`) tells apart: a Spark asset whose blocking check
runs in its own step (one cluster for both), a check in a step of its own that reads with Spark (a cluster of its
own), and a summary without the step launcher (on the orchestrator, no cluster).
"""

# No `from __future__ import annotations` here: Dagster checks the `context` annotation when the asset is decorated.
import os

from dagster import (
    AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Definitions, MaterializeResult, asset, asset_check,
    define_asset_job,
)

from aiml_assets.keys import STEP_LAUNCHER_KEY, StepLauncherParam
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.resources.spark import SparkResource
from aiml_assets.settings import load_settings

JOB_NAME = "lab_step_launcher_probe"
STEP_LOG_PREFIX = "launcher probe counted"
IN_STEP_CHECK = "even_ids_counted"
EVEN_IDS = 500


@asset(group_name="step_launcher_probe", check_specs=[
    AssetCheckSpec(IN_STEP_CHECK, asset="launcher_probe", blocking=True, description="checked in the asset's step")])
def launcher_probe(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam, spark: SparkResource):
    """Counts the even ids of a small Spark range and reports the environment the step ran with."""
    session = spark.get_session()
    evens = session.range(1000).filter("id % 2 = 0").count()
    context.log.info(f"{STEP_LOG_PREFIX} {evens} even ids with Spark {session.version}")
    yield MaterializeResult(
        metadata={
            "row_count": evens,
            "aiml_env": os.environ.get("AIML_ENV", "<unset>"),
            "nexus_username_set": "NEXUS_USERNAME" in os.environ,
        }
    )
    yield AssetCheckResult(check_name=IN_STEP_CHECK, passed=evens == EVEN_IDS, metadata={"even_ids": evens})


@asset_check(asset=launcher_probe, description="recounts on Spark in a step of its own")
def odd_ids_counted(pyspark_step_launcher: StepLauncherParam, spark: SparkResource) -> AssetCheckResult:
    odds = spark.get_session().range(1000).filter("id % 2 = 1").count()
    return AssetCheckResult(passed=odds == EVEN_IDS, metadata={"odd_ids": odds})


@asset(group_name="step_launcher_probe", deps=[launcher_probe])
def launcher_probe_summary() -> MaterializeResult:
    """No Spark, no step launcher: runs where the run runs."""
    return MaterializeResult(metadata={"ran_on_a_cluster": "DATABRICKS_RUNTIME_VERSION" in os.environ})


def lab_launcher_job():
    """The probe assets with lab's step launcher exactly as the code location builds it.

    Only `spark` is ours: the shared test session stands in for the cluster's session, because the fake
    Databricks runs the remote step in the test process.
    """
    launcher = build_resources(load_settings("lab"))[STEP_LAUNCHER_KEY]
    spark = SparkResource(master="local[2]", shuffle_partitions=2, driver_memory="2g")
    defs = Definitions(
        assets=[launcher_probe, odd_ids_counted, launcher_probe_summary],
        jobs=[define_asset_job(JOB_NAME)],
        resources={STEP_LAUNCHER_KEY: launcher, "spark": spark},
    )
    return defs.resolve_job_def(JOB_NAME)
