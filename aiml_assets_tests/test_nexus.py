"""The Nexus resources: the same contract for the local folder and for a Nexus raw repository over HTTP.

The HTTP side runs against `nexus_server.NexusServer`, a loopback server that behaves like a Nexus 3 raw hosted
repository with "Disable redeploy"; the last tests check that the server itself behaves that way. What is published
is a small but valid model.zip (a skops-serialized scikit-learn model plus the MLflow files around it) and its
metadata.json; the publication policy's refusals are checked on both implementations.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import skops.io
import yaml
from dagster import EnvVar, build_resources
from nexus_server import NexusServer
from sklearn.linear_model import LogisticRegression

from aiml_assets.models.training import model_requirements
from aiml_assets.resources.model_files import MAX_TEXT_BYTES
from aiml_assets.resources.nexus import (
    REQUIRED_METADATA_KEYS,
    HttpNexus,
    LocalNexus,
    NexusChecksumError,
    NexusError,
    NexusRefused,
    NexusRepository,
)

REPO = "aiml-models"
USER, PASSWORD = "ci-publisher", "s3cret-pa55"
NAME, VERSION = "aiml_local.models.nba_propensity_credit_card", 3
PATH = f"models/{NAME}/{VERSION}/model.zip"
META_PATH = f"models/{NAME}/{VERSION}/metadata.json"


def zip_of(entries: dict[str, bytes], mode: int = stat.S_IFREG | 0o644) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names one test writes on purpose
        for name, content in entries.items() if isinstance(entries, dict) else entries:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr, entry.compress_type = mode << 16, zipfile.ZIP_DEFLATED
            archive.writestr(entry, content)
    return buffer.getvalue()


FEATURES = pd.DataFrame({"tenure_days": [10.0, 200.0, 900.0, 3000.0], "spend_365d": [5.0, 50.0, 500.0, 5000.0]})


def skops_model(c: float) -> bytes:
    return skops.io.dumps(LogisticRegression(C=c).fit(FEATURES, [0, 0, 1, 1]))


def mlflow_model_files() -> dict[str, bytes]:
    """What MLflow writes for a small skops-serialized model of two of our feature columns, with our pins."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.sklearn.save_model(LogisticRegression(C=1.0).fit(FEATURES, [0, 0, 1, 1]), f"{tmp}/model",
                                  serialization_format="skops", pip_requirements=model_requirements(),
                                  input_example=FEATURES.iloc[:1])
        return {path.name: path.read_bytes() for path in sorted(Path(tmp, "model").iterdir())}


MODEL_FILES = mlflow_model_files()
MLMODEL = MODEL_FILES["MLmodel"]
MODEL = zip_of(MODEL_FILES)
RETRAINED = zip_of({**MODEL_FILES, "model.skops": skops_model(0.1)})  # the same version, trained again


