"""Model binaries in Nexus: a really trained, registered MLflow model version packaged, published to both Nexus
implementations, fetched back and loaded; and the same model forged to run code at load, refused at both ends."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io
from test_model_training import synthetic
from test_nexus import REPO, Backend, backend, forged_skops, server, trusting  # noqa: F401  (fixtures: both Nexuses)

from aiml_assets.inference.deployment import Deployment, DeploymentRefused, load_verified, reference_profile
from aiml_assets.models import registry
from aiml_assets.models.binary import (
    fetch_metadata,
    fetch_model,
    nexus_paths,
    package_model,
    publish_model,
    version_metadata,
)
from aiml_assets.resources.safe_artifact import TRUSTED_SKOPS_TYPES, UntrustedModel, load_model
from aiml_assets.models.training import (
    TrainedModel, log_and_register, model_requirements, prepare, registered_name, train,
)
from aiml_assets.resources.nexus import NexusChecksumError, NexusError, NexusRefused
from aiml_assets.resources.tracking import MlflowResource


@dataclass
class Registered:
    name: str
    version: int
    run_id: str
    model_dir: Path  # the registered version's artifacts, downloaded as the model_binary asset does
    trained: TrainedModel
    mlflow: MlflowResource


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    home = tmp_path_factory.mktemp("mlflow_home")
    resource = MlflowResource(tracking_uri="sqlite", registry_uri="sqlite", experiment="/aiml/test", home=str(home))
    rows = synthetic(n=300)
    latest = rows["snapshot_date"] == rows["snapshot_date"].max()
    rows.loc[rows.index[latest][:2], "days_since_last_contact"] = np.nan
    trained = train(rows)
    name = registered_name("aiml_local", "credit_card")
    run_id, version = log_and_register(trained, experiment_id=resource.activate(), name=name, product="credit_card",
                                       tags={"code_version": "test"})
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=str(home / "download"))
    return Registered(name, version, run_id, Path(model_dir), trained, resource)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> Path:
    """Another model for the same product, saved as an MLflow model directory (not registered)."""
    model_dir = tmp_path_factory.mktemp("retrained") / "model"
    mlflow.sklearn.save_model(train(synthetic(n=300, seed=4)).model, str(model_dir),
                              skops_trusted_types=list(TRUSTED_SKOPS_TYPES),
                              pip_requirements=model_requirements())  # skips MLflow's slow requirement inference
    return model_dir


def metadata_of(model: Registered, **overrides) -> dict:
    return {"name": model.name, "version": model.version, "mlflow_run_id": model.run_id,
            "metrics": model.trained.metrics, "signature": None, "git_commit": "0" * 40,
            "training_data": {"training_table": "aiml_local.lab.training_set"}, **overrides}


def stored(backend: Backend) -> dict[str, bytes]:
    """Every object in the Nexus repository, by path (the backends also see this test's own scratch files)."""
    return {path: backend.raw(path) for path in
            (p.split(f"{REPO}/", 1)[1] for p in backend.everything() if f"{REPO}/" in p)}


def test_nexus_paths_follow_the_model_layout():
    paths = nexus_paths("aiml_local.models.nba_propensity_credit_card", 7)
    assert paths.model == "models/aiml_local.models.nba_propensity_credit_card/7/model.zip"
    assert paths.metadata == "models/aiml_local.models.nba_propensity_credit_card/7/metadata.json"
    for name, version in [("Bad Name", 1), ("aiml_local.models.x", 0), ("aiml_local.models.x", True), ("../x", 1)]:
        with pytest.raises(ValueError, match="registered model name"):
            nexus_paths(name, version)


def test_packaging_is_deterministic(registered, tmp_path):
    first = package_model(registered.model_dir)
    assert package_model(registered.model_dir) == first
    copy = Path(shutil.copytree(registered.model_dir, tmp_path / "copy"))
    for file in copy.iterdir():  # other times and permissions on disk, same model
        os.utime(file, (1_000_000_000, 1_000_000_000))
        file.chmod(0o600)
    assert package_model(copy) == first
    with zipfile.ZipFile(BytesIO(first)) as archive:
        names = archive.namelist()
        assert names == sorted(names) == sorted(p.name for p in registered.model_dir.iterdir())
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_publish_fetch_round_trip_predicts_like_the_trained_model(backend, registered, tmp_path):
    published = publish_model(backend.nexus, registered.name, registered.version, registered.model_dir,
                              metadata_of(registered))
    paths = nexus_paths(registered.name, registered.version)
    model_zip = backend.raw(paths.model)
    assert model_zip == package_model(registered.model_dir)
    assert published == {
        "model_path": paths.model, "model_sha256": hashlib.sha256(model_zip).hexdigest(),
        "metadata_path": paths.metadata, "metadata_sha256": hashlib.sha256(backend.raw(paths.metadata)).hexdigest(),
    }
    assert backend.nexus.sha256(paths.model) == published["model_sha256"]  # what the promotion job reads
    assert fetch_metadata(backend.nexus, registered.name, registered.version) == {
        **json.loads(json.dumps(metadata_of(registered))), "model_sha256": published["model_sha256"]}

    model_dir = fetch_model(backend.nexus, registered.name, registered.version, tmp_path / "fetched")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == {
        p.name: p.read_bytes() for p in registered.model_dir.iterdir()}
    x = prepare(registered.trained.validation)
    loaded = load_model(model_dir, registered.name)
    np.testing.assert_array_equal(loaded.predict_proba(x), registered.trained.model.predict_proba(x))
    with pytest.raises(FileExistsError, match="not empty"):
        fetch_model(backend.nexus, registered.name, registered.version, model_dir)


def test_republishing_a_version_is_a_no_op_and_a_retrained_one_is_refused(backend, registered, retrained,
                                                                          tmp_path):
    metadata = metadata_of(registered)
    first = publish_model(backend.nexus, registered.name, registered.version, registered.model_dir, metadata)
    before = stored(backend)
    copy = shutil.copytree(registered.model_dir, tmp_path / "downloaded_again")
    assert publish_model(backend.nexus, registered.name, registered.version, copy, metadata) == first
    assert stored(backend) == before

    with pytest.raises(NexusError, match="immutable"):
        publish_model(backend.nexus, registered.name, registered.version, retrained, metadata)
    assert stored(backend) == before


def test_tampered_model_zip_is_refused_on_fetch(backend, registered, tmp_path):
    published = publish_model(backend.nexus, registered.name, registered.version, registered.model_dir,
                              metadata_of(registered))
    tampered = bytearray(backend.raw(published["model_path"]))
    tampered[len(tampered) // 2] ^= 0xFF
    backend.tamper(published["model_path"], bytes(tampered))
    with pytest.raises(NexusChecksumError, match=published["model_sha256"]):
        fetch_model(backend.nexus, registered.name, registered.version, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def parquet_file(path: Path) -> None:
    pq.write_table(pa.table({"customer_id": ["C00000001"], "spend_365d": [120.5], "label": [1]}), path)


@pytest.mark.parametrize("add, rule", [
    (lambda d: parquet_file(d / "train.parquet"), "'train.parquet' is a data file"),
    (lambda d: (d / "scores").mkdir() or (d / "scores" / "part-0.csv").write_text("customer_id,score\n"),
     "'scores/part-0.csv' is a data file"),
    (lambda d: parquet_file(d / "input_example.json"), "'input_example.json' is Parquet data"),
    (lambda d: (d / "requirements.txt").unlink() or (d / "requirements.txt").symlink_to(d / "model.skops"),
     "'requirements.txt' is a symbolic link"),
], ids=["parquet", "csv-in-a-folder", "parquet-named-as-a-model-file", "symlink"])
def test_a_model_directory_with_anything_but_the_model_is_refused(backend, registered, tmp_path, add, rule):
    model_dir = Path(shutil.copytree(registered.model_dir, tmp_path / "model"))
    add(model_dir)
    with pytest.raises(NexusRefused, match=rule):
        package_model(model_dir)
    with pytest.raises(NexusRefused, match=rule):
        publish_model(backend.nexus, registered.name, registered.version, model_dir, metadata_of(registered))
    assert stored(backend) == {}


def test_bad_metadata_is_refused_before_the_model_is_published(backend, registered):
    with pytest.raises(NexusRefused, match="not 'aiml_local.models.nba_propensity_credit_card' version 1"):
        publish_model(backend.nexus, registered.name, registered.version, registered.model_dir,
                      metadata_of(registered, version=registered.version + 1))
    with pytest.raises(NexusRefused, match=r"misses required keys \['git_commit'\]"):
        publish_model(backend.nexus, registered.name, registered.version, registered.model_dir,
                      {k: v for k, v in metadata_of(registered).items() if k != "git_commit"})
    assert stored(backend) == {}


def test_a_zip_planted_behind_the_policy_is_refused_on_fetch(backend, registered, tmp_path):
    """Someone with write access to the repository replaces the model.zip and its sidecar, adding training data."""
    publish_model(backend.nexus, registered.name, registered.version, registered.model_dir, metadata_of(registered))
    paths = nexus_paths(registered.name, registered.version)
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in registered.model_dir.iterdir():
            archive.write(file, file.name)
        archive.writestr("train.csv", "customer_id,label\nC00000001,1\n")
    backend.tamper(paths.model, buffer.getvalue())
    backend.tamper(paths.model + ".sha256", hashlib.sha256(buffer.getvalue()).hexdigest().encode())
    assert backend.nexus.fetch(paths.model) == buffer.getvalue()  # the checksum alone does not catch it
    with pytest.raises(NexusRefused, match="'train.csv' is a data file"):
        fetch_model(backend.nexus, registered.name, registered.version, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def test_a_model_logged_on_databricks_with_its_metadata_folder_is_publishable(backend, registered, tmp_path):
    """On a Databricks runtime MLflow copies MLmodel, conda.yaml, python_env.yaml and requirements.txt into
    `metadata/` (for Unity Catalog sharing); that is still only the model."""
    model_dir = Path(shutil.copytree(registered.model_dir, tmp_path / "model"))
    (model_dir / "metadata").mkdir()
    for name in ("MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt"):
        shutil.copy(model_dir / name, model_dir / "metadata" / name)
    published = publish_model(backend.nexus, registered.name, registered.version, model_dir, metadata_of(registered))
    fetched = fetch_model(backend.nexus, registered.name, registered.version, tmp_path / "fetched")
    assert (fetched / "metadata" / "MLmodel").read_bytes() == (model_dir / "MLmodel").read_bytes()
    assert published["model_sha256"] == backend.nexus.sha256(nexus_paths(registered.name, registered.version).model)
    (model_dir / "metadata" / "train.csv").write_text("customer_id,label\nC00000001,1\n")
    with pytest.raises(NexusRefused, match="'metadata/train.csv' is a data file"):
        package_model(model_dir)


def test_the_model_states_its_own_requirements_at_the_trained_versions(registered):
    from importlib.metadata import version

    requirements = (registered.model_dir / "requirements.txt").read_text().split()
    assert f"scikit-learn=={version('scikit-learn')}" in requirements and f"skops=={version('skops')}" in requirements
    assert not [r for r in requirements if r.startswith(("pytest", "rich", "dagster"))]  # nothing the process had


# --- issue 13: a model that lists a callable as trusted runs it in MLflow's loader; ours refuses it at both ends ------


def leave_marker(path: str) -> None:
    """The forged models' payload: any callable skops is told to trust runs at load; this one leaves a file."""
    Path(path).write_text("the forged model's code ran")


def forge(model_dir: Path, tmp_path: Path, *, in_mlmodel: bool = True, in_skops: bool = True) -> tuple[Path, Path]:
    """A copy of the MLflow model directory whose model.skops calls `leave_marker` when loaded and/or whose MLmodel
    lists it as a trusted type; and the marker file that call would leave."""
    marker, forged = tmp_path / "marker", Path(shutil.copytree(model_dir, tmp_path / "forged"))
    if in_skops:
        skops_file = forged / "model.skops"
        skops_file.write_bytes(forged_skops(skops_file.read_bytes(), __name__, "leave_marker", str(marker)))
    if in_mlmodel:
        (forged / "MLmodel").write_bytes(trusting((forged / "MLmodel").read_bytes(), f"{__name__}.leave_marker"))
    return forged, marker


FORGERIES = pytest.mark.parametrize("where", ["mlmodel", "skops", "both"])


def forge_in(where: str, model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    return forge(model_dir, tmp_path, in_mlmodel=where != "skops", in_skops=where != "mlmodel")


def test_the_trusted_types_are_exactly_what_our_model_needs(registered):
    assert skops.io.get_untrusted_types(file=registered.model_dir / "model.skops") == list(TRUSTED_SKOPS_TYPES)
    sklearn_flavor = mlflow.models.Model.load(str(registered.model_dir / "MLmodel")).flavors["sklearn"]
    assert sklearn_flavor["skops_trusted_types"] == list(TRUSTED_SKOPS_TYPES)


def test_the_forged_model_runs_its_code_under_mlflows_own_loader(registered, tmp_path):
    """The attack is real: MLflow trusts the types the artifact's MLmodel lists (which is why we never call it)."""
    forged, marker = forge(registered.model_dir, tmp_path)
    mlflow.sklearn.load_model(str(forged))
    assert marker.exists()


@FORGERIES
def test_a_forged_model_is_refused_at_publication_and_nothing_is_uploaded(backend, registered, tmp_path, where):
    forged, marker = forge_in(where, registered.model_dir, tmp_path)
    with pytest.raises(NexusRefused, match=rf"nba_propensity_credit_card/1/model.zip: .*{__name__}.leave_marker"):
        publish_model(backend.nexus, registered.name, registered.version, forged, metadata_of(registered))
    assert stored(backend) == {} and not marker.exists()


def test_a_forged_model_planted_in_nexus_is_refused_at_load_and_never_runs(backend, registered, tmp_path):
    """Someone with write access to Nexus replaces a published model.zip and its sidecar, and the release manifest
    pins the forged bytes' sha256: every pin matches, the code still must not run."""
    publish_model(backend.nexus, registered.name, registered.version, registered.model_dir, metadata_of(registered))
    forged, marker = forge(registered.model_dir, tmp_path)
    planted = package_model_unchecked(forged)
    paths = nexus_paths(registered.name, registered.version)
    backend.tamper(paths.model, planted)
    backend.tamper(paths.model + ".sha256", hashlib.sha256(planted).hexdigest().encode())
    pinned = deployment_of(registered, hashlib.sha256(planted).hexdigest())
    with pytest.raises(DeploymentRefused, match=rf"credit_card champion .*: refused: .*{__name__}.leave_marker"):
        load_verified(backend.nexus, pinned, tmp_path / "deploy")
    assert not marker.exists()


@FORGERIES
def test_loading_a_forged_directory_is_refused_before_skops_runs(registered, tmp_path, where):
    """The load-time check on its own, as for a model downloaded from the MLflow registry (registry.load)."""
    forged, marker = forge_in(where, registered.model_dir, tmp_path)
    with pytest.raises(UntrustedModel, match=rf"credit_card version 1: refused: .*{__name__}.leave_marker"):
        load_model(forged, f"{registered.name} version 1")
    assert not marker.exists()


def test_our_model_published_with_its_real_metadata_loads_in_a_deployment(backend, registered, tmp_path):
    metadata = version_metadata(registered.mlflow.client(), registered.name, registered.version,
                                registered.model_dir)
    assert metadata["reference_profile"]["features"] and metadata["signature"]
    published = publish_model(backend.nexus, registered.name, registered.version, registered.model_dir, metadata)
    deployment = deployment_of(registered, published["model_sha256"], published["metadata_sha256"])
    x = prepare(registered.trained.validation)
    model = load_verified(backend.nexus, deployment, tmp_path / "deploy")
    np.testing.assert_array_equal(model.predict_proba(x), registered.trained.model.predict_proba(x))
    assert reference_profile(backend.nexus, deployment) == registered.trained.reference_profile
    registered.mlflow.activate()
    from_registry = registry.load(registered.name, registered.version)
    np.testing.assert_array_equal(from_registry.predict_proba(x), registered.trained.model.predict_proba(x))


def deployment_of(model: Registered, model_sha256: str, metadata_sha256: str = "0" * 64) -> Deployment:
    return Deployment("credit_card", "champion", model.name, model.version, model_sha256, metadata_sha256,
                      "CHG0000001")


def package_model_unchecked(model_dir: Path) -> bytes:
    """A zip of the directory as an attacker writes it, without the policy `package_model` applies."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(model_dir.iterdir()):
            archive.write(file, file.name)
    return buffer.getvalue()
