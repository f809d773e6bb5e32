"""Model binaries in Nexus: a folder locally, a Nexus 3 *raw* hosted repository remotely.

Published binaries are immutable and checksummed. `publish` stores the bytes and a `<path>.sha256` sidecar holding
the hex sha256; publishing identical bytes again is a no-op, different bytes at a published path are refused.
`fetch` recomputes the sha256 and refuses a binary that does not match its sidecar.

Only model binaries and their metadata may be published, at `models/<registered name>/<version>/model.zip` and
`.../metadata.json`: a model.zip holds exactly the files of an MLflow model directory, each in the shape MLflow
writes for our model (`model_files`), and no data; a metadata.json follows `nexus_metadata.ModelMetadata`, describes
that version and names the sha256 of its published model.zip. Anything else raises `NexusRefused` before a byte is
written, whichever implementation is behind; `model_zip_entries` and `read_metadata` apply the same rules on fetch.

Nexus raw repositories take an HTTP PUT of the bytes to `<url>/repository/<repo>/<path>` and serve them back on GET;
with the deployment policy "Disable redeploy" Nexus answers a PUT to an existing path with 400. We check before
writing too, so immutability does not rest on the repository's policy alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import tempfile
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import requests
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr, ValidationError

from aiml_assets.resources.mlflow_file_shapes import REGISTERED_NAME
from aiml_assets.resources.model_files import MLFLOW_MODEL_FILES, SERIALIZED_MODEL_FILES, shape_problem
from aiml_assets.resources.nexus_metadata import MAX_METADATA_BYTES, REQUIRED_METADATA_KEYS, ModelMetadata

SIDECAR_SUFFIX = ".sha256"
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class NexusError(RuntimeError):
    """A Nexus operation failed: missing object, refused write, bad path, HTTP error."""


class NexusUnavailable(NexusError):
    """Nexus could not be reached or answered with a server error: transient, worth retrying."""


class NexusChecksumError(NexusError):
    """A fetched binary does not match its published sha256."""


class NexusRefused(NexusError):
    """`publish` refused a path or content that is not a model binary or its metadata; nothing was written."""


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


# --- what may be published ---------------------------------------------------------------------------------------

MODEL_ZIP, METADATA_JSON = "model.zip", "metadata.json"
PUBLISHABLE_PATH = re.compile(
    rf"models/(?P<name>{REGISTERED_NAME})/(?P<version>[1-9][0-9]*)/(?P<file>model\.zip|metadata\.json)"
)

DATA_SUFFIXES = frozenset({
    ".parquet", ".pq", ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".avro", ".orc", ".arrow", ".feather",
    ".ipc", ".delta", ".npy", ".npz", ".h5", ".hdf5", ".xls", ".xlsx", ".db", ".sqlite", ".gz", ".zip",
})
# Data formats recognised by their bytes, whatever the file is called: checked at both ends (Parquet and Arrow
# files end with their magic too).
DATA_SIGNATURES = {
    b"PAR1": "Parquet", b"PARE": "encrypted Parquet", b"ARROW1": "Arrow IPC", b"FEA1": "Feather v1", b"ORC": "ORC",
    b"Obj\x01": "Avro", b"SQLite format 3\x00": "SQLite", b"\x89HDF\r\n\x1a\n": "HDF5", b"\x93NUMPY": "NumPy",
}


def _refused(where: str, rule: str) -> NexusRefused:
    return NexusRefused(f"{where}: refused: {rule}")


def publishable_path(path: str) -> re.Match:
    """The name, version and file of a path a model binary or its metadata may be published at."""
    match = PUBLISHABLE_PATH.fullmatch(path) if isinstance(path, str) else None
    if match is None:
        raise _refused(repr(path), f"not a publishable path: only models/<registered name>/<version>/"
                                   f"{{{MODEL_ZIP},{METADATA_JSON}}} (name: lower-case letters, digits, '_' and '.'; "
                                   "version: 1, 2, ...)")
    return match


def model_file_problem(name: str) -> str | None:
    """Why a file called `name` may not be part of a published model directory, or None if it may."""
    if name in MLFLOW_MODEL_FILES:
        return None
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or ":" in name:
        return "is an absolute path or escapes the model directory"
    if "_delta_log" in parts or PurePosixPath(name).suffix.lower() in DATA_SUFFIXES:
        return "is a data file; training data and scores are never published to Nexus"
    return f"is not a file of an MLflow model directory (allowed: {', '.join(sorted(MLFLOW_MODEL_FILES))})"


def data_format(content: bytes) -> str | None:
    """The data format `content` is recognisably in (Parquet, Arrow, ...), or None."""
    return next((f for magic, f in DATA_SIGNATURES.items() if content.startswith(magic) or content.endswith(magic)),
                None)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_END_OF_DIRECTORY = struct.Struct("<4s8xIIH")  # signature, ..., directory size, directory offset, comment length


def _only_its_entries(archive: zipfile.ZipFile, data: bytes) -> bool:
    """Whether `data` is exactly the archive's entries and its central directory. Zip readers skip anything else,
    so a Parquet file could otherwise ride along unseen before, between or after the entries."""
    offset = 0
    try:
        for info in sorted(archive.infolist(), key=lambda i: i.header_offset):
            signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(data, offset)
            if info.header_offset != offset or signature != b"PK\x03\x04" or info.flag_bits & 0x08:
                return False  # 0x08: sizes in a trailing data descriptor, which this walk cannot follow
            offset += _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
        end = len(data) - _END_OF_DIRECTORY.size
        signature, size, start, comment = _END_OF_DIRECTORY.unpack_from(data, end)
    except struct.error:
        return False
    return signature == b"PK\x05\x06" and not comment and start == offset and start + size == end


def model_zip_entries(where: str, data: bytes) -> dict[str, bytes]:
    """The files of a model.zip by name, once it is shown to hold exactly an MLflow model directory and no data."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise _refused(where, "not a zip archive; a model.zip is a packaged MLflow model directory") from None
    with archive:
        if not _only_its_entries(archive, data):
            raise _refused(where, "not a plain zip: bytes outside its entries, a comment, or streamed entries")
        names = archive.namelist()
        if len(set(names)) != len(names):
            raise _refused(where, "the zip lists an entry twice")
        entries = {}
        for info in archive.infolist():
            mode = info.external_attr >> 16
            problem = model_file_problem(info.filename) or (
                "is not a regular file" if mode and not stat.S_ISREG(mode) else None)
            if problem:
                raise _refused(where, f"entry {info.filename!r} {problem}")
            rule = MLFLOW_MODEL_FILES[info.filename]
            try:
                with archive.open(info) as entry:
                    content = entry.read(rule.max_bytes + 1)  # never inflates more than the cap
            except Exception as exc:  # corrupt, encrypted, unsupported compression: whatever zipfile raises
                raise _refused(where, f"entry {info.filename!r} cannot be read ({type(exc).__name__})") from None
            if len(content) > rule.max_bytes:
                raise _refused(where, f"entry {info.filename!r} is larger than {rule.max_bytes} bytes")
            if fmt := data_format(content):
                raise _refused(where, f"entry {info.filename!r} is {fmt} data; data is never published to Nexus")
            if problem := rule.problem(content):
                raise _refused(where, f"entry {info.filename!r} {problem}")
            entries[info.filename] = content
    serialized = [n for n in SERIALIZED_MODEL_FILES if n in entries]
    if "MLmodel" not in entries or len(serialized) != 1:
        raise _refused(where, f"an MLflow model directory has an MLmodel and one of {', '.join(SERIALIZED_MODEL_FILES)}"
                              f"; this one has {', '.join(sorted(entries)) or 'nothing'}")
    return entries


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not JSON")