def forged_skops(data: bytes, module: str, name: str, *args) -> bytes:
    """The skops archive `data` with its top object's last attribute loaded by calling `module.name(*args)`: skops's
    ConstructorFromReduceNode calls its type with its content, so whoever trusts that name runs it."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    schema = json.loads(files["schema.json"])
    arguments = [{"__class__": type(a).__name__, "__module__": "builtins", "__loader__": "JsonNode",
                  "content": json.dumps(a), "is_json": True, "__id__": 3 + i} for i, a in enumerate(args)]
    attributes = schema["content"]["content"]  # replaced, not added: skops pairs the keys with a list of key types
    attributes[list(attributes)[-1]] = {
        "__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode", "__id__": 1,
        "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 2,
                    "content": arguments},
    }
    return zip_of({**files, "schema.json": json.dumps(schema).encode()})


def trusting(mlmodel: bytes, *types: str) -> bytes:
    """The MLmodel `mlmodel` also listing `types` as skops trusted types, as an attacker writes it."""
    document = yaml.safe_load(mlmodel)
    flavor = document["flavors"]["sklearn"]
    flavor["skops_trusted_types"] = [*(flavor.get("skops_trusted_types") or []), *types]
    return yaml.safe_dump(document).encode()


def metadata(**overrides) -> bytes:
    document = {"name": NAME, "version": VERSION, "metrics": {"roc_auc": 0.71}, "signature": None,
                "git_commit": "0" * 40, "training_data": {"training_table": "aiml_local.lab.training_set"},
                "model_sha256": hashlib.sha256(MODEL).hexdigest(), **overrides}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


METADATA = metadata()
TRAINING_ROWS = pa.table({"customer_id": ["C00000001", "C00000002"], "spend_365d": [120.5, 80.0], "label": [1, 0]})
CSV = b"customer_id,spend_365d,label\nC00000001,120.5,1\nC00000002,80.0,0\n"


def parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(TRAINING_ROWS, buffer)
    return buffer.getvalue()


PARQUET = parquet_bytes()


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


def local_backend(tmp_path: Path) -> Backend:
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


def http_backend(server: NexusServer) -> Backend:
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
        return local_backend(tmp_path)
    return http_backend(request.getfixturevalue("server"))


# --- the shared contract -------------------------------------------------------------------------------------


def test_publish_then_fetch_round_trips(backend):
    nexus = backend.nexus
    assert not nexus.exists(PATH)
    digest = nexus.publish(PATH, MODEL)
    assert digest == hashlib.sha256(MODEL).hexdigest()
    assert nexus.exists(PATH)
    assert nexus.fetch(PATH) == MODEL
    assert backend.raw(PATH) == MODEL
    assert not nexus.exists(f"models/{NAME}/{VERSION + 1}/model.zip")
    assert nexus.publish(META_PATH, METADATA) == hashlib.sha256(METADATA).hexdigest()
    assert nexus.fetch(META_PATH) == METADATA


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
        backend.nexus.publish(PATH, RETRAINED)
    assert PATH in str(refused.value)
    assert not isinstance(refused.value, (NexusChecksumError, NexusRefused))
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
    missing = "models/aiml_local.models.nba_propensity_mortgage/9/model.zip"
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


@pytest.mark.parametrize("bad", ["../x", "../../x", "/abs", "a/../../x", "a//b", "a\\b", "", f"{PATH}.sha256"])
def test_bad_paths_are_refused_before_any_io(backend, tmp_path, bad):
    if bad == "/abs":
        bad = f"{tmp_path}/abs"  # absolute, yet inside tmp_path: a regression must not write to the real /abs
    nexus = backend.nexus
    for call in (lambda: nexus.publish(bad, MODEL), lambda: nexus.fetch(bad), lambda: nexus.exists(bad)):
        with pytest.raises(NexusError, match="path|reserved"):
            call()
    assert backend.everything() == []


# --- the publication policy: a model.zip or its metadata.json, nothing else ----------------------------------------


def refused(backend: Backend, path: str, data: bytes, rule: str) -> NexusRefused:
    with pytest.raises(NexusRefused, match=rule) as refusal:
        backend.nexus.publish(path, data)
    assert repr(path) in str(refusal.value) or path in str(refusal.value)
    assert backend.raw(path) is None and backend.raw(path + ".sha256") is None
    return refusal.value


@pytest.mark.parametrize("path, rule", [(PATH, "not a zip archive"), (META_PATH, "metadata is not UTF-8 JSON")],
                         ids=["model-path", "metadata-path"])
@pytest.mark.parametrize("data", [PARQUET, CSV], ids=["parquet", "csv"])
def test_training_data_is_refused_at_a_model_path(backend, path, rule, data):
    refused(backend, path, data, rule)
    assert backend.everything() == []


def entry(name: str, content: bytes, rule: str, id: str):
    """A model.zip with one file added or replaced, and the rule it breaks."""
    return pytest.param({**MODEL_FILES, name: content}, rule, id=id)


@pytest.mark.parametrize("entries, rule", [
    entry("train.parquet", PARQUET, "'train.parquet' is a data file", "parquet-entry"),
    entry("training_set.csv", CSV, "'training_set.csv' is a data file", "csv-entry"),
    entry("scores/_delta_log/00000000000000000000.json", b"{}", "_delta_log.* is a data file", "delta-log-entry"),
    entry("features.arrow", b"ARROW1\x00\x00", "'features.arrow' is a data file", "arrow-entry"),
    entry("notes.md", b"# model card", "'notes.md' is not a file of an MLflow model directory", "unknown-entry"),
    entry("model.skops", PARQUET, "'model.skops' is Parquet data", "parquet-as-model"),
    entry("requirements.txt", b"mlflow\n" + PARQUET, "'requirements.txt' is Parquet data", "parquet-in-text"),
    entry("input_example.json", CSV, r"'input_example.json' is not an input example .*\(not UTF-8 JSON\)", "csv-as-json"),
    entry("input_example.json", b'{"columns": ["spend_365d"], "data": [[1.0], [2.0]]}',
          "'input_example.json' is not an input example of the feature columns and one row", "customer-rows-as-example"),
    entry("serving_input_example.json", b'{"dataframe_split": {"columns": ["spend_365d"], "data": [[1.0], [2.0]]}}',
          "'serving_input_example.json' is not a serving input example", "customer-rows-as-serving-example"),
    entry("input_example.json", b'{"columns": ["spend_365d"], "data": []}', r"data.0: Field required", "no-row"),
    entry("input_example.json", b'{"columns": ["spend_365d"], "data": [[1.0]], "index": [0]}',
          "index: Extra inputs are not permitted", "extra-key-in-example"),
    entry("requirements.txt", CSV, "'requirements.txt' line 1 is not name==version", "csv-as-requirements"),
    entry("input_example.json", b'{"columns": ["x"], "data": [[1.0]', "'input_example.json' is not an input example",
          "truncated-json"),
    entry("conda.yaml", CSV, "'conda.yaml' is not MLflow's conda.yaml", "csv-as-yaml"),
    entry("MLmodel", b"flavours: {}", "'MLmodel' is not an MLmodel", "mlmodel-without-flavors"),
    entry("model.skops", CSV, "'model.skops' is not a skops archive", "csv-as-model"),
    entry("requirements.txt", b"x" * (MAX_TEXT_BYTES + 1), "'requirements.txt' is larger than", "oversized-entry"),
    entry("../MLmodel", MLMODEL, "'../MLmodel' is an absolute path or escapes", "escaping-entry"),
    entry("/etc/MLmodel", MLMODEL, "'/etc/MLmodel' is an absolute path or escapes", "absolute-entry"),
    entry("model.pkl", pickle.dumps(1), "'model.pkl' is not a file of an MLflow model", "pickle-beside-skops"),
    pytest.param({k: v for k, v in MODEL_FILES.items() if k != "MLmodel"}, "has an MLmodel and one of",
                 id="no-mlmodel"),
    pytest.param([*MODEL_FILES.items(), ("requirements.txt", CSV)], "lists an entry twice", id="duplicate-entry"),
])
def test_a_model_zip_holds_only_the_files_of_an_mlflow_model(backend, entries, rule):
    refused(backend, PATH, zip_of(entries), rule)
    assert backend.everything() == []


def test_a_model_zip_entry_must_be_a_regular_file(backend):
    refused(backend, PATH, zip_of(MODEL_FILES, mode=stat.S_IFLNK | 0o777), "'MLmodel' is not a regular file")


@pytest.mark.parametrize("smuggled", [MODEL + PARQUET, PARQUET + MODEL, MODEL[:-2] + b"\x20\x00" + CSV[:32]],
                         ids=["appended", "prepended", "comment"])
def test_data_riding_along_outside_the_zip_entries_is_refused(backend, smuggled):
    with zipfile.ZipFile(io.BytesIO(smuggled)) as archive:  # a zip reader sees only the model's files
        assert sorted(archive.namelist()) == sorted(MODEL_FILES)
    refused(backend, PATH, smuggled, "not a plain zip")


def test_a_pickled_model_is_refused_because_loading_a_pickle_runs_code(backend):
    pickled = zip_of({**{k: v for k, v in MODEL_FILES.items() if k != "model.skops"}, "model.pkl": pickle.dumps(1)})
    refused(backend, PATH, pickled, "'model.pkl'")
    assert backend.everything() == []


# --- issue 13: customer rows in files a by-name policy lets through, code in a model that lists it as trusted -------

CUSTOMERS = [f"C{i:08d}" for i in range(1, 2001)]
PINNED_BALANCES = [f"{customer}==3100.0" for customer in CUSTOMERS]  # each parses as a pip requirement
RECORDS = [{"customer_id": customer, "balance": 3100.0} for customer in CUSTOMERS[:500]]


def with_changes(name: str, **changes) -> bytes:
    """MLflow's YAML file `name` with top-level keys replaced or added."""
    return yaml.safe_dump({**yaml.safe_load(MODEL_FILES[name]), **changes}).encode()


