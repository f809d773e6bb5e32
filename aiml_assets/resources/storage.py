"""The environment's own buckets: folders under the AIML home locally, S3 remotely.

Assets ask for a location by bucket role (`lab`, `scoring`, `publication`) and a relative key; they never build
URIs themselves, so IO can only reach the buckets the environment file names.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import boto3
from botocore.exceptions import ClientError
from dagster import ConfigurableResource


class StorageError(PermissionError):
    """IO outside the environment's own buckets, or to a bucket role the environment does not have."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object: on a versioned S3 bucket a deletion leaves the data as a noncurrent version under
    a delete marker; local folders keep only the current version (`version_id` None)."""

    key: str
    version_id: str | None
    last_modified: datetime
    is_latest: bool = True
    delete_marker: bool = False


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts:
        raise StorageError(f"{key!r}: expected a relative key inside the bucket")
    return key


class Storage(ConfigurableResource, ABC):
    buckets: dict[str, str]  # role -> bucket root, as in resources/<env>.yaml

    def root(self, role: str) -> str:
        if role not in self.buckets:
            raise StorageError(f"this environment has no {role!r} bucket; it has {sorted(self.buckets)}")
        return self.buckets[role]

    def uri(self, role: str, key: str) -> str:
        return f"{self.root(role).rstrip('/')}/{_check_key(key)}"

    @abstractmethod
    def put(self, role: str, key: str, data: bytes) -> str: ...

    @abstractmethod
    def create(self, role: str, key: str, data: bytes) -> bool:
        """Write `key` only if no object is there: True if this call created it, False if one already was (atomic:
        of two racing writers exactly one creates it)."""

    @abstractmethod
    def get(self, role: str, key: str) -> bytes: ...

    @abstractmethod
    def list(self, role: str, prefix: str = "") -> Iterator[StoredObject]: ...

    @abstractmethod
    def delete(self, role: str, key: str) -> None: ...

    @abstractmethod
    def versions(self, role: str, prefix: str = "") -> Iterator[ObjectVersion]:
        """Every version of every object under `prefix`, delete markers included."""

    @abstractmethod
    def destroy(self, version: ObjectVersion, role: str) -> None:
        """Remove one version for good (unlike `delete`, which on a versioned bucket keeps the data recoverable)."""


class LocalStorage(Storage):
    """Buckets as folders under the AIML home."""

    home: str

    def root(self, role: str) -> str:
        return str(Path(self.home) / super().root(role))

    def put(self, role, key, data) -> str:
        path = Path(self.uri(role, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)  # readers see the old object or the new one, never half of one
        return str(path)

    def create(self, role, key, data) -> bool:
        path = Path(self.uri(role, key))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            tmp.write(data)
        try:  # a hard link is created whole or not at all: no reader or kill ever sees it empty
            os.link(tmp.name, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp.name)
        return True

    def get(self, role, key) -> bytes:
        return Path(self.uri(role, key)).read_bytes()

    def list(self, role, prefix=""):
        root = Path(self.root(role))
        for path in sorted(root.rglob("*")):
            key = path.relative_to(root).as_posix()
            if path.is_file() and key.startswith(prefix):
                stat = path.stat()
                yield StoredObject(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))

    def delete(self, role, key) -> None:
        Path(self.uri(role, key)).unlink(missing_ok=True)
        self._prune_empty_folders(role, key)

    def versions(self, role, prefix=""):
        for item in self.list(role, prefix):
            yield ObjectVersion(item.key, None, item.last_modified)

    def destroy(self, version, role) -> None:
        self.delete(role, version.key)

    def _prune_empty_folders(self, role: str, key: str) -> None:
        root, folder = Path(self.root(role)), Path(self.uri(role, key)).parent
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


class S3Storage(Storage):
    """Buckets on S3 (credentials from the cluster's instance profile or the standard AWS env vars)."""

    region: str = "eu-west-2"
    endpoint_url: str | None = None
    # Every write asks for SSE-KMS under this key (settings.storage.kms_key_alias), not only the bucket's default:
    # the buckets' policy refuses a write asking for any other encryption
    kms_key_alias: str | None = None

    def client(self):
        """The S3 client; also for bucket-level settings (the bucket posture) of the environment's buckets."""
        return boto3.client("s3", region_name=self.region, endpoint_url=self.endpoint_url)

    def encryption(self) -> dict[str, str]:
        """The encryption parameters of every PutObject."""
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_alias} if self.kms_key_alias else {}

    def delta_storage_options(self) -> dict[str, str]:
        """delta-rs (object_store) options for these buckets: region, endpoint, and the same encryption headers."""
        options = {"AWS_REGION": self.region} | ({"AWS_ENDPOINT_URL": self.endpoint_url} if self.endpoint_url else {})
        if self.kms_key_alias:
            options |= {"aws_server_side_encryption": "aws:kms", "aws_sse_kms_key_id": self.kms_key_alias}
        return options

    def _split(self, role: str, key: str = "") -> tuple[str, str]:
        root = self.root(role).removeprefix("s3://")
        bucket, _, base = root.partition("/")
        return bucket, "/".join(part for part in (base.strip("/"), key) if part)

    def put(self, role, key, data) -> str:
        bucket, full_key = self._split(role, _check_key(key))
        self.client().put_object(Bucket=bucket, Key=full_key, Body=data, **self.encryption())  # atomic per object
        return f"s3://{bucket}/{full_key}"

    def create(self, role, key, data) -> bool:
        bucket, full_key = self._split(role, _check_key(key))
        try:  # S3 conditional write: refused with 412 when the key exists, 409 while another create of it is open
            self.client().put_object(Bucket=bucket, Key=full_key, Body=data, IfNoneMatch="*", **self.encryption())
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def get(self, role, key) -> bytes:
        bucket, full_key = self._split(role, _check_key(key))
        return self.client().get_object(Bucket=bucket, Key=full_key)["Body"].read()

    def list(self, role, prefix=""):
        bucket, base = self._split(role)
        full_prefix = "/".join(part for part in (base, prefix) if part)
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full_prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(base) + 1:] if base else item["Key"]
                yield StoredObject(key, item["Size"], item["LastModified"])

    def delete(self, role, key) -> None:
        bucket, full_key = self._split(role, _check_key(key))
        self.client().delete_object(Bucket=bucket, Key=full_key)

    def versions(self, role, prefix=""):
        bucket, base = self._split(role)
        full_prefix = "/".join(part for part in (base, prefix) if part)
        pages = self.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=full_prefix)
        for page in pages:
            for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                for item in page.get(kind, []):
                    key = item["Key"][len(base) + 1:] if base else item["Key"]
                    yield ObjectVersion(key, item["VersionId"], item["LastModified"], item["IsLatest"], marker)

    def destroy(self, version, role) -> None:
        bucket, full_key = self._split(role, _check_key(version.key))
        self.client().delete_object(Bucket=bucket, Key=full_key, VersionId=version.version_id or "null")