def read_metadata(path: str, data: bytes) -> dict:
    """The metadata.json at `path`, once it is shown to follow the schema and describe the model of its path."""
    match = publishable_path(path)
    if len(data) > MAX_METADATA_BYTES:
        raise _refused(path, f"metadata larger than {MAX_METADATA_BYTES} bytes")
    try:
        metadata = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)  # strict: ours, read by others
    except (UnicodeDecodeError, ValueError):
        raise _refused(path, "metadata is not UTF-8 JSON") from None
    if not isinstance(metadata, dict):
        raise _refused(path, "metadata is not a JSON object")
    if missing := [key for key in REQUIRED_METADATA_KEYS if key not in metadata]:
        raise _refused(path, f"metadata misses required keys {missing}")
    try:
        ModelMetadata.model_validate(metadata)
    except ValidationError as exc:
        raise _refused(path, f"metadata {shape_problem(exc, 'in the metadata.json schema')}") from None
    if (metadata["name"], metadata["version"]) != (match["name"], int(match["version"])):
        raise _refused(path, f"metadata describes {metadata['name']!r} version {metadata['version']!r}, "
                             f"not {match['name']!r} version {match['version']} as its path says")
    return metadata


class NexusRepository(ConfigurableResource, ABC):
    """Immutable, checksummed binary store. Subclasses only move raw bytes."""

    def publish(self, path: str, data: bytes) -> str:
        """Store `data` at `path` with its sha256 sidecar and return the hex digest; idempotent for identical bytes.
        Refuses (`NexusRefused`) anything but a model.zip or its metadata.json, before writing anything."""
        self._refuse_unless_publishable(path, data)
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

    def _refuse_unless_publishable(self, path: str, data: bytes) -> None:
        if publishable_path(path)["file"] == MODEL_ZIP:
            model_zip_entries(path, data)
            return
        metadata = read_metadata(path, data)
        model = path.removesuffix(METADATA_JSON) + MODEL_ZIP
        published = self._get(model + SIDECAR_SUFFIX)
        if published is None or published.decode("ascii", "replace").strip() != metadata["model_sha256"]:
            raise _refused(path, f"model_sha256 {metadata['model_sha256']} is not the published sha256 of {model}; "
                                 "publish the model.zip first")

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
            raise NexusUnavailable(f"Nexus unreachable: {method} {url} failed: {type(exc).__name__}") from exc

    @staticmethod
    def _fail(response: requests.Response) -> NexusError:
        request = response.request
        error = NexusUnavailable if response.status_code >= 500 else NexusError
        return error(f"Nexus {request.method} {request.url}: HTTP {response.status_code} {response.reason}")

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
