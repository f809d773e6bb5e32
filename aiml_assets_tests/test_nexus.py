"""The Nexus resources: the same contract for the local folder and for a Nexus raw repository over HTTP.

The HTTP side runs against `nexus_server.NexusServer`, a loopback server that behaves like a Nexus 3 raw hosted
repository with "Disable redeploy"; the last tests check that the server itself behaves that way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dagster import EnvVar, build_resources
from nexus_server import NexusServer

from aiml_assets.resources.nexus import HttpNexus, LocalNexus, NexusChecksumError, NexusError, NexusRepository

REPO = "aiml-models"
USER, PASSWORD = "ci-publisher", "s3cret-pa55"
PATH = "nba_propensity/credit_card/1.4.0/model.pkl"
MODEL = b"\x80\x04model-bytes\x00" * 100


@dataclass
class Backend:
    """A Nexus resource plus direct access to the storage behind it, bypassing the resource."""

    nexus: NexusRepository
    raw: Callable[[str], bytes | None]  # stored bytes at a path, or None
    tamper: Callable[[str, bytes], None]  # overwrite the stored bytes at a path
    remove: Callable[[str], None]  # delete a stored path
    everything: Callable[[], list[str]]  # every file stored anywhere the backend could reach


@pytest.fixture
def server():
    with NexusServer(repositories=[REPO], username=USER, password=PASSWORD) as srv:
        yield srv


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "nexus" / REPO  # a "../../x" escape would land in tmp_path

    def raw(path):
        return (root / path).read_bytes() if (root / path).is_file() else None

    return Backend(
        nexus=LocalNexus(root=str(root)),
        raw=raw,
        tamper=lambda path, data: (root / path).write_bytes(data),
        remove=lambda path: (root / path).unlink(),
        everything=lambda: sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file()),
    )


def _http(server: NexusServer) -> Backend:
    def tamper(path, data):
        server.files[(REPO, path)] = data

    return Backend(
        nexus=HttpNexus(url=server.url, repository=REPO, username=USER, password=PASSWORD, timeout_seconds=5),
        raw=lambda path: server.files.get((REPO, path)),
        tamper=tamper,
        remove=lambda path: server.files.pop((REPO, path)),
        everything=lambda: sorted(f"{repo}/{path}" for repo, path in server.files),
    )


@pytest.fixture(params=["local", "http"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    return _http(request.getfixturevalue("server"))


# --- the shared contract -------------------------------------------------------------------------------------


def test_publish_then_fetch_round_trips(backend):
    nexus = backend.nexus
    assert not nexus.exists(PATH)
    digest = nexus.publish(PATH, MODEL)
    assert digest == hashlib.sha256(MODEL).hexdigest()
    assert nexus.exists(PATH)
    assert nexus.fetch(PATH) == MODEL
    assert backend.raw(PATH) == MODEL
    assert not nexus.exists("nba_propensity/credit_card/1.4.1/model.pkl")


def test_sidecar_holds_the_hex_sha256(backend):
    backend.nexus.publish(PATH, MODEL)
    expected = hashlib.sha256(MODEL).hexdigest()
    assert backend.raw(PATH + ".sha256") == expected.encode("ascii")
    assert backend.nexus.sha256(PATH) == expected


def test_republishing_identical_bytes_is_a_no_op(backend):
    first = backend.nexus.publish(PATH, MODEL)
    second = backend.nexus.publish(PATH, bytes(MODEL))
    assert first == second == hashlib.sha256(MODEL).hexdigest()
    assert backend.nexus.fetch(PATH) == MODEL


def test_different_bytes_at_a_published_path_are_refused(backend):
    original = backend.nexus.publish(PATH, MODEL)
    with pytest.raises(NexusError, match=r"already published.*immutable") as refused:
        backend.nexus.publish(PATH, MODEL + b"retrained")
    assert PATH in str(refused.value)
    assert not isinstance(refused.value, NexusChecksumError)
    assert backend.raw(PATH) == MODEL
    assert backend.nexus.sha256(PATH) == original
    assert backend.nexus.fetch(PATH) == MODEL


def test_tampered_binary_is_refused_on_fetch(backend):
    expected = backend.nexus.publish(PATH, MODEL)
    tampered = MODEL[:-1] + b"\x01"
    backend.tamper(PATH, tampered)
    with pytest.raises(NexusChecksumError) as mismatch:
        backend.nexus.fetch(PATH)
    message = str(mismatch.value)
    assert PATH in message and expected in message and hashlib.sha256(tampered).hexdigest() in message
    assert isinstance(mismatch.value, NexusError)


def test_republish_over_a_tampered_binary_is_refused(backend):
    backend.nexus.publish(PATH, MODEL)
    backend.tamper(PATH, b"not the model")
    with pytest.raises(NexusError, match="immutable"):
        backend.nexus.publish(PATH, MODEL)


def test_missing_path(backend):
    missing = "nba_propensity/mortgage/9.9.9/model.pkl"
    assert not backend.nexus.exists(missing)
    with pytest.raises(NexusError, match="not found") as not_found:
        backend.nexus.fetch(missing)
    assert missing in str(not_found.value) and not isinstance(not_found.value, NexusChecksumError)
    with pytest.raises(NexusError, match="not found"):
        backend.nexus.sha256(missing)


def test_binary_without_sidecar_is_not_served_and_republish_completes_it(backend):
    backend.nexus.publish(PATH, MODEL)
    backend.remove(PATH + ".sha256")  # as if the publisher died between the binary and its sidecar
    with pytest.raises(NexusError, match=r"\.sha256: not found"):
        backend.nexus.fetch(PATH)
    assert backend.nexus.publish(PATH, MODEL) == hashlib.sha256(MODEL).hexdigest()
    assert backend.nexus.fetch(PATH) == MODEL


@pytest.mark.parametrize("bad", ["../x", "../../x", "/abs", "a/../../x", "a//b", "a\\b", "", "m/model.pkl.sha256"])
def test_bad_paths_are_refused_before_any_io(backend, tmp_path, bad):
    if bad == "/abs":
        bad = f"{tmp_path}/abs"  # absolute, yet inside tmp_path: a regression must not write to the real /abs
    nexus = backend.nexus
    for call in (lambda: nexus.publish(bad, MODEL), lambda: nexus.fetch(bad), lambda: nexus.exists(bad)):
        with pytest.raises(NexusError, match="path|reserved"):
            call()
    assert backend.everything() == []


# --- HTTP specifics ----------------------------------------------------------------------------------------------


def test_http_wrong_credentials_fail_with_401_and_do_not_leak_the_password(server):
    nexus = HttpNexus(url=server.url, repository=REPO, username=USER, password="wrong-password")
    with pytest.raises(NexusError, match="401") as unauthorized:
        nexus.publish(PATH, MODEL)
    assert "wrong-password" not in str(unauthorized.value) and "wrong-password" not in repr(nexus)
    assert server.files == {}
    with pytest.raises(NexusError, match="401"):
        HttpNexus(url=server.url, repository=REPO).fetch(PATH)  # no credentials at all


def test_http_unknown_repository_is_an_error_with_status_and_url(server):
    nexus = HttpNexus(url=server.url, repository="no-such-repo", username=USER, password=PASSWORD)
    with pytest.raises(NexusError, match=r"HTTP 404 .*") as failed:
        nexus.publish(PATH, MODEL)
    assert f"{server.url}/repository/no-such-repo/{PATH}" in str(failed.value)


def test_http_publish_uses_put_to_repository_path_and_never_redeploys(server):
    nexus = _http(server).nexus
    nexus.publish(PATH, MODEL)
    nexus.publish(PATH, MODEL)
    puts = [(path, status) for method, path, status in server.requests if method == "PUT"]
    assert puts == [(f"/repository/{REPO}/{PATH}", 201), (f"/repository/{REPO}/{PATH}.sha256", 201)]


def test_http_immutability_does_not_rely_on_the_repository_policy():
    with NexusServer(repositories=[REPO], allow_redeploy=True) as lax:
        nexus = HttpNexus(url=lax.url, repository=REPO)
        nexus.publish(PATH, MODEL)
        with pytest.raises(NexusError, match="immutable"):
            nexus.publish(PATH, b"different")
        assert lax.files[(REPO, PATH)] == MODEL


class RacingServer(NexusServer):
    """Another publisher uploads `competitor` bytes right after our existence check (HEAD) on `PATH`."""

    def __init__(self, competitor: bytes):
        super().__init__(repositories=[REPO])
        self.competitor = competitor

    def handle(self, method, request_path, authorization, body):
        if method == "HEAD" and request_path.endswith(PATH) and self.competitor is not None:
            self.files[(REPO, PATH)], self.competitor = self.competitor, None
            return 404, "Not Found", b""  # our HEAD saw "not there yet"
        return super().handle(method, request_path, authorization, body)


@pytest.mark.parametrize("competitor, wins", [(MODEL, True), (b"someone else's model", False)])
def test_http_lost_race_is_resolved_by_comparing_contents(competitor, wins):
    with RacingServer(competitor) as racing:
        nexus = HttpNexus(url=racing.url, repository=REPO)
        if wins:
            assert nexus.publish(PATH, MODEL) == hashlib.sha256(MODEL).hexdigest()
            assert nexus.fetch(PATH) == MODEL
        else:
            with pytest.raises(NexusError, match="already published.*immutable"):
                nexus.publish(PATH, MODEL)
            assert racing.files[(REPO, PATH)] == competitor
        assert ("PUT", f"/repository/{REPO}/{PATH}", 400) in racing.requests


def test_http_credentials_wired_from_environment_variables(server, monkeypatch):
    monkeypatch.setenv("NEXUS_USERNAME", USER)
    monkeypatch.setenv("NEXUS_PASSWORD", PASSWORD)
    configured = HttpNexus(
        url=server.url, repository=REPO, username=EnvVar("NEXUS_USERNAME"), password=EnvVar("NEXUS_PASSWORD")
    )
    with build_resources({"nexus": configured}) as resources:  # resolves the EnvVars as a Dagster run does
        assert resources.nexus.publish(PATH, MODEL) == hashlib.sha256(MODEL).hexdigest()
    assert server.files[(REPO, PATH)] == MODEL
    assert PASSWORD not in repr(resources.nexus)


# --- the test server follows Nexus -------------------------------------------------------------------------------


def test_server_refuses_raw_redeploy_with_400(server):
    url, auth = f"{server.url}/repository/{REPO}/{PATH}", (USER, PASSWORD)
    assert requests.put(url, data=MODEL, auth=auth, timeout=5).status_code == 201
    for body in (MODEL, b"other bytes"):  # Nexus refuses any redeploy, identical bytes included
        refused = requests.put(url, data=body, auth=auth, timeout=5)
        assert refused.status_code == 400
        assert "does not allow updating assets" in refused.reason
    got = requests.get(url, auth=auth, timeout=5)
    assert (got.status_code, got.content) == (200, MODEL)
    assert requests.head(url, auth=auth, timeout=5).status_code == 200
    assert requests.head(url + ".missing", auth=auth, timeout=5).status_code == 404
    assert requests.get(url + ".missing", auth=auth, timeout=5).status_code == 404
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(f"{server.url}/repository/other/{PATH}", auth=auth, timeout=5).status_code == 404


def test_server_allows_redeploy_when_configured():
    with NexusServer(repositories=[REPO], allow_redeploy=True) as lax:
        url = f"{lax.url}/repository/{REPO}/{PATH}"
        assert requests.put(url, data=b"one", timeout=5).status_code == 201
        assert requests.put(url, data=b"two", timeout=5).status_code == 201
        assert requests.get(url, timeout=5).content == b"two"


def test_server_stops_cleanly():
    srv = NexusServer().start()
    url = srv.url
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/repository/{REPO}/x", timeout=2)
