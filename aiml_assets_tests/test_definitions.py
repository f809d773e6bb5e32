"""Every environment's Definitions load and validate; the graph holds what DESIGN.md names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions

from aiml_assets.definitions import build_definitions
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import ENVIRONMENTS, PROJECT_ROOT

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

