"""The Databricks step launcher for lab, UAT and prod, configured from the environment file.

Each step is shipped to the workspace as a code bundle and re-imported there, so the bundle carries what the
code location needs to load (the package, the env files, the cluster specs), the cluster installs the project's
pinned runtime libraries, and `AIML_ENV` is forwarded so the remote process picks the same environment. Each step
is a one-time run on a new job cluster whose driver and workers come from the environment's instance pool;
`databricks_runs` counts them for a job.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetsDefinition, JobDefinition, ResourceDefinition, resource
from packaging.requirements import Requirement

from aiml_assets.keys import STEP_LAUNCHER_KEY
from aiml_assets.provenance import COMMIT_ENV_VAR, git_commit
from aiml_assets.settings import DEPLOYMENTS_DIR, PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

# What the remote process needs to import the code location; never the virtualenv, tests or local state.
# requirements.lock: the Nexus content rules pin model requirements to it on the cluster too
BUNDLE_CONTENTS = ("aiml_assets", "resources", "deployments/databricks", "deployments/governance", "pyproject.toml",
                   "requirements.lock")


# The Databricks Runtime brings its own Spark; a PyPI pyspark would shadow the cluster's.
PROVIDED_BY_RUNTIME = {"pyspark"}


def runtime_libraries() -> list[dict]:
    """The project's pinned runtime dependencies, as Databricks PyPI libraries."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return [
        {"pypi": {"package": requirement}}
        for requirement in project["dependencies"]
        if Requirement(requirement).name not in PROVIDED_BY_RUNTIME
    ]


def cluster_spec(settings: Settings) -> dict:
    """The environment's cluster spec file on the environment's instance pool (`databricks.instance_pool_id`), which
    also decides the node type and AWS availability: a pool-backed cluster sets neither."""
    path = DEPLOYMENTS_DIR / "databricks" / settings.databricks.cluster_spec
    spec = json.loads(path.read_text())
    if "nodes" in spec:
        raise ValueError(f"{path}: sets nodes; the environment's instance pool decides them "
                         "(databricks.instance_pool_id)")
    return {**spec, "nodes": {"instance_pool_id": settings.databricks.instance_pool_id}}


def with_driver_pool(run_config: dict) -> dict:
    """`run_config` with the driver on the workers' pool too (Databricks takes a pool for both or neither).

    dagster-databricks' config schema accepts only one of `nodes.instance_pool_id` and
    `nodes.driver_instance_pool_id` (a selector), while its request builder sends both when both are there: the
    driver's pool is added after the config is validated."""
    run_config = copy.deepcopy(run_config)
    nodes = run_config["cluster"]["new"]["nodes"]
    nodes["driver_instance_pool_id"] = nodes["instance_pool_id"]
    return run_config


def launcher_config(settings: Settings) -> dict:
    db = settings.databricks
    return {
        "run_config": {
            "run_name": db.run_name,
            "cluster": {"new": cluster_spec(settings)},
            "libraries": runtime_libraries(),
            # our pins already name dagster, dagster-databricks and dagster-pyspark
            "install_default_libraries": False,
            "timeout_seconds": db.timeout_seconds,
        },
        "databricks_host": {"env": db.host_env_var},
        "env_variables": {"AIML_ENV": settings.environment},
        "secrets_to_env_variables": [secret.model_dump() for secret in db.secrets],
        "staging_prefix": db.staging_prefix,
        "poll_interval_sec": db.poll_interval_sec,
        "max_completion_wait_time_seconds": db.timeout_seconds,
        "verbose_logs": False,
    }


def bundle_code(target: Path) -> Path:
    """Copy what the remote step imports into `target` (the launcher zips this folder)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in BUNDLE_CONTENTS:
        source, dest = PROJECT_ROOT / item, target / item
        if source.is_dir():
            shutil.copytree(source, dest, ignore=ignore)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
    return target


def databricks_step_launcher(settings: Settings) -> ResourceDefinition:
    # dagster-databricks (and the Databricks SDK) load with a Databricks environment's code location only
    from dagster_databricks import databricks_pyspark_step_launcher
    from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

    host_env_var = settings.databricks.host_env_var

    @resource(
        config_schema=databricks_pyspark_step_launcher.config_schema,
        description="databricks_pyspark_step_launcher shipping a clean bundle of the aiml_assets code location",
    )
    def bundled_step_launcher(context):
        config = dict(context.resource_config)
        config["run_config"] = with_driver_pool(config["run_config"])
        # The remote step rebuilds this resource from the same config, so it needs the host's env var too (the
        # host is not a secret; credentials come from the cluster's service principal).
        config["env_variables"] = {**config["env_variables"], host_env_var: config["databricks_host"],
                                   COMMIT_ENV_VAR: git_commit()}
        with tempfile.TemporaryDirectory(prefix="aiml_assets_code_") as bundle:
            config["local_pipeline_package_path"] = str(bundle_code(Path(bundle)))
            yield DatabricksPySparkStepLauncher(**config)

    return bundled_step_launcher.configured(launcher_config(settings))


def databricks_runs(job: JobDefinition, partitions: int = 1) -> dict[str, int]:
    """How many Databricks one-time runs, each on a new job cluster, a run of `job` over `partitions` partitions
    starts, per step: every step that requires the step launcher, once per partition unless its assets are
    unpartitioned or backfill a range in one run (single-run backfill policy). Steps without the launcher run on
    the orchestrator and start none."""
    layer = job.asset_layer
    runs = {}
    for handle in job.graph.get_op_handles(None):
        if STEP_LAUNCHER_KEY not in job.graph.get_node(handle).definition.required_resource_keys:
            continue
        assets_def = layer.get_assets_def_for_node(handle) or layer.get_assets_def_for_node(handle.root)
        if assets_def is None:  # an op: a partitioned op job runs once per partition
            runs[str(handle)] = partitions if job.partitions_def else 1
        else:
            runs[str(handle)] = _runs_per_step(assets_def, layer.asset_graph, partitions)
    return runs


def _runs_per_step(assets_def: AssetsDefinition, graph: AssetGraph, partitions: int) -> int:
    # a step of checks only is partitioned and backfilled like the assets it checks
    keys = list(assets_def.keys) or [check.asset_key for check in assets_def.check_keys]
    nodes = [node for node in map(graph.get, keys) if node.partitions_def is not None]
    per_run = [node.backfill_policy.max_partitions_per_run if node.backfill_policy else 1 for node in nodes]
    if not per_run or None in per_run:  # unpartitioned, or a single run for the whole range
        return 1
    return max(math.ceil(partitions / size) for size in per_run)
