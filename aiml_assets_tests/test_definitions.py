"""Every environment's Definitions load and validate; the graph holds what DESIGN.md names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions

from aiml_assets.definitions import build_definitions
from aiml_assets.governance.retention_assets import GROUP as GOVERNANCE_GROUP
from aiml_assets.keys import STEP_LAUNCHER_KEY
from aiml_assets.settings import ENVIRONMENTS, PROJECT_ROOT, load_settings

EDP_KEYS = {AssetKey(k.split("/")) for k in
            ("edp/fdp/customers", "edp/fdp/transactions", "edp/cdp/product_holdings", "edp/bdp/campaign_responses")}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_definitions_load_for_every_environment(env, aiml_home):
    defs = build_definitions(env)
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert EDP_KEYS <= set(graph.get_all_asset_keys())
    launcher = defs.resources[STEP_LAUNCHER_KEY]
    assert ("databricks_pyspark_step_launcher" in (launcher.description or "")) == (env != "local")


def test_dagster_cli_validates_every_environment(tmp_path):
    """`dagster definitions validate` as the deploy pipeline runs it, one process per environment."""
    cli = Path(sys.executable).parent / "dagster"
    procs = {
        env: subprocess.Popen(
            [str(cli), "definitions", "validate", "-m", "aiml_assets.definitions"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "AIML_ENV": env, "AIML_HOME": str(tmp_path / env),
                 "DAGSTER_HOME": str(_mkdir(tmp_path / f"dagster_{env}"))},
        )
        for env in ENVIRONMENTS
    }
    for env, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{env}:\n{output[-3000:]}"
        assert "All code locations passed validation" in output


def test_broken_environment_file_stops_the_code_location_loading(tmp_path):
    cli = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(cli), "definitions", "validate", "-m", "aiml_assets.definitions"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "AIML_ENV": "qa", "AIML_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "AIML_ENV='qa' is not an environment" in result.stdout + result.stderr



@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_asset_has_a_blocking_pandera_check(env, aiml_home):
    graph = build_definitions(env).resolve_asset_graph()
    checked = {key.asset_key for key in graph.asset_check_keys if key.name.endswith("_schema")}
    # every asset this environment runs; the lab's binaries in UAT/prod are external there, checked in the lab
    runs = {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable or graph.get(key).is_observable}
    # the retention purge writes no data to validate: its check proves what it deleted (nothing past retention left)
    purge = {key for key in runs if graph.get(key).group_name == GOVERNANCE_GROUP}
    assert runs - purge == checked
    assert {key.asset_key for key in graph.asset_check_keys if key.name == "nothing_past_retention"} == purge
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking, key


@pytest.mark.parametrize("env", ["local", "lab"])
def test_every_lab_asset_carries_the_retention_freshness_policy(env, aiml_home):
    from datetime import timedelta

    from aiml_assets.settings import load_settings

    retention = load_settings(env).storage.retention_days
    graph = build_definitions(env).resolve_asset_graph()
    lab = [key for key in graph.get_all_asset_keys() if key.path[0] == "lab"]
    assert lab
    for key in lab:
        policy = graph.get(key).freshness_policy
        assert policy.fail_window.to_timedelta() == timedelta(days=retention), key
        assert policy.warn_window.to_timedelta() == timedelta(days=retention - 15), key


def test_asset_groups_follow_the_env_file(aiml_home):
    def groups_of(env):  # of what the environment runs (materializes or observes)
        graph = build_definitions(env).resolve_asset_graph()
        nodes = [graph.get(key) for key in graph.get_all_asset_keys()]
        return {node.group_name for node in nodes if node.is_materializable or node.is_observable}

    groups = {env: groups_of(env) for env in ENVIRONMENTS}
    # the lab never scores or publishes; its bucket is perishable, so it runs the retention purge (governance)
    assert groups["lab"] == {"edp_sources", "lab_features", "model_versions", "governance"}
    assert groups["local"] == groups["lab"] | {"prod_inference", "uat_parallel_run"}
    # lab data and training never exist outside the lab; UAT compares champion and challenger, prod publishes
    assert groups["uat"] == {"edp_sources", "prod_inference", "uat_parallel_run", "governance"}
    assert groups["prod"] == {"edp_sources", "prod_inference"}  # permanent storage: no purge
    # ... and the lab's Nexus binaries are there as an external asset, for the lineage from the lab to the CDP
    from aiml_assets.models.assets import BINARY_KEY
    binary = build_definitions("prod").resolve_asset_graph().get(BINARY_KEY)
    assert binary.group_name == "model_versions" and not binary.is_materializable and not binary.is_observable


def test_only_prod_publishes_the_cdp_and_scoring_runs_unattended(aiml_home):
    from dagster import DefaultScheduleStatus

    from aiml_assets.definitions import SCORING_JOB
    from aiml_assets.inference.parallel_run import PARALLEL_RUN_KEY
    from aiml_assets.publication.cdp import CDP_KEY

    keys = {env: set(build_definitions(env).resolve_asset_graph().get_all_asset_keys()) for env in ENVIRONMENTS}
    assert CDP_KEY in keys["prod"] and CDP_KEY in keys["local"]
    assert CDP_KEY not in keys["uat"] and CDP_KEY not in keys["lab"]  # UAT never publishes to EDP
    assert PARALLEL_RUN_KEY in keys["uat"] and PARALLEL_RUN_KEY not in keys["prod"]
    for env, status in (("prod", DefaultScheduleStatus.RUNNING), ("uat", DefaultScheduleStatus.RUNNING),
                        ("local", DefaultScheduleStatus.STOPPED)):
        defs = build_definitions(env)
        schedule = defs.resolve_schedule_def(f"{SCORING_JOB}_schedule")
        assert schedule.default_status == status, env
        assert schedule.job_name == SCORING_JOB
        assert defs.resolve_job_def(SCORING_JOB).partitions_def.start.date() == \
            load_settings(env).inference.scoring_start


def test_models_train_in_their_own_job_partitioned_by_product(aiml_home):
    from aiml_assets.definitions import MAIN_JOB, MODELS_JOB
    from aiml_assets.models.assets import BINARY_KEY, MODEL_KEY

    defs = build_definitions("local")
    models = defs.resolve_job_def(MODELS_JOB)
    assert models.partitions_def.get_partition_keys() == load_settings("local").products
    assert {MODEL_KEY, BINARY_KEY} == set(models.asset_layer.selected_asset_keys)
    assert MODEL_KEY not in defs.resolve_job_def(MAIN_JOB).asset_layer.selected_asset_keys
    assert "promote_model" in {job.name for job in defs.resolve_all_job_defs()}
    # UAT and prod deploy from the release manifest; they neither train nor promote
    assert {MODELS_JOB, "promote_model"}.isdisjoint(job.name for job in build_definitions("prod").resolve_all_job_defs())


def test_seeded_products_match_their_pandera_contracts():
    from pyspark.sql.pandas.types import from_arrow_schema

    from aiml_assets.edp.seed import EDP_PRODUCTS
    from aiml_assets.sources.schemas import SOURCE_MODELS

    assert set(EDP_PRODUCTS) == set(SOURCE_MODELS)
    for name, model in SOURCE_MODELS.items():
        seeded = from_arrow_schema(EDP_PRODUCTS[name].schema, prefer_timestamp_ntz=False)
        expected = {col: c.dtype.type for col, c in model.to_schema().columns.items()}
        assert {f.name: f.dataType for f in seeded.fields} == expected, name


def test_every_node_reading_data_runs_through_the_step_launcher(aiml_home):
    """Assets, source observations and checks that read tables read through Spark: remotely they must run on
    Databricks (the retention proof runs in the purge's own step)."""
    defs = build_definitions("lab")
    nodes = [*defs.assets, *(defs.asset_checks or [])]
    assert nodes
    for node in nodes:
        assert STEP_LAUNCHER_KEY in node.required_resource_keys, node
