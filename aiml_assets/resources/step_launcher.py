"""The Databricks step launcher for lab, UAT and prod, configured from the environment file.

Each step is shipped to the workspace as a code bundle and re-imported there, so the bundle carries what the
code location needs to load (the package, the env files, the cluster specs), the cluster installs the project's
pinned runtime libraries, and `AIML_ENV` is forwarded so the remote process picks the same environment.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import tomllib
from pathlib import Path

from dagster import ResourceDefinition, resource
from packaging.requirements import Requirement
from dagster_databricks import databricks_pyspark_step_launcher
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

from aiml_assets.provenance import COMMIT_ENV_VAR, git_commit
from aiml_assets.settings import DEPLOYMENTS_DIR, PROJECT_ROOT, Settings

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
    return json.loads((DEPLOYMENTS_DIR / "databricks" / settings.databricks.cluster_spec).read_text())


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
    host_env_var = settings.databricks.host_env_var

    @resource(
        config_schema=databricks_pyspark_step_launcher.config_schema,
        description="databricks_pyspark_step_launcher shipping a clean bundle of the aiml_assets code location",
    )
    def bundled_step_launcher(context):
        config = dict(context.resource_config)
        # The remote step rebuilds this resource from the same config, so it needs the host's env var too (the
        # host is not a secret; credentials come from the cluster's service principal).
        config["env_variables"] = {**config["env_variables"], host_env_var: config["databricks_host"],
                                   COMMIT_ENV_VAR: git_commit()}
        with tempfile.TemporaryDirectory(prefix="aiml_assets_code_") as bundle:
            config["local_pipeline_package_path"] = str(bundle_code(Path(bundle)))
            yield DatabricksPySparkStepLauncher(**config)

    return bundled_step_launcher.configured(launcher_config(settings))
