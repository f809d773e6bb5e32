"""The UI: a real dagster-webserver serves the code location from workspace.yaml; we read it over GraphQL."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from aiml_assets.settings import PROJECT_ROOT

ASSET_NODES = """
{ assetNodes { assetKey { path } groupName isObservable isMaterializable kinds
               owners { ... on TeamAssetOwner { team } }
               dependencyKeys { path } dependedByKeys { path } } }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(tmp_path):
    port = _free_port()
    env = {**os.environ, "AIML_ENV": "local", "AIML_HOME": str(tmp_path / "aiml"),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    log = open(tmp_path / "webserver.log", "w")
    webserver_bin = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen(
        [str(webserver_bin), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail("dagster-webserver did not come up in 180 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _query(url: str, query: str) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query}, timeout=60)
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