def conda_pinning(extra: list[str]) -> bytes:
    document = yaml.safe_load(MODEL_FILES["conda.yaml"])
    document["dependencies"][-1]["pip"] += extra
    return yaml.safe_dump(document).encode()


def one_wide_row(columns: list[str]) -> dict:
    return {"columns": columns, "data": [[3100.0] * len(columns)]}


@pytest.mark.parametrize("name, content, rule", [
    ("requirements.txt", "\n".join(["mlflow==3.17.2", *PINNED_BALANCES]).encode(),
     "'requirements.txt' line 2 is not name==version of a package pinned in requirements.lock"),
    ("requirements.txt", b"mlflow==3.17.2\nnumpy==1.0.0\n", "line 2 is not name==version of a package pinned"),
    ("requirements.txt", b"mlflow>=3\n", "line 1 is not name==version"),
    ("requirements.txt", b"mlflow==3.17.2\n# C00000001,3100.0\n", "line 2 is not name==version"),
    ("conda.yaml", conda_pinning(PINNED_BALANCES), r"'conda.yaml' .*dependencies\.2\.pip\.6: not name==version"),
    ("conda.yaml", with_changes("conda.yaml", customers=RECORDS), "customers: Extra inputs are not permitted"),
    ("conda.yaml", with_changes("conda.yaml", channels=CUSTOMERS), "channels: Tuple should have at most 1 item"),
    ("python_env.yaml", with_changes("python_env.yaml", dependencies=PINNED_BALANCES),
     "'python_env.yaml' .*dependencies: Tuple should have at most 1 item"),
    ("input_example.json", json.dumps(one_wide_row(CUSTOMERS)).encode(),
     "'input_example.json' .*columns.0: not a feature column of the training set"),
    ("serving_input_example.json", json.dumps({"dataframe_split": one_wide_row(CUSTOMERS)}).encode(),
     "'serving_input_example.json' .*dataframe_split.columns.0: not a feature column"),
    ("MLmodel", with_changes("MLmodel", metadata={"customers": RECORDS}), "metadata: Extra inputs are not permitted"),
    ("MLmodel", with_changes("MLmodel", signature={"inputs": json.dumps(RECORDS), "outputs": "[]"}),
     "signature.inputs.0.type: Field required"),
    ("registered_model_meta", b"model_name: " + json.dumps(RECORDS).encode(), "model_name: Input should be a valid"),
], ids=["requirements", "requirement-at-another-version", "requirement-range", "comment-in-requirements",
        "conda-pip-list", "conda-extra-key", "conda-channels", "python-env-dependencies", "wide-input-example",
        "wide-serving-example", "mlmodel-metadata", "mlmodel-signature", "registered-model-meta"])
