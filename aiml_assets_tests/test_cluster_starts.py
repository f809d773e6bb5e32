"""How many Databricks clusters a job starts, derived from each environment's Definitions.

Every step that requires the step launcher is its own Databricks one-time run on a new job cluster, once per
partition of a backfill unless its assets backfill a range in one run (`databricks_runs`). The budgets: a day's
prod scoring and a lab main run in at most two clusters each, NBA 2.0's 49-model family in at most two.
"""

from __future__ import annotations

from functools import cache

import pytest
from dagster import (
    AssetCheckResult, AssetCheckSpec, BackfillPolicy, Definitions, StaticPartitionsDefinition, asset, asset_check,
    define_asset_job, job, op,
)

from aiml_assets.definitions import MAIN_JOB, MODELS_JOB, SCORING_JOB, build_definitions
from aiml_assets.keys import STEP_LAUNCHER_KEY, StepLauncherParam
from aiml_assets.resources.step_launcher import databricks_runs
from aiml_assets.settings import Settings, load_settings, product_codes

NBA_PRODUCTS = 49  # NBA 2.0's model family
BUDGET = 2


def lab_with_products(count: int) -> Settings:
    lab = load_settings("lab")
    return Settings.model_validate({**lab.model_dump(), "products": product_codes(lab.products, count)})


def settings_of(env: str) -> Settings:
    return lab_with_products(NBA_PRODUCTS) if env == "lab49" else load_settings(env)


@cache
def definitions_of(env: str):
    return build_definitions(settings=settings_of(env))


def scoring_day(settings: Settings) -> int:
    return 1  # the daily schedule runs one day's partition


def main_run(settings: Settings) -> int:
    return settings.features.main_job_snapshots  # one run over the latest snapshots (`aiml run-local`, the UI)


def model_family(settings: Settings) -> int:
    return len(settings.products)  # a backfill over every product


BUDGETS = [
    pytest.param("prod", SCORING_JOB, scoring_day, id="prod daily_scoring, one day"),
    pytest.param("lab", MAIN_JOB, main_run, id="lab main, its snapshots"),
    pytest.param("lab49", MODELS_JOB, model_family, id="lab train_models, 49 products"),
]


@pytest.mark.parametrize(("env", "job_name", "partitions_of"), BUDGETS)
def test_job_starts_at_most_two_databricks_clusters(env, job_name, partitions_of):
    partitions = partitions_of(settings_of(env))
    runs = databricks_runs(definitions_of(env).resolve_job_def(job_name), partitions)
    counted = ", ".join(f"{step} x{count}" for step, count in sorted(runs.items()))
    assert sum(runs.values()) <= BUDGET, (
        f"{env} {job_name} over {partitions} partition(s) starts {sum(runs.values())} Databricks runs "
        f"(budget {BUDGET}): {counted}")


def test_49_products_reach_the_model_partitions():
    """The budget above is about 49 partitions, not the env file's 6."""
    job = definitions_of("lab49").resolve_job_def(MODELS_JOB)
    assert len(job.partitions_def.get_partition_keys()) == NBA_PRODUCTS


# --- the derivation itself, on a small job whose figures are known ----------------------------------------------

PRODUCTS = StaticPartitionsDefinition(["a", "b", "c", "d", "e"])


@asset(partitions_def=PRODUCTS, check_specs=[AssetCheckSpec("in_step", asset="per_product", blocking=True)])
def per_product(pyspark_step_launcher: StepLauncherParam):
    """A multi-run partitioned Spark asset whose check runs in its step: one cluster per partition."""
    yield AssetCheckResult(passed=True, check_name="in_step")


@asset_check(asset=per_product, required_resource_keys={STEP_LAUNCHER_KEY})
def own_step(context):
    """A check in a step of its own: a cluster of its own, per partition like its asset."""
    return AssetCheckResult(passed=True)


@asset(partitions_def=PRODUCTS, backfill_policy=BackfillPolicy.single_run(), deps=[per_product])
def family(pyspark_step_launcher: StepLauncherParam):
    """Every partition in one run: one cluster for the whole backfill."""


@asset(partitions_def=PRODUCTS, backfill_policy=BackfillPolicy.multi_run(2), deps=[family])
def pairs(pyspark_step_launcher: StepLauncherParam):
    """Two partitions per run: ceil(5 / 2) clusters."""


@asset(partitions_def=PRODUCTS, deps=[pairs])
def summary():
    """No step launcher: runs on the orchestrator, no cluster."""


def test_derivation_counts_launcher_steps_per_partition_unless_single_run():
    defs = Definitions(assets=[per_product, own_step, family, pairs, summary],
                       jobs=[define_asset_job("probe", partitions_def=PRODUCTS)],
                       resources={STEP_LAUNCHER_KEY: None})
    job = defs.resolve_job_def("probe")
    assert databricks_runs(job, partitions=5) == {"per_product": 5, "per_product_own_step": 5, "family": 1,
                                                  "pairs": 3}
    assert databricks_runs(job) == {"per_product": 1, "per_product_own_step": 1, "family": 1, "pairs": 1}


@op(required_resource_keys={STEP_LAUNCHER_KEY})
def spark_op():
    pass


@op
def local_op():
    pass


@job(partitions_def=PRODUCTS, resource_defs={STEP_LAUNCHER_KEY: None})
def partitioned_ops():
    spark_op()
    local_op()


def test_derivation_counts_an_op_job_once_per_partition():
    assert databricks_runs(partitioned_ops, partitions=5) == {"spark_op": 5}
