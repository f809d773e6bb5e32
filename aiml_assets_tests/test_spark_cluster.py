"""Spark pointed at a cluster by configuration alone: AIML_SPARK_* variables and the untracked override file set the
local environment's Spark settings, validated like the env files; on a standalone cluster (a master and a worker on
loopback, from the pyspark package) the lab features come out as they do in-process.

Run as a script, this file is the cluster's driver: a process of its own (a process holds one SparkContext, and the
suite's is local), configured only by its environment and an override file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pyspark
import pytest
import yaml

from aiml_assets import settings as settings_module
from aiml_assets.settings import (RESOURCES_DIR, SPARK_ENV_PREFIX, SettingsError, load_settings, parse_settings,
                                  with_spark_overrides)

PARTITION = "2026-10-01"
FEATURES = "aiml_local.lab.customer_features"


@pytest.fixture
def no_spark_variables(monkeypatch):
    for name in [name for name in os.environ if name.startswith(SPARK_ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return monkeypatch


LOCAL = parse_settings(RESOURCES_DIR / "local.yaml")  # the tracked env file alone


def _local_with(tmp_path, overrides: dict | None = None):
    path = tmp_path / "local.override.yaml"
    if overrides is not None:
        path.write_text(yaml.safe_dump(overrides))
    return with_spark_overrides(LOCAL, path).spark


def test_the_override_file_then_variables_set_the_local_spark_settings(tmp_path, no_spark_variables):
    assert _local_with(tmp_path) == LOCAL.spark  # no file, no variables: the env file's
    file = {"spark": {"master": "spark://10.0.0.5:7077", "executor_memory": "2g", "ui": True}}
    no_spark_variables.setenv("AIML_SPARK_MASTER", "spark://127.0.0.1:7077")
    no_spark_variables.setenv("AIML_SPARK_EXECUTOR_CORES", "2")
    no_spark_variables.setenv("AIML_SPARK_PYTHON", sys.executable)
    spark = _local_with(tmp_path, file)
    assert (spark.master, spark.executor_memory, spark.executor_cores, spark.python, spark.ui) == \
        ("spark://127.0.0.1:7077", "2g", 2, sys.executable, True)
    assert spark.driver_memory == LOCAL.spark.driver_memory  # untouched fields stay


def test_only_the_local_environment_takes_spark_overrides(aiml_home, no_spark_variables):
    from aiml_assets.resources.per_environment import build_resources

    no_spark_variables.setenv("AIML_SPARK_MASTER", "spark://127.0.0.1:7077")
    load_settings.cache_clear()
    try:
        assert build_resources(load_settings("local"))["spark"].master == "spark://127.0.0.1:7077"
        no_spark_variables.setenv("AIML_SPARK_MASTER", "yarn")
        load_settings.cache_clear()
        assert load_settings("lab").spark == settings_module.LocalSparkSettings()  # lab's Spark is Databricks'
        with pytest.raises(SettingsError, match=r"AIML_SPARK_MASTER: .*expected local, local\[N\], local\[\*\] or "
                                                r"a standalone master spark://host:port \(got 'yarn'\)"):
            load_settings("local")
    finally:
        load_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AIML_SPARK_MASTER", "spark://cluster", r"AIML_SPARK_MASTER: .*spark://host:port \(got 'spark://cluster'\)"),
        ("AIML_SPARK_MASTER", "local[0]", r"AIML_SPARK_MASTER: .*expected local, local\[N\]"),
        ("AIML_SPARK_EXECUTOR_MEMORY", "2 GB", r"AIML_SPARK_EXECUTOR_MEMORY: .*expected a JVM memory size.*512m or 4g "
                                               r"\(got '2 GB'\)"),
        ("AIML_SPARK_DRIVER_MEMORY", "4096", r"AIML_SPARK_DRIVER_MEMORY: .*expected a JVM memory size"),
        ("AIML_SPARK_EXECUTOR_CORES", "0", r"AIML_SPARK_EXECUTOR_CORES: Input should be greater than or equal to 1"),
        ("AIML_SPARK_UI", "maybe", r"AIML_SPARK_UI: Input should be a valid boolean"),
        ("AIML_SPARK_PYTHON", "python3", r"AIML_SPARK_PYTHON: .*expected the absolute path"),
        ("AIML_SPARK_EXECUTOR_MEMROY", "2g", r"AIML_SPARK_EXECUTOR_MEMROY: not a Spark setting; expected one of "
                                             r"AIML_SPARK_MASTER, .*AIML_SPARK_EXECUTOR_MEMORY"),
    ],
)
def test_a_bad_variable_is_named_with_what_was_expected(tmp_path, no_spark_variables, variable, value, expected):
    no_spark_variables.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"invalid local Spark settings\n  {expected}"):
        _local_with(tmp_path)


def test_a_bad_override_file_is_named_with_its_field(tmp_path, no_spark_variables):
    path = tmp_path / "local.override.yaml"
    with pytest.raises(SettingsError, match=re.escape(f"{path}: spark.executor_memory: ") + ".*JVM memory size"):
        _local_with(tmp_path, {"spark": {"executor_memory": "lots"}})
    with pytest.raises(SettingsError, match=re.escape(f"{path}: expected only a `spark:` mapping") + ".*'storage'"):
        _local_with(tmp_path, {"spark": {}, "storage": {"kind": "s3"}})
    with pytest.raises(SettingsError, match=re.escape(f"{path}: spark.cores: not a Spark setting; expected one of "
                                                      "spark.master, spark.shuffle_partitions")):
        _local_with(tmp_path, {"spark": {"cores": 3}})
    no_spark_variables.setenv("AIML_SPARK_MASTER", "local[2]")  # a good variable does not excuse a bad file
    with pytest.raises(SettingsError, match=re.escape(f"{path}: spark.master: ")):
        _local_with(tmp_path, {"spark": {"master": "mesos://x:5050"}})


# --- a standalone cluster on loopback ---------------------------------------------------------------------------

SPARK_HOME = Path(pyspark.__file__).parent
START_TIMEOUT = 60  # seconds for a master or worker to come up (each is a JVM; ~6 s on an idle 2-core box)
RUN_TIMEOUT = 180  # seconds for the driver process: imports, its JVM, an executor, the asset and its check


def _spark_env(tmp_path: Path) -> dict:
    """Loopback only; Spark's own config folder empty, so nothing but what this test sets configures it."""
    (tmp_path / "spark-conf").mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith((SPARK_ENV_PREFIX, "SPARK_", "PYSPARK_"))}
    return {**env, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_CONF_DIR": str(tmp_path / "spark-conf")}


def _start(stack: ExitStack, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a process in a process group of its own, which is ended (with anything it started) when `stack` closes."""
    out = stack.enter_context(open(log, "wb"))
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group this test created for it: the worker's executors go with it
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(proc: subprocess.Popen, log: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, log.read_text(errors="replace")):
            return match
        assert proc.poll() is None, f"{proc.args[:2]} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"no {pattern!r} from {proc.args[:2]} within {timeout} s:\n{log.read_text()[-3000:]}")


def _daemon(name: str, *args: str, port: str = "0") -> list[str]:
    return [str(SPARK_HOME / "bin" / "spark-class"), f"org.apache.spark.deploy.{name}", "--host", "127.0.0.1",
            "--port", port, "--webui-port", "0", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _materialize_features(instance) -> bool:
    """The lab feature asset (and its blocking check) for one snapshot, with this process's local Definitions."""
    from aiml_assets.definitions import MAIN_JOB, build_definitions
    from aiml_assets.features.assets import FEATURES_KEY

    result = build_definitions("local").resolve_job_def(MAIN_JOB).execute_in_process(
        instance=instance, partition_key=PARTITION, asset_selection=[FEATURES_KEY], raise_on_error=False)
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(event.step_failure_data.error.to_string(), file=sys.stderr)
    return result.success


def _rows(catalog) -> "pandas.DataFrame":
    from deltalake import DeltaTable

    frame = DeltaTable(catalog.location(FEATURES)).to_pandas()
    return frame.sort_values("customer_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def small_edp(tmp_path_factory) -> dict[str, str]:
    """EDP products of 200 customers (~12k transactions; a second to seed): the cluster's cost is Spark's, not data."""
    from aiml_assets.edp.seed import seed_edp
    from aiml_assets.resources.catalog import LocalCatalog

    catalog = LocalCatalog(home=str(tmp_path_factory.mktemp("small_edp")))
    seed_edp(catalog, customers=200, seed=7, products=load_settings("local").products, log=lambda _: None)
    return {name: catalog.location(name) for name in catalog.names()}


def _catalog_of(home: Path, edp: dict[str, str]):
    from aiml_assets.resources.catalog import LocalCatalog

    catalog = LocalCatalog(home=str(home))
    for name, location in edp.items():
        catalog.register(name, location, owner="EDP")
    return catalog


@pytest.mark.slow
def test_the_lab_features_run_on_a_standalone_cluster_as_in_process(tmp_path, small_edp, aiml_home, instance, spark):
    import pandas as pd

    local_catalog = _catalog_of(aiml_home, small_edp)
    cluster_catalog = _catalog_of(tmp_path / "cluster_home", small_edp)
    overrides = tmp_path / "local.override.yaml"  # as resources/local.override.yaml would say it
    overrides.write_text(yaml.safe_dump({"spark": {"executor_memory": "512m", "executor_cores": 1, "ui": False}}))
    env = _spark_env(tmp_path)
    driver_env = {**env, "AIML_ENV": "local", "AIML_HOME": str(tmp_path / "cluster_home"), "PYTHONUNBUFFERED": "1",
                  "AIML_SPARK_DRIVER_MEMORY": "1g", "AIML_SPARK_SHUFFLE_PARTITIONS": "2",
                  "AIML_SPARK_PYTHON": sys.executable}
    daemon_env = {**env, "SPARK_WORKER_DIR": str(tmp_path / "spark-work"),
                  "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}  # its REST port is fixed (6066)

    with ExitStack() as stack:  # on the way out, however it goes: the driver, the worker (and its executor), the master
        url = f"spark://127.0.0.1:{_free_port()}"  # known up front, so that the driver starts with the master
        master = _start(stack, _daemon("master.Master", port=url.rsplit(":", 1)[1]), daemon_env,
                        tmp_path / "master.log")
        driver = _start(stack, [sys.executable, __file__, str(overrides), str(tmp_path / "ran.json")],
                        {**driver_env, "AIML_SPARK_MASTER": url}, tmp_path / "driver.log")
        _wait_for(master, tmp_path / "master.log", f"Starting Spark master at {url}", START_TIMEOUT)
        worker = _start(stack, _daemon("worker.Worker", url, "--cores", "1", "--memory", "1g"), daemon_env,
                        tmp_path / "worker.log")
        _wait_for(worker, tmp_path / "worker.log", "Successfully registered with master", START_TIMEOUT)

        # Meanwhile, the same asset in-process on the suite's local session: the rows to compare with
        assert _materialize_features(instance)
        local_rows = _rows(local_catalog)

        try:
            driver.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not finish within {RUN_TIMEOUT} s:\n"
                        f"{(tmp_path / 'driver.log').read_text()[-3000:]}")
        assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-5000:]

    ran = json.loads((tmp_path / "ran.json").read_text())
    assert ran["master"] == url
    assert ran["executors"]  # and the master gave this app an executor on the test's worker:
    assert re.search(r"Launching executor app-\S+ on worker worker-\S+-127\.0\.0\.1-",
                     (tmp_path / "master.log").read_text())
    assert ran["executor_python"] == sys.executable  # the venv's interpreter, from AIML_SPARK_PYTHON
    assert ran["conf"] == {"spark.executor.memory": "512m", "spark.executor.cores": "1", "spark.ui.enabled": "false",
                           "spark.pyspark.python": sys.executable}
    cluster_rows = _rows(cluster_catalog)  # committed by delta-rs from the files the executor wrote
    assert len(cluster_rows) > 100
    pd.testing.assert_frame_equal(cluster_rows, local_rows, check_exact=False, rtol=1e-9)  # sums: any order


def _drive() -> None:
    """The cluster's driver: AIML_SPARK_* from the environment, the rest of the Spark settings from the override
    file named first on the command line (standing in for resources/local.override.yaml); what it ran on goes to the
    file named second."""
    settings_module.LOCAL_SPARK_OVERRIDES = Path(sys.argv[1])
    from dagster import DagsterInstance
    from pyspark.sql import SparkSession

    with DagsterInstance.ephemeral() as instance:
        assert _materialize_features(instance)
    session = SparkSession.builder.getOrCreate()  # the session the asset ran on
    context = session.sparkContext
    ids = context._jsc.sc().getExecutorIds()  # the executors that registered, not the driver
    conf = {key: context.getConf().get(key) for key in ("spark.executor.memory", "spark.executor.cores",
                                                          "spark.ui.enabled", "spark.pyspark.python")}
    executor_python = context.parallelize([0], 1).map(lambda _: sys.executable).first()
    ran = {"master": context.master, "executors": [ids.apply(i) for i in range(ids.size())],
           "executor_python": executor_python, "conf": conf}
    Path(sys.argv[2]).write_text(json.dumps(ran))
    session.stop()


if __name__ == "__main__":
    _drive()