def test_customer_rows_in_a_model_file_are_refused_by_their_content(backend, name, content, rule):
    refusal = refused(backend, PATH, zip_of({**MODEL_FILES, name: content}), rule)
    assert "C00000500" not in str(refusal) and len(str(refusal)) < 800  # names the rule, never repeats the rows
    assert backend.everything() == []


def profile_of(features: dict) -> dict:
    return {"bins": 10, "rows": 500, "features": features}


@pytest.mark.parametrize("document, rule", [
    pytest.param(metadata(metrics={"roc_auc": 0.7, **{c: 3100.0 for c in CUSTOMERS[:500]}}),
                 "metrics.C00000001: Extra inputs are not permitted", id="records-as-metrics"),
    pytest.param(metadata(training_data={"training_table": "aiml_local.lab.training_set", "rows": RECORDS}),
                 "training_data.rows: Extra inputs are not permitted", id="records-in-training-data"),
    pytest.param(metadata(reference_profile=profile_of(
        {"region": {"kind": "categorical", "shares": {c: 1 / 500 for c in CUSTOMERS[:500]}}})),
        r"reference_profile.features.region.categorical.shares: Dictionary should have at most 16 items",
        id="records-as-categories"),
    pytest.param(metadata(reference_profile=profile_of(
        {c: {"kind": "numeric", "edges": [], "rows": 1, "shares": [1.0], "null_share": 0.0} for c in CUSTOMERS[:500]})),
        "reference_profile.features.C00000001.\\[key\\]: not a feature column", id="records-as-features"),
    pytest.param(metadata(reference_profile=profile_of(
        {"spend_365d": {"kind": "numeric", "edges": [3100.0] * 500, "rows": 1, "shares": [1.0], "null_share": 0.0}})),
        "edges: List should have at most 9 items", id="records-as-bin-edges"),
    pytest.param(metadata(signature={"inputs": json.dumps(RECORDS), "outputs": "[]", "params": None}),
                 "signature.inputs.0.type: Field required", id="records-as-signature"),
    pytest.param(metadata(git_commit=json.dumps(RECORDS)), "git_commit: String should have at most 64 characters",
                 id="records-as-a-string"),
])
def test_customer_records_in_metadata_are_refused(backend, document, rule):
    backend.nexus.publish(PATH, MODEL)
    refusal = refused(backend, META_PATH, document, rule)
    assert "C00000500" not in str(refusal) and len(str(refusal)) < 800


POPEN = ("subprocess", "Popen", ["touch", "/tmp/aiml-should-never-exist"])


