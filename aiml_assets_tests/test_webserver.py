"""The UI: a real dagster-webserver serves the code location from workspace.yaml; we read it over GraphQL.

And the remote environments' processes as deployments/dagster/remote starts them: prod's code server and read-only
webserver, serving a tiny stand-in for aiml_assets (the real one takes a minute to import)."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from aiml_assets.settings import PROJECT_ROOT

REMOTE = PROJECT_ROOT / "deployments" / "dagster" / "remote"
VENV_BIN = Path(sys.executable).parent
ASSET_NODES = """
{ assetNodes { assetKey { path } groupName isObservable isMaterializable kinds
               owners { ... on TeamAssetOwner { team } }
               dependencyKeys { path } dependedByKeys { path } } }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(probe: Callable[[], bool]) -> bool:
    try:
        return probe()
    except Exception:
        return False


@contextmanager
def _serving(command: list, env: dict, log_path: Path, ready: Callable[[], bool], cwd=None, timeout: float = 180):
    """Start a server process, wait until `ready` answers, stop it on exit."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(part) for part in command], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(ready):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                if time.monotonic() > deadline:
                    pytest.fail(f"{Path(command[0]).name} did not come up in {timeout} s")
                time.sleep(1)
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _eventually(probe: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _answers(probe):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _server_info_ok(url: str) -> Callable[[], bool]:
    return lambda: requests.get(f"{url}/server_info", timeout=2).ok


@pytest.fixture
def webserver(tmp_path):
    port = _free_port()
    env = {**os.environ, "AIML_ENV": "local", "AIML_HOME": str(tmp_path / "aiml"),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    url = f"http://127.0.0.1:{port}"
    command = [VENV_BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port]
    with _serving(command, env, tmp_path / "webserver.log", _server_info_ok(url), cwd=PROJECT_ROOT):
        yield url


def _query(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.slow
def test_webserver_serves_the_asset_graph(webserver):
    # The code location loads asynchronously after the server answers; wait for its asset nodes.
    deadline = time.monotonic() + 120
    while not (nodes := _query(webserver, ASSET_NODES)["assetNodes"]) and time.monotonic() < deadline:
        time.sleep(2)
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    sources = {"edp/fdp/customers", "edp/fdp/transactions", "edp/cdp/product_holdings", "edp/bdp/campaign_responses"}
    assert sources <= set(by_key)
    for key in sources:
        node = by_key[key]
        assert node["groupName"] == "edp_sources"
        assert node["isObservable"] and not node["isMaterializable"]
        assert "unity-catalog" in node["kinds"]
        assert {"team": "edp"} in node["owners"]
        assert node["dependencyKeys"] == []  # EDP products are the roots of the lineage
    # the lineage the HLD draws: EDP products -> lab features -> training set -> model versions -> Nexus binaries
    def upstream(key):
        return {"/".join(d["path"]) for d in by_key[key]["dependencyKeys"]}

    assert sources <= upstream("lab/customer_features")
    assert "lab/customer_features" in upstream("lab/training_set")
    assert upstream("models/propensity_model") == {"lab/training_set"}
    assert upstream("models/model_binary") == {"models/propensity_model"}
    # ... -> deployed models (from Nexus) -> scores (with the scoring features of the same EDP products) -> CDP
    assert upstream("prod/deployed_model") == {"models/model_binary"}
    assert sources <= upstream("prod/scoring_features")
    assert upstream("prod/propensity_scores") == {"prod/scoring_features", "prod/deployed_model"}
    assert upstream("cdp/nba_propensity") == {"prod/propensity_scores", "prod/scoring_features", "prod/deployed_model"}
    assert by_key["cdp/nba_propensity"]["groupName"] == "prod_inference"
    assert by_key["lab/customer_features"]["groupName"] == "lab_features"
    assert by_key["models/propensity_model"]["groupName"] == "model_versions"
    # every dependency edge the server reports points at a node it also serves
    for node in nodes:
        for dep in node["dependencyKeys"] + node["dependedByKeys"]:
            assert "/".join(dep["path"]) in by_key


# --- prod: code server + read-only webserver, started by deployments/dagster/remote's scripts -----------------

LOCATION = {"repositoryLocationName": "aiml_assets", "repositoryName": "__repository__"}
ASSET_KEYS = "{ assetNodes { assetKey { path } } }"
RELOAD = 'mutation { reloadRepositoryLocation(repositoryLocationName: "aiml_assets") { __typename } }'


def _release(location_dir: Path, name: str, assets: list[str]) -> None:
    """Unpack a stand-in release (a package named aiml_assets, as code-server.sh loads) and switch `current` to it."""
    package = location_dir / "releases" / name / "aiml_assets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        "import dagster as dg\n"
        'products = dg.StaticPartitionsDefinition(["mortgage", "savings"])\n'
        + "".join(f"@dg.asset(partitions_def=products)\ndef {asset}() -> None: ...\n" for asset in assets)
        + f"defs = dg.Definitions(assets=[{', '.join(assets)}],\n"
        '                       jobs=[dg.define_asset_job("daily_scoring", partitions_def=products)])\n'
    )
    current = location_dir / "current"
    current.unlink(missing_ok=True)
    current.symlink_to(Path("releases") / name)


def _asset_keys(url: str) -> set[str]:
    return {"/".join(node["assetKey"]["path"]) for node in _query(url, ASSET_KEYS)["assetNodes"]}


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    from dagster._grpc.client import DagsterGrpcClient

    root = tmp_path_factory.mktemp("prod")
    (root / "dagster").mkdir()
    _release(root / "code_location", "v1", ["scores"])
    code_port, web_port = _free_port(), _free_port()
    env = {**os.environ, "AIML_ENV": "prod", "DAGSTER_HOME": str(root / "dagster"), "AIML_BIND_HOST": "127.0.0.1",
           "AIML_CODE_LOCATION_DIR": str(root / "code_location"), "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
           "DAGSTER_CODE_SERVER_PORT": str(code_port), "DAGSTER_WEBSERVER_PORT": str(web_port),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    url = f"http://127.0.0.1:{web_port}"
    client = DagsterGrpcClient(host="127.0.0.1", port=code_port)
    with ExitStack() as stack:
        for script, ready in (("code-server.sh", lambda: bool(client.get_server_id(timeout=2))),
                              ("webserver.sh", _server_info_ok(url))):
            stack.enter_context(_serving([REMOTE / script], env, root / f"{script}.log", ready, cwd=root))
        assert _eventually(lambda: _asset_keys(url) == {"scores"}, timeout=60)
        yield SimpleNamespace(url=url, env=env, root=root, code_port=code_port)


def _mutation(field: str, argument: str, input_type: str) -> str:
    return (f"mutation($params: {input_type}!) {{ {field}({argument}: $params) {{ __typename "
            "... on PythonError { message } ... on UnauthorizedError { message } } }")


@pytest.mark.slow
def test_prod_webserver_refuses_launch_reexecute_and_backfill(prod):
    """The same requests a writable webserver accepts (here in-process against the same code server) are refused."""
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    launch = {"selector": {**LOCATION, "jobName": "daily_scoring"},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "mortgage"},
                                             {"key": "dagster/schedule_name", "value": "daily_scoring_schedule"}]}}
    mutations = [
        ("launchRun", "executionParams", "ExecutionParams", launch),
        ("launchPipelineExecution", "executionParams", "ExecutionParams", launch),
        ("launchRunReexecution", "reexecutionParams", "ReexecutionParams", None),  # parent filled in below
        ("launchPipelineReexecution", "reexecutionParams", "ReexecutionParams", None),
        ("launchPartitionBackfill", "backfillParams", "LaunchBackfillParams",
         {"assetSelection": [{"path": ["scores"]}], "partitionNames": ["mortgage", "savings"]}),
    ]
    target = GrpcServerTarget(host="127.0.0.1", port=prod.code_port, socket=None, location_name="aiml_assets")
    with (DagsterInstance.from_config(prod.env["DAGSTER_HOME"]) as instance,
          WorkspaceProcessContext(instance, target) as writable):
        # a failed scheduled run: the parent the issue's attack re-executes from the UI
        execute_dagster_graphql(writable.create_request_context(), _mutation(*mutations[0][:3]), {"params": launch})
        parent = instance.get_runs(limit=1)[0]
        instance.report_run_failed(parent)
        for field, argument, input_type, params in mutations:
            params = params or {"parentRunId": parent.run_id, "strategy": "FROM_FAILURE"}
            query = _mutation(field, argument, input_type)
            accepted = execute_dagster_graphql(writable.create_request_context(), query, {"params": params}).data[field]
            assert accepted["__typename"] in ("LaunchRunSuccess", "LaunchBackfillSuccess"), accepted

            runs, backfills = instance.get_runs_count(), len(instance.get_backfills())
            refused = _query(prod.url, query, {"params": params})[field]
            assert refused["__typename"] == "UnauthorizedError", (field, refused)
            assert (instance.get_runs_count(), len(instance.get_backfills())) == (runs, backfills)


@pytest.mark.slow
def test_deploy_reload_reaches_the_read_only_webserver_through_the_code_server(prod):
    assert _query(prod.url, RELOAD)["reloadRepositoryLocation"]["__typename"] == "UnauthorizedError"
    _release(prod.root / "code_location", "v2", ["scores", "published"])  # the deploy job: unpack, switch `current`

    reload = subprocess.run([sys.executable, PROJECT_ROOT / "deployments" / "gitlab" / "reload_code_location.py"],
                            env=prod.env, capture_output=True, text=True, timeout=300)
    assert reload.returncode == 0, reload.stderr[-3000:]
    # the webserver polls the code server's id every second and fetches the new definitions when it changes
    assert _eventually(lambda: _asset_keys(prod.url) == {"scores", "published"}, timeout=30)
