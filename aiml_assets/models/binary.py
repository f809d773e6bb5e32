"""A registered model version as a binary in Nexus: `models/<name>/<version>/model.zip` and its `metadata.json`.

The model.zip is a deterministic zip of the MLflow model directory, so packaging the same version twice gives the
same bytes and republishing it is a no-op. What may be in it, and in what shape, is the Nexus resource's policy
(`model_files.MLFLOW_MODEL_FILES`, `nexus_metadata.ModelMetadata`); it is applied here too, so a bad directory or
metadata fails before anything is sent. A fetched model is loaded with `safe_artifact.load_model`, never with
MLflow's loader (which trusts the skops types the artifact lists).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiml_assets.models.training import REFERENCE_PROFILE
from aiml_assets.resources.nexus import (
    METADATA_JSON,
    MODEL_ZIP,
    PUBLISHABLE_PATH,
    NexusChecksumError,
    NexusRefused,
    NexusRepository,
    NexusUnavailable,
    model_file_problem,
    model_zip_entries,
    read_metadata,
)

if TYPE_CHECKING:  # MLflow loads where a binary is made, not with the code location
    from mlflow import MlflowClient

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can record: no build time leaks into the bytes
_REGULAR_FILE_0644 = 0o100644 << 16


@dataclass(frozen=True)
class NexusPaths:
    model: str
    metadata: str


def nexus_paths(name: str, version: int) -> NexusPaths:
    base = f"models/{name}/{version}"
    paths = NexusPaths(model=f"{base}/{MODEL_ZIP}", metadata=f"{base}/{METADATA_JSON}")
    if not PUBLISHABLE_PATH.fullmatch(paths.model):
        raise ValueError(f"{name!r} version {version!r}: expected a registered model name (lower-case letters, "
                         "digits, '_' and '.') and a positive integer version")
    return paths


def package_model(model_dir: Path, where: str | None = None) -> bytes:
    """A deterministic zip of the MLflow model directory `model_dir`: same files, same bytes. Refusals name `where`
    (the Nexus path it is packaged for, which names the model) or else the directory."""
    model_dir = Path(model_dir)
    where = where or str(model_dir)
    files = {path.relative_to(model_dir).as_posix(): path for path in model_dir.rglob("*")
             if path.is_symlink() or not path.is_dir()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            problem = model_file_problem(name) or ("is a symbolic link" if files[name].is_symlink() else None)
            if problem:
                raise NexusRefused(f"{where}: refused: {name!r} {problem}")
            entry = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            entry.external_attr, entry.create_system = _REGULAR_FILE_0644, 3  # 3: unix, wherever we run
            archive.writestr(entry, files[name].read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    data = buffer.getvalue()
    model_zip_entries(where, data)  # every check publish applies, before anything is sent
    return data


def version_metadata(client: MlflowClient, name: str, version: int, model_dir: Path) -> dict:
    """What metadata.json says about a registered version, from its MLflow run and its downloaded `model_dir`."""
    import mlflow

    run = client.get_run(client.get_model_version(name, str(version)).run_id)
    signature = mlflow.models.Model.load(str(Path(model_dir) / "MLmodel")).signature
    return {
        "name": name, "version": version, "mlflow_run_id": run.info.run_id,
        "metrics": run.data.metrics, "signature": signature.to_dict() if signature else None,
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "code_version": run.data.tags.get("code_version", "unknown"),
        "training_data": {k: run.data.tags.get(k) for k in
                          ("training_table", "training_table_version", "training_partitions")},
        "reference_profile": mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{REFERENCE_PROFILE}"),
    }


def publish_model(nexus: NexusRepository, name: str, version: int, model_dir: Path, metadata: dict) -> dict:
    """Publish the model directory as model.zip, then `metadata` plus the zip's sha256 as metadata.json (the
    promotion job takes a version as published only with both, each matching its sha256 sidecar)."""
    paths = nexus_paths(name, version)
    model = package_model(model_dir, where=paths.model)
    document = json.dumps({**metadata, "model_sha256": hashlib.sha256(model).hexdigest()},
                          sort_keys=True, indent=2, allow_nan=False).encode("utf-8")
    read_metadata(paths.metadata, document)  # bad metadata fails before the model is published without it
    try:
        model_sha256 = nexus.publish(paths.model, model)
        metadata_sha256 = nexus.publish(paths.metadata, document)
    except NexusUnavailable as exc:
        # What did arrive stays: a model.zip without its sidecar is never fetched, a version without metadata.json
        # never promoted, and publishing the same bytes again completes it.
        raise NexusUnavailable(f"{name} version {version}: not published, Nexus failed during publication: "
                               f"{exc}") from exc
    return {"model_path": paths.model, "model_sha256": model_sha256,
            "metadata_path": paths.metadata, "metadata_sha256": metadata_sha256}


def fetch_model(nexus: NexusRepository, name: str, version: int, dst: Path, expected_sha256: str | None = None) -> Path:
    """Unpack the published model.zip into the empty or new directory `dst` and return it. Its bytes must match
    Nexus's sha256 sidecar and, when given, `expected_sha256` (the release manifest's, which a sidecar rewritten
    beside a tampered binary cannot fake). Every file is checked as publication checks it before one is written.
    Load it with `safe_artifact.load_model(dst, ...)`."""
    path = nexus_paths(name, version).model
    entries = model_zip_entries(path, _fetch(nexus, path, expected_sha256))
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if any(dst.iterdir()):
        raise FileExistsError(f"{dst}: not empty; a fetched model gets a directory of its own")
    for file_name, content in entries.items():
        target = dst / file_name  # allow-listed names: nothing can land outside dst
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(content)
    return dst


def fetch_metadata(nexus: NexusRepository, name: str, version: int, expected_sha256: str | None = None) -> dict:
    """The published metadata.json, checked like `fetch_model`'s binary."""
    path = nexus_paths(name, version).metadata
    return read_metadata(path, _fetch(nexus, path, expected_sha256))


def _fetch(nexus: NexusRepository, path: str, expected_sha256: str | None) -> bytes:
    """The bytes at `path`, matching Nexus's sidecar (`fetch` checks it) and, when given, `expected_sha256`."""
    data = nexus.fetch(path)
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise NexusChecksumError(f"{path}: sha256 is {actual}, the release manifest says {expected_sha256}; "
                                 "refusing to use it")
    return data
