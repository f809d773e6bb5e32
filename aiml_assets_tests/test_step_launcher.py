"""The lab Databricks step launcher end to end, with Databricks faked at the API the launcher talks to.

How the fake works. `DatabricksClient.workspace_client` (the SDK client every dagster-databricks call goes through)
is patched to `FakeWorkspace`: DBFS `create`/`add_block`/`close`/`read` backed by a temp folder, and jobs
`submit`/`get_run`/`cancel_run`. Everything else is real: the project's launcher resource, the code bundle and zip,
the pickled step run ref and remote config, `DatabricksJobRunner.submit_run` (spied on, not replaced), the polling
loop and the event reader; the real `WorkspaceClient` is still constructed (PAT from the environment, no network).

On `jobs.submit` the fake cluster runs the task the way Databricks runs a `spark_python_task`: it executes the
*uploaded* `databricks_step_main.py` as `__main__`, with its `/dbfs/...` parameters mapped onto the temp folder,
`dbutils` (fake secrets) and `sc` as globals, in a process environment that has the submitted cluster's
`spark_env_vars` but none of the orchestrator's own variables (AIML_ENV, DATABRICKS_HOST, credentials). The step
runs in-process on the shared test SparkSession, pickles its events to (fake) DBFS, and the launcher replays them
into the test's Dagster instance while polling `get_run` (PENDING, RUNNING, then TERMINATED).
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import itertools
import json
import os
import pickle
import runpy
import shutil
import socket
import sys
import tempfile
import time
import tomllib
import traceback
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path

import dagster
import pytest
import requests
from dagster import AssetKey, DagsterEventType, execute_job, reconstructable
from dagster_databricks.databricks import DatabricksClient, DatabricksJobRunner
from databricks.sdk.errors.platform import ResourceAlreadyExists, ResourceDoesNotExist
from databricks.sdk.service import files, jobs
from step_launcher_job import IN_STEP_CHECK, STEP_LOG_PREFIX, lab_launcher_job

from aiml_assets.provenance import git_commit
from aiml_assets.resources.step_launcher import databricks_runs
from aiml_assets.settings import DEPLOYMENTS_DIR, PROJECT_ROOT, load_settings

# the module, not the resource that dagster_databricks exports under the same name
launcher_module = importlib.import_module("dagster_databricks.databricks_pyspark_step_launcher")

DATABRICKS_HOST = "https://dbc-aiml-lab.test.invalid"
# What the Dagster host has and a Databricks cluster process does not: the fake cluster runs the step without them.
ORCHESTRATOR_ENV = {
    "AIML_ENV": "lab",
    "DATABRICKS_HOST": DATABRICKS_HOST,
    "DATABRICKS_TOKEN": "dapi-orchestrator-test-token",
}
# Stand-in for the cluster's own (runtime-native) Databricks credentials, which the remote launcher resource needs.
CLUSTER_RUNTIME_TOKEN = "dapi-cluster-runtime-test-token"
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
ASSET_KEY = AssetKey("launcher_probe")
STEP_KEY = "launcher_probe"
CHECK_STEP_KEY = "launcher_probe_odd_ids_counted"


def fake_secret(scope: str, key: str) -> str:
    return f"fake-secret:{scope}/{key}"


# ----------------------------------------------------------------------------------------------------------------------
# The fake Databricks workspace
# ----------------------------------------------------------------------------------------------------------------------


class FakeDbfs:
    """The DBFS API calls that DatabricksClient.put_file / read_file make, on a local folder."""

    def __init__(self, root: Path):
        self.root = root
        self._handles = itertools.count(1)
        self._open: dict[int, tuple[str, bytearray]] = {}

    def local(self, path: str) -> Path:
        assert path.startswith("/"), path
        return self.root / path.lstrip("/")

    def create(self, path: str, overwrite: bool = False) -> files.CreateResponse:
        if self.local(path).exists() and not overwrite:
            raise ResourceAlreadyExists(f"{path} already exists", error_code="RESOURCE_ALREADY_EXISTS")
        handle = next(self._handles)
        self._open[handle] = (path, bytearray())
        return files.CreateResponse(handle=handle)

    def add_block(self, handle: int, data: str) -> None:
        self._open[handle][1].extend(base64.b64decode(data))

    def close(self, handle: int) -> None:
        path, content = self._open.pop(handle)
        target = self.local(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(content))

    def read(self, path: str, offset: int = 0, length: int | None = None) -> files.ReadResponse:
        target = self.local(path)
        if not target.is_file():
            message = f"No file or directory exists on path {path}."
            raise ResourceDoesNotExist(message, error_code="RESOURCE_DOES_NOT_EXIST")
        data = target.read_bytes()[offset : None if length is None else offset + length]
        return files.ReadResponse(bytes_read=len(data), data=base64.b64encode(data).decode())


class FakeDbutils:
    def __init__(self):
        self.secret_reads: list[tuple[str, str]] = []
        self.secrets = types.SimpleNamespace(get=self._get_secret)

    def _get_secret(self, scope: str, key: str) -> str:
        self.secret_reads.append((scope, key))
        return fake_secret(scope, key)


class FakeJobs:
    """Runs submit / get / cancel. A submitted run executes at once (unless `fail_with` says the run fails before the
    task starts) and then reports PENDING, RUNNING and its terminal state on successive `get_run` calls."""

    def __init__(self, dbfs: FakeDbfs, dbutils: FakeDbutils, spark_context):
        self.dbfs, self.dbutils, self.spark_context = dbfs, dbutils, spark_context
        self.fail_with: str | None = None  # state message of a run that fails before its task runs
        self.cluster_env: dict[str, str] = {}  # what the cluster process has besides the cluster's spark_env_vars
        self.submitted: list[dict] = []
        self.cancelled: list[int] = []
        self.remote_env: dict[str, str] | None = None  # the remote process's environment when the task ended
        self.remote_error: str | None = None  # traceback of a task that crashed
        self._run_ids = itertools.count(9001)
        self._states: dict[int, list[jobs.RunState]] = {}

    # -- the Jobs API -------------------------------------------------------------------------------------------------
    def submit(self, *, run_name=None, tasks=(), timeout_seconds=None, **others):
        assert len(tasks) == 1, tasks
        task = tasks[0].as_dict()  # what would go over the wire
        self.submitted.append({"run_name": run_name, "timeout_seconds": timeout_seconds, "task": task, **others})
        run_id = next(self._run_ids)
        if self.fail_with is None:
            self._run_on_cluster(task)
        message = self.fail_with or self.remote_error
        final = jobs.RunState(
            life_cycle_state=jobs.RunLifeCycleState.TERMINATED,
            result_state=jobs.RunResultState.FAILED if message else jobs.RunResultState.SUCCESS,
            state_message=message or "",
        )
        self._states[run_id] = [
            jobs.RunState(life_cycle_state=jobs.RunLifeCycleState.PENDING, state_message="Waiting for cluster"),
            jobs.RunState(life_cycle_state=jobs.RunLifeCycleState.RUNNING, state_message="In run"),
            final,
        ]
        return types.SimpleNamespace(bind=lambda: {"run_id": run_id})

    def get_run(self, run_id: int, **_) -> jobs.Run:
        states = self._states[run_id]
        state = states.pop(0) if len(states) > 1 else states[0]
        return jobs.Run(run_id=run_id, run_page_url=f"{DATABRICKS_HOST}/#job/runs/{run_id}", state=state)

    def cancel_run(self, run_id: int) -> None:
        self.cancelled.append(run_id)

    # -- the cluster --------------------------------------------------------------------------------------------------
    def _local(self, uri_or_fuse_path: str) -> Path:
        for prefix in ("dbfs:", "/dbfs/"):  # the task's python_file is a dbfs: URI, its parameters /dbfs/ FUSE paths
            if uri_or_fuse_path.startswith(prefix):
                return self.dbfs.local("/" + uri_or_fuse_path.removeprefix(prefix).lstrip("/"))
        raise AssertionError(f"not a DBFS path: {uri_or_fuse_path}")

    def _run_on_cluster(self, task: dict) -> None:
        python_task = task["spark_python_task"]
        script = self._local(python_task["python_file"])
        argv = [str(script), *(str(self._local(p)) for p in python_task["parameters"])]
        with self._cluster_process(task.get("new_cluster") or {}, argv):
            try:
                runpy.run_path(
                    str(script), init_globals={"dbutils": self.dbutils, "sc": self.spark_context}, run_name="__main__"
                )
            except Exception:  # Databricks reports a crashed task as a FAILED run
                self.remote_error = traceback.format_exc()
            finally:
                self.remote_env = dict(os.environ)

    @contextmanager
    def _cluster_process(self, new_cluster: dict, argv: list[str]):
        saved_env, saved_path, saved_argv = dict(os.environ), list(sys.path), sys.argv
        try:
            for name in ORCHESTRATOR_ENV:
                os.environ.pop(name, None)
            os.environ.update(new_cluster.get("spark_env_vars") or {})
            os.environ["DATABRICKS_RUNTIME_VERSION"] = new_cluster.get("spark_version", "")
            os.environ["DATABRICKS_TOKEN"] = CLUSTER_RUNTIME_TOKEN
            os.environ.update(self.cluster_env)
            sys.argv = argv
            yield
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path  # databricks_step_main adds the extracted code zip as a site dir
            for name in set(os.environ) - set(saved_env):
                del os.environ[name]
            os.environ.update(saved_env)


class FakeWorkspace:
    def __init__(self, root: Path, spark_context):
        self.dbutils = FakeDbutils()
        self.dbfs = FakeDbfs(root)
        self.jobs = FakeJobs(self.dbfs, self.dbutils, spark_context)
        self.runner_calls: list[tuple[dict, dict]] = []  # (run_config, task) as DatabricksJobRunner.submit_run got them
        self.sleeps: list[float] = []


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------------


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Fail and record any attempt to leave the machine (Spark's py4j and loopback sockets stay allowed)."""
    attempts: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guard(address):
        if isinstance(address, tuple) and not _is_local(address[0]):
            attempts.append(address)
            raise ConnectionRefusedError(f"test_step_launcher: network access blocked ({address})")

    def connect(sock, address):
        guard(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        guard(address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(("dns", host))
            raise socket.gaierror(f"test_step_launcher: name resolution blocked ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def send(adapter, request, *args, **kwargs):
        attempts.append(("http", request.method, request.url))
        raise requests.ConnectionError(f"test_step_launcher: HTTP blocked ({request.method} {request.url})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return attempts


@pytest.fixture
def lab_env(monkeypatch, aiml_home, tmp_path):
    for name, value in ORCHESTRATOR_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    load_settings.cache_clear()
    return load_settings("lab")


@pytest.fixture
def private_tempdir(monkeypatch):
    """Every temp file of the run (the launcher's code bundles, the zip, the remote's extracted code) goes here.

    Not under pytest's tmp_path: dagster-pyspark's zipper drops every file whose absolute path matches `.*pytest.*`.
    """
    path = tempfile.mkdtemp(prefix="aiml_step_launcher_test_")
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_databricks(monkeypatch, tmp_path, spark, network_attempts, private_tempdir) -> FakeWorkspace:
    fake = FakeWorkspace(tmp_path / "dbfs", spark.sparkContext)
    monkeypatch.setattr(DatabricksClient, "workspace_client", property(lambda client: fake))

    real_submit_run = DatabricksJobRunner.submit_run

    def submit_run(runner, run_config, task):
        fake.runner_calls.append((run_config, task))
        return real_submit_run(runner, run_config, task)

    monkeypatch.setattr(DatabricksJobRunner, "submit_run", submit_run)
    # The launcher sleeps poll_interval_sec between polls: record the waits instead of waiting.
    monkeypatch.setattr(launcher_module, "time", types.SimpleNamespace(sleep=fake.sleeps.append, time=time.time))
    return fake


def run_lab_job(instance):
    return execute_job(reconstructable(lab_launcher_job), instance=instance, run_config=IN_PROCESS)


def api_cluster(cluster_spec: dict) -> dict:
    """The `new_cluster` of the Jobs API request that dagster-databricks makes from a `run_config.cluster.new`."""
    expected = {k: v for k, v in cluster_spec.items() if k not in ("nodes", "size", "custom_tags")}
    expected.update(cluster_spec["nodes"])
    expected.update(cluster_spec["size"])
    tags = {tag["key"]: tag["value"] for tag in cluster_spec.get("custom_tags", [])}
    expected["custom_tags"] = {**tags, "__dagster_version": dagster.__version__}
    return expected


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


def test_lab_asset_runs_on_databricks_through_the_step_launcher(lab_env, fake_databricks, instance, network_attempts):
    db, fake = lab_env.databricks, fake_databricks
    with run_lab_job(instance) as result:
        assert fake.jobs.remote_error is None, fake.jobs.remote_error
        assert result.success
        run_id = result.run_id

    # -- one Databricks run per step that takes the step launcher, as counted from the job ------------------------
    step_runs = {run["task"]["spark_python_task"]["python_file"].split("/")[-2]: run for run in fake.jobs.submitted}
    counted = databricks_runs(lab_launcher_job())
    assert counted == {STEP_KEY: 1, CHECK_STEP_KEY: 1}  # the summary takes no step launcher
    assert len(fake.jobs.submitted) == len(fake.runner_calls) == sum(counted.values())
    assert set(step_runs) == set(counted)

    # -- the submitted run: lab's cluster on lab's instance pool, run name, timeout, pinned libraries -----------------
    submitted, (run_config, _) = step_runs[STEP_KEY], fake.runner_calls[0]
    cluster_spec = json.loads((DEPLOYMENTS_DIR / "databricks" / db.cluster_spec).read_text())
    pool = {"instance_pool_id": db.instance_pool_id, "driver_instance_pool_id": db.instance_pool_id}
    assert run_config["cluster"] == {"new": {**cluster_spec, "nodes": pool}}
    # nothing lost on the way to the API: driver and workers from the pool, which decides the node type
    new_cluster = submitted["task"]["new_cluster"]
    assert new_cluster == api_cluster({**cluster_spec, "nodes": pool})
    assert new_cluster["instance_pool_id"] == new_cluster["driver_instance_pool_id"] == db.instance_pool_id
    assert not {"node_type_id", "driver_node_type_id", "aws_attributes"} & set(new_cluster)
    assert submitted["run_name"] == db.run_name == "aiml_assets-lab"
    assert submitted["timeout_seconds"] == db.timeout_seconds

    pins = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {"dagster==1.13.27", "dagster-databricks==0.29.27", "dagster-pyspark==0.29.27"} <= set(pins)
    # Exactly our pins, as PyPI libraries (dagster-databricks adds no unpinned defaults next to them), except pyspark:
    # the Databricks Runtime brings its own Spark, which a PyPI pyspark would shadow.
    libraries = submitted["task"]["libraries"]
    assert libraries == [{"pypi": {"package": pin}} for pin in pins if not pin.startswith("pyspark==")]
    assert not [lib for lib in libraries if lib["pypi"]["package"].startswith("pyspark==")]

    step_dir = f"{db.staging_prefix}/{run_id}/{STEP_KEY}"
    python_task = submitted["task"]["spark_python_task"]
    assert python_task["python_file"] == f"dbfs://{step_dir}/databricks_step_main.py"
    staged = ("step_run_ref.pkl", "config.pkl", "code.zip")
    assert python_task["parameters"] == [f"/dbfs/{step_dir}/{name}" for name in staged]

    # -- env variables and secrets of the remote process ---------------------------------------------------------------
    remote_config = pickle.loads(fake.dbfs.local(f"{step_dir}/config.pkl").read_bytes())
    assert remote_config.env_variables["AIML_ENV"] == "lab"
    assert remote_config.env_variables[db.host_env_var] == DATABRICKS_HOST  # the remote step rebuilds the launcher
    assert remote_config.env_variables["AIML_GIT_COMMIT"] == git_commit()  # a cluster has no .git
    # credentials travel as secret references, never as plain env variables in the pickled config
    assert not set(remote_config.env_variables) & {secret.name for secret in db.secrets}
    assert not [name for name in remote_config.env_variables if "TOKEN" in name or "SECRET" in name]
    assert remote_config.secrets == [secret.model_dump() for secret in db.secrets]
    assert {"name": "NEXUS_USERNAME", "scope": "aiml-lab", "key": "nexus-username"} in remote_config.secrets
    assert fake.dbutils.secret_reads == [(secret.scope, secret.key) for secret in db.secrets] * len(step_runs)
    assert fake.jobs.remote_env["AIML_ENV"] == "lab"  # the fake cluster process started without the orchestrator's
    for secret in db.secrets:
        assert fake.jobs.remote_env[secret.name] == fake_secret(secret.scope, secret.key)

    # -- the code bundle -----------------------------------------------------------------------------------------------
    with zipfile.ZipFile(fake.dbfs.local(f"{step_dir}/code.zip")) as bundle:
        names = set(bundle.namelist())
    assert {"aiml_assets/__init__.py", "resources/lab.yaml", f"deployments/databricks/{db.cluster_spec}"} <= names
    assert {"pyproject.toml", "requirements.lock"} <= names
    assert not [n for n in names if n.startswith((".venv/", "aiml_assets_tests/", ".git/")) or "__pycache__" in n]

    # -- the step's events, replayed into the run ----------------------------------------------------------------------
    materialization = instance.get_latest_materialization_event(ASSET_KEY)
    assert materialization is not None and materialization.run_id == run_id
    metadata = materialization.asset_materialization.metadata
    assert metadata["row_count"].value == 500  # counted by Spark inside the remote step
    assert metadata["aiml_env"].value == "lab"
    assert metadata["nexus_username_set"].value is True

    logs = instance.all_logs(run_id)
    step_messages = [e.user_message for e in logs if e.step_key == STEP_KEY and not e.is_dagster_event]
    assert any(m.startswith(f"{STEP_LOG_PREFIX} 500 even ids") for m in step_messages), step_messages
    event_types = [e.dagster_event_type for e in logs if e.is_dagster_event]
    assert DagsterEventType.STEP_SUCCESS in event_types and DagsterEventType.RUN_SUCCESS in event_types
    # both checks evaluated remotely, the in-step one in the asset's run, and replayed from their steps
    evaluations = {e.step_key: e.dagster_event.event_specific_data for e in logs
                   if e.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION}
    assert {step: (check.check_name, check.passed) for step, check in evaluations.items()} == {
        STEP_KEY: (IN_STEP_CHECK, True), CHECK_STEP_KEY: ("odd_ids_counted", True)}
    summary = instance.get_latest_materialization_event(AssetKey("launcher_probe_summary"))
    assert summary.run_id == run_id
    assert summary.asset_materialization.metadata["ran_on_a_cluster"].value is False  # no launcher: no cluster

    # -- polling at lab's interval until TERMINATED; no network --------------------------------------------------------
    assert fake.sleeps == [db.poll_interval_sec] * 2 * len(step_runs)  # each run's polls: RUNNING, TERMINATED
    assert fake.jobs.cancelled == []
    assert network_attempts == []


def test_failed_databricks_run_fails_the_dagster_run(lab_env, fake_databricks, instance, network_attempts):
    fake = fake_databricks
    fake.jobs.fail_with = "Library installation failed for library due to user error. pypi: mlflow==3.17.2"

    with run_lab_job(instance) as result:
        assert not result.success
        run_id = result.run_id

    assert len(fake.jobs.submitted) == 1
    logs = instance.all_logs(run_id)
    assert [e for e in logs if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION] == []
    assert instance.get_latest_materialization_event(ASSET_KEY) is None
    failures = [e.dagster_event for e in logs if e.dagster_event_type == DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    error = failures[0].step_failure_data.error
    assert "FAILED" in error.message and "Library installation failed" in error.message, error.message
    assert DagsterEventType.RUN_FAILURE in [e.dagster_event_type for e in logs if e.is_dagster_event]
    assert network_attempts == []


def test_remote_step_resolves_the_launcher_config_on_a_bare_cluster(lab_env, fake_databricks, instance):
    """The remote step rebuilds the launcher from its config on a cluster that has only what the run gives it
    (AIML_ENV and the host forwarded, secrets from the scope): no orchestrator variable may be needed there."""
    fake = fake_databricks

    with run_lab_job(instance) as result:
        assert fake.jobs.remote_error is None, fake.jobs.remote_error
        assert result.success