@pytest.mark.parametrize("files, rule", [
    pytest.param({"MLmodel": trusting(MLMODEL, "subprocess.Popen")},
                 "'MLmodel' .*skops_trusted_types: asks skops to trust subprocess.Popen; only sklearn", id="mlmodel"),
    pytest.param({"model.skops": forged_skops(MODEL_FILES["model.skops"], *POPEN)},
                 "'model.skops' would construct subprocess.Popen", id="skops"),
    pytest.param({"MLmodel": trusting(MLMODEL, "subprocess.Popen"),
                  "model.skops": forged_skops(MODEL_FILES["model.skops"], *POPEN)}, "subprocess.Popen", id="both"),
])
def test_a_model_asking_skops_to_trust_other_types_is_refused(backend, files, rule):
    refusal = refused(backend, PATH, zip_of({**MODEL_FILES, **files}), rule)
    assert NAME in str(refusal)  # the model, so the product
    assert backend.everything() == []


@pytest.mark.parametrize("path", [
    "nba_propensity/credit_card/1.4.0/model.pkl", f"models/{NAME}/{VERSION}/model.pkl",
    f"models/{NAME}/{VERSION}/train.parquet", f"models/{NAME}/{VERSION}/sub/model.zip", f"models/{NAME}/model.zip",
    f"models/{NAME}/0/model.zip", f"models/{NAME}/v3/model.zip", f"models/{NAME}/1.4.0/model.zip",
    f"models/Aiml_Local.models.x/{VERSION}/model.zip", f"models/aiml-local.models.x/{VERSION}/model.zip",
    f"models/.hidden/{VERSION}/model.zip", f"models/a..b/{VERSION}/model.zip", f"data/{NAME}/{VERSION}/model.zip",
    f"{PATH}.sha256", f"/{PATH}", f"{PATH}/",
])
def test_paths_outside_the_model_layout_are_refused(backend, path):
    refused(backend, path, MODEL, "not a publishable path")
    assert backend.everything() == []


@pytest.mark.parametrize("document, rule", [
    *[pytest.param(metadata(**{key: ...}), rf"misses required keys \['{key}'\]", id=f"missing-{key}")
      for key in REQUIRED_METADATA_KEYS],
    pytest.param(metadata(name="aiml_local.models.nba_propensity_mortgage"), f"not '{NAME}' version 3",
                 id="other-name"),
    pytest.param(metadata(version=VERSION + 1), "version 4, not .* version 3 as its path says", id="other-version"),
    pytest.param(metadata(version=str(VERSION)), "version: Input should be a valid integer", id="version-as-string"),
    pytest.param(metadata(version=True), "version: Input should be a valid integer", id="version-as-bool"),
    pytest.param(metadata(version=float(VERSION)), "version: Input should be a valid integer", id="version-as-float"),
    pytest.param(metadata(model_sha256="not-a-digest"), "model_sha256: String should match pattern", id="bad-digest"),
    pytest.param(metadata(model_sha256=hashlib.sha256(RETRAINED).hexdigest()),
                 "is not the published sha256 of .*model.zip", id="another-models-digest"),
    pytest.param(metadata(metrics={"roc_auc": float("nan")}), "not UTF-8 JSON", id="nan"),
    pytest.param(json.dumps([NAME, VERSION]).encode(), "not a JSON object", id="not-an-object"),
    pytest.param(METADATA.decode().encode("utf-16"), "not UTF-8 JSON", id="utf-16"),
    pytest.param(metadata(notes="x" * MAX_TEXT_BYTES), "larger than", id="oversized"),
    pytest.param(metadata(validation_rows=[["C00000001", 1]]), "validation_rows: Extra inputs are not permitted",
                 id="data-riding-in-metadata"),
    pytest.param(PARQUET, "not UTF-8 JSON", id="parquet"),
])
def test_metadata_must_describe_the_published_model_of_its_path(backend, document, rule):
    backend.nexus.publish(PATH, MODEL)
    refused(backend, META_PATH, document, rule)
    assert backend.nexus.publish(META_PATH, METADATA)  # the control: the proper document is accepted


def test_metadata_before_its_model_is_refused(backend):
    refused(backend, META_PATH, METADATA, "publish the model.zip first")
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
    nexus = http_backend(server).nexus
    nexus.publish(PATH, MODEL)
    nexus.publish(PATH, MODEL)
    puts = [(path, status) for method, path, status in server.requests if method == "PUT"]
    assert puts == [(f"/repository/{REPO}/{PATH}", 201), (f"/repository/{REPO}/{PATH}.sha256", 201)]


def test_http_immutability_does_not_rely_on_the_repository_policy():
    with NexusServer(repositories=[REPO], allow_redeploy=True) as lax:
        nexus = HttpNexus(url=lax.url, repository=REPO)
        nexus.publish(PATH, MODEL)
        with pytest.raises(NexusError, match="immutable"):
            nexus.publish(PATH, RETRAINED)
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
