"""Model binaries in Nexus: a folder locally, a Nexus 3 *raw* hosted repository remotely.

Published binaries are immutable and checksummed. `publish` stores the bytes and a `<path>.sha256` sidecar holding
the hex sha256; publishing identical bytes again is a no-op, different bytes at a published path are refused.
`fetch` recomputes the sha256 and refuses a binary that does not match its sidecar.

Nexus raw repositories take an HTTP PUT of the bytes to `<url>/repository/<repo>/<path>` and serve them back on GET;
with the deployment policy "Disable redeploy" Nexus answers a PUT to an existing path with 400. We check before
writing too, so immutability does not rest on the repository's policy alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote

import requests
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

SIDECAR_SUFFIX = ".sha256"
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class NexusError(RuntimeError):
    """A Nexus operation failed: missing object, refused write, bad path, HTTP error."""


class NexusChecksumError(NexusError):
    """A fetched binary does not match its published sha256."""


class _AlreadyExists(NexusError):
    """Raised by `_put` when the path is already taken; `publish` then compares contents."""


def _check_path(path: str) -> str:
    if not isinstance(path, str) or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise NexusError(f"{path!r}: expected a relative path with forward slashes, no '..', no leading '/'")
    if path.endswith(SIDECAR_SUFFIX):
        raise NexusError(f"{path!r}: paths ending in {SIDECAR_SUFFIX} are reserved for checksum sidecars")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NexusRepository(ConfigurableResource, ABC):
    """Immutable, checksummed binary store. Subclasses only move raw bytes."""

    def publish(self, path: str, data: bytes) -> str:
        """Store `data` at `path` with its sha256 sidecar and return the hex digest; idempotent for identical bytes."""
        digest = _sha256(data)
        self._put_once(_check_path(path), data)
        self._put_once(path + SIDECAR_SUFFIX, digest.encode("ascii"))
        return digest

    def fetch(self, path: str) -> bytes:
        """The bytes at `path`, verified against the sidecar."""
        data = self._require(_check_path(path))
        expected, actual = self.sha256(path), _sha256(data)
        if actual != expected:
            raise NexusChecksumError(f"{path}: checksum mismatch, expected sha256 {expected}, got {actual}")
        return data

    def exists(self, path: str) -> bool:
        return self._exists(_check_path(path))

    def sha256(self, path: str) -> str:
        """The published hex sha256 of `path`, as recorded in its sidecar."""
        digest = self._require(_check_path(path) + SIDECAR_SUFFIX).decode("ascii", "replace").strip()
        if not _HEX_SHA256.match(digest):
            raise NexusError(f"{path}{SIDECAR_SUFFIX}: not a hex sha256")
        return digest

    def _put_once(self, path: str, data: bytes) -> None:
        if not self._exists(path):
            try:
                return self._put(path, data)
            except _AlreadyExists:
                pass  # someone published it between our check and our write: compare below
        stored = self._require(path)
        if stored != data:
            raise NexusError(
                f"{path}: already published (sha256 {_sha256(stored)}) with different content "
                f"(sha256 {_sha256(data)}); published artifacts are immutable, publish a new version instead"
            )

    def _require(self, path: str) -> bytes:
        data = self._get(path)
        if data is None:
            raise NexusError(f"{path}: not found in {self._where()}")
        return data

    @abstractmethod
    def _put(self, path: str, data: bytes) -> None:
        """Create `path`; raise `_AlreadyExists` if it exists. Never overwrite."""

    @abstractmethod
    def _get(self, path: str) -> bytes | None:
        """The bytes at `path`, or None if it does not exist."""

    @abstractmethod
    def _exists(self, path: str) -> bool: ...

    @abstractmethod
    def _where(self) -> str:
        """Where the objects live, for error messages."""


class LocalNexus(NexusRepository):
    """A folder standing in for the Nexus repository."""

    root: str

    def _file(self, path: str) -> Path:
        return Path(self.root) / path

    def _put(self, path, data) -> None:
        target = self._file(path)
        if target.exists():
            raise _AlreadyExists(f"{path}: already exists in {self._where()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)  # readers see no file or the whole file, never half of one

    def _get(self, path) -> bytes | None:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            return None

    def _exists(self, path) -> bool:
        return self._file(path).is_file()

    def _where(self) -> str:
        return self.root


class HttpNexus(NexusRepository):
    """A Nexus 3 raw hosted repository, reached over HTTP(S) with basic auth."""

    url: str  # base URL of the Nexus server, e.g. https://nexus.example.com
    repository: str
    username: str | None = None
    password: str | None = Field(default=None, repr=False)  # from config (dagster.EnvVar); kept out of repr/messages
    timeout_seconds: float = 30

    _session: requests.Session | None = PrivateAttr(default=None)

    def _url(self, path: str) -> str:
        return f"{self.url.rstrip('/')}/repository/{quote(self.repository, safe='')}/{quote(path, safe='/')}"

    def _where(self) -> str:
        return f"Nexus repository {self.repository!r} at {self.url}"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        if self._session is None:
            self._session = requests.Session()
            if self.username is not None:
                self._session.auth = (self.username, self.password or "")
        url = self._url(path)
        try:
            return self._session.request(method, url, timeout=self.timeout_seconds, **kwargs)
        except requests.RequestException as exc:
            raise NexusError(f"{method} {url} failed: {type(exc).__name__}") from exc

    @staticmethod
    def _fail(response: requests.Response) -> NexusError:
        request = response.request
        return NexusError(f"{request.method} {request.url}: HTTP {response.status_code} {response.reason}")

    def _put(self, path, data) -> None:
        response = self._request("PUT", path, data=data, headers={"Content-Type": "application/octet-stream"})
        if response.ok:
            return
        if response.status_code in (400, 409) and self._exists(path):  # redeploy refused by the repository
            raise _AlreadyExists(f"{path}: already exists in {self._where()} (HTTP {response.status_code})")
        raise self._fail(response)

    def _get(self, path) -> bytes | None:
        response = self._request("GET", path)
        if response.status_code == 404:
            return None
        if not response.ok:
            raise self._fail(response)
        return response.content

    def _exists(self, path) -> bool:
        response = self._request("HEAD", path, allow_redirects=True)
        if response.status_code == 404:
            return False
        if not response.ok:
            raise self._fail(response)
        return True
