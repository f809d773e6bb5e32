"""CR-gated promotion through UAT to prod: real MLflow (SQLite), real local Nexus, real Delta audit log, real runs.

The registry is built once per module (one small model trained on synthetic rows, registered three times) and
copied into each test's own AIML home, so every test starts from the same versions:
  1  passed the gate (tag + challenger alias, as the gate sets them), binary in Nexus
  2  failed the gate, binary in Nexus
  3  passed the gate, no binary in Nexus
"""

import hashlib
import json
import shutil
import threading
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from aiml_assets import cli
from aiml_assets.resources.audit import PROMOTION, PROMOTION_FAILED, PROMOTION_REFUSED, PROMOTION_STARTED
from aiml_assets.models.binary import nexus_paths, publish_model
from aiml_assets.models.promotion import failure_reason, promotion_job, promotion_resources, promotion_run_config
from aiml_assets.models.registry import CHALLENGER, CHAMPION, GATE_TAG, alias_version
from aiml_assets.models.training import log_and_register, registered_name, train
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.resources.release_manifest import MANIFEST_MARKER, ManifestError, ReleaseManifest, release_manifest_for
from aiml_assets.settings import RESOURCES_DIR, ProductRelease, ReleaseEntry, load_settings, with_product_count
from aiml_assets_tests.test_model_training import synthetic
from local_environment import local_environment

PRODUCT = "credit_card"
NAME = registered_name("aiml_local", PRODUCT)
PASSED, FAILED, UNPUBLISHED = 1, 2, 3
CR_UAT, CR_PROD = "CHG0000101", "CHG0000202"


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory):
    """An AIML home holding the three versions above."""
    home = tmp_path_factory.mktemp("promotion_registry")
    with local_environment(home):
        resources = build_resources(load_settings("local"))
        experiment_id = resources["mlflow"].activate()
        _, first = log_and_register(train(synthetic(n=300)), experiment_id=experiment_id, name=NAME,
                                    product=PRODUCT, tags={"code_version": "test"})
        source = MlflowClient().get_model_version(NAME, str(first)).source
        for version, gate, published in ((PASSED, "passed", True), (FAILED, "failed", True),
                                          (UNPUBLISHED, "passed", False)):
            if version != first:  # later versions of the same logged model: registering is quick, logging is not
                assert int(mlflow.register_model(source, NAME).version) == version
            _gate(MlflowClient(), version, gate)
            if published:
                _publish(resources["nexus"], MlflowClient(), version, home / "downloads")
    return home


def _gate(client: MlflowClient, version: int, verdict: str) -> None:
    """What the validation gate does to a version it judged (its contract with promotion)."""
    client.set_model_version_tag(NAME, str(version), GATE_TAG, verdict)
    client.set_model_version_tag(NAME, str(version), "gate_metrics", json.dumps({"candidate": {"roc_auc": 0.7}}))
    if verdict == "passed":
        client.set_registered_model_alias(NAME, CHALLENGER, str(version))


def _publish(nexus, client: MlflowClient, version: int, downloads: Path) -> None:
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{version}",
                                                         dst_path=str(downloads / str(version))))
    run = client.get_run(client.get_model_version(NAME, str(version)).run_id)
    signature = mlflow.models.Model.load(str(model_dir / "MLmodel")).signature
    publish_model(nexus, NAME, version, model_dir, metadata={
        "name": NAME, "version": version, "metrics": run.data.metrics, "signature": signature.to_dict(),
        "git_commit": run.data.tags["git_commit"], "training_data": {"training_table": "synthetic"}})


class FailingManifest(ReleaseManifest):
    """The env files cannot be written (a full disk, a lost mount): fault injection for the rollback."""

    def write(self, manifests) -> None:
        raise OSError("No space left on device")


def test_a_failed_manifest_write_puts_the_champion_alias_back_and_is_audited(platform):
    assert platform.promote(PASSED, "uat", CR_UAT).success
    assert platform.promote(PASSED, "prod", CR_PROD).success  # champion = PASSED
    newer = platform.register_passed_copy()
    assert platform.promote(newer, "uat", CR_UAT).success
    before = platform.file_bytes()
    platform.resources["release_manifest"] = FailingManifest(resources_dir=str(platform.resources_dir))
    result = platform.promote(newer, "prod", CR_PROD)
    assert not result.success and "No space left on device" in failure_reason(result)
    assert platform.alias(CHAMPION) == PASSED  # not left pointing at a version prod's manifest does not name
    assert platform.file_bytes() == before
    started, failed = platform.audit()[-2:]
    assert (started["action"], failed["action"]) == (PROMOTION_STARTED, PROMOTION_FAILED)
    assert started["run_id"] == failed["run_id"] == result.run_id and "No space left" in failed["details"]["error"]


class Platform:
    """This test's copy of the registry, Nexus and env files, and a way to run the promotion job on them."""

    def __init__(self, home: Path, resources_dir: Path, instance):
        self.home, self.resources_dir, self.instance = home, resources_dir, instance
        self.settings = load_settings("local")
        self.resources = promotion_resources(self.settings, resources_dir)

    def promote(self, version: int, target: str, change_request: str = "", product: str = PRODUCT,
                role: str = "champion"):
        job = promotion_job(self.settings, self.resources)
        return job.execute_in_process(
            run_config=promotion_run_config(product, version, change_request, target, role),
            instance=self.instance, raise_on_error=False)

    def register_passed_copy(self) -> int:
        """Another gated, published version (the same logged model registered again)."""
        client = self.resources["mlflow"].client()
        version = int(mlflow.register_model(client.get_model_version(NAME, str(PASSED)).source, NAME).version)
        _gate(client, version, "passed")
        _publish(self.resources["nexus"], client, version, self.home / "downloads")
        return version

    def alias(self, alias: str) -> int | None:
        return alias_version(self.resources["mlflow"].client(), NAME, alias)

    def file_bytes(self) -> dict[str, bytes]:
        return {env: (self.resources_dir / f"{env}.yaml").read_bytes() for env in ("uat", "prod")}

    def manifest(self, env: str) -> dict[str, ProductRelease]:
        return ReleaseManifest(resources_dir=str(self.resources_dir)).read(env)

    def audit(self) -> list[dict]:
        return self.resources["audit"].read()


@pytest.fixture
def platform(aiml_home, registry_template, instance, tmp_path):
    shutil.copytree(registry_template, aiml_home, dirs_exist_ok=True)
    resources_dir = tmp_path / "resources"
    shutil.copytree(RESOURCES_DIR, resources_dir)
    return Platform(aiml_home, resources_dir, instance)


def _sha256(platform: Platform, version: int) -> str:
    return platform.resources["nexus"].sha256(nexus_paths(NAME, version).model)


def _assert_refused(platform: Platform, result, before: dict[str, bytes], reason: str) -> dict:
    assert not result.success
    assert reason in failure_reason(result)
    assert platform.file_bytes() == before
    assert platform.alias(CHAMPION) is None
    refusal = platform.audit()[-1]
    assert refusal["action"] == PROMOTION_REFUSED and refusal["run_id"] == result.run_id
    assert reason in refusal["details"]["reason"]
    return refusal


@pytest.mark.parametrize("change_request, target", [("", "uat"), ("   ", "prod"), ("CR-42", "uat"),
                                                    ("chg0000101", "uat"), ("CHG000010", "prod")])
def test_without_a_valid_change_request_nothing_changes_and_the_refusal_is_audited(platform, change_request, target):
    before = platform.file_bytes()
    result = platform.promote(PASSED, target, change_request)
    refusal = _assert_refused(platform, result, before, "change request")
    assert refusal["environment"] == target and refusal["change_request"] == (change_request.strip() or None)
    assert refusal["subject"] == f"models:/{NAME}/{PASSED}" and refusal["actor"]
    assert platform.alias(CHALLENGER) == UNPUBLISHED  # the gate's alias is untouched (version 3 passed last)
    assert [e["action"] for e in platform.audit()] == [PROMOTION_REFUSED]


def test_prod_without_a_change_request_keeps_the_champion_and_prod_manifest(platform):
    assert platform.promote(PASSED, "uat", CR_UAT).success
    before = platform.file_bytes()
    _assert_refused(platform, platform.promote(PASSED, "prod", ""), before, "no change request id")


def test_promotion_goes_through_uat_to_prod_under_change_requests(platform):
    original = platform.file_bytes()
    sha256 = _sha256(platform, PASSED)
    uat_run = platform.promote(PASSED, "uat", CR_UAT)
    assert uat_run.success, failure_reason(uat_run)
    entry = ReleaseEntry(name=NAME, version=PASSED, sha256=sha256, change_request=CR_UAT,
                         metadata_sha256=platform.resources["nexus"].sha256(nexus_paths(NAME, PASSED).metadata))
    assert platform.manifest("uat") == {PRODUCT: ProductRelease(challenger=entry)}
    assert platform.file_bytes()["prod"] == original["prod"]
    assert platform.alias(CHAMPION) is None  # UAT is a parallel run: the registry's champion does not move

    prod_run = platform.promote(PASSED, "prod", CR_PROD)
    assert prod_run.success, failure_reason(prod_run)
    champion = entry.model_copy(update={"change_request": CR_PROD})
    assert platform.alias(CHAMPION) == PASSED
    assert platform.manifest("prod") == {PRODUCT: ProductRelease(champion=champion)}
    # UAT runs prod's champion; its challenger slot held this same version, so it is dropped
    assert platform.manifest("uat") == {PRODUCT: ProductRelease(champion=champion)}

    for env in ("uat", "prod"):  # everything above the marker is byte for byte what it was
        head = original[env][: original[env].index(MANIFEST_MARKER.encode())]
        assert platform.file_bytes()[env].startswith(head)
    events = platform.audit()
    assert [(e["action"], e["environment"], e["run_id"], e["change_request"]) for e in events] == [
        (PROMOTION_STARTED, "uat", uat_run.run_id, CR_UAT), (PROMOTION, "uat", uat_run.run_id, CR_UAT),
        (PROMOTION_STARTED, "prod", prod_run.run_id, CR_PROD), (PROMOTION, "prod", prod_run.run_id, CR_PROD)]
    promotions = [e for e in events if e["action"] == PROMOTION]
    for event in promotions:
        assert event["subject"] == f"models:/{NAME}/{PASSED}" and event["actor"]
        assert {k: event["details"][k] for k in ("name", "version", "sha256")} == {
            "name": NAME, "version": PASSED, "sha256": sha256}
    assert platform.instance.get_run_by_id(prod_run.run_id).job_name == "promote_model"


def test_a_prod_challenger_is_the_canary_model_and_leaves_the_champion_alone(platform):
    assert platform.promote(PASSED, "uat", CR_UAT).success
    assert platform.promote(PASSED, "prod", CR_PROD).success
    second = platform.register_passed_copy()

    def refused(result, reason: str, before: dict[str, bytes]) -> None:
        assert not result.success and reason in failure_reason(result)
        assert platform.file_bytes() == before and platform.alias(CHAMPION) == PASSED
        assert platform.audit()[-1]["action"] == PROMOTION_REFUSED

    refused(platform.promote(second, "prod", CR_PROD, role="challenger"), "not in UAT's release manifest",
            platform.file_bytes())
    assert platform.promote(second, "uat", CR_UAT).success
    canary = platform.promote(second, "prod", CR_PROD, role="challenger")
    assert canary.success, failure_reason(canary)
    assert platform.alias(CHAMPION) == PASSED  # the registry's champion does not move for a canary
    prod = platform.manifest("prod")[PRODUCT]
    assert (prod.champion.version, prod.challenger.version) == (PASSED, second)
    assert platform.audit()[-1]["details"]["slot"] == "challenger"
    refused(platform.promote(PASSED, "prod", CR_PROD, role="challenger"), "prod's champion already",
            platform.file_bytes())


def test_prod_refuses_a_version_that_did_not_go_through_uat(platform):
    before = platform.file_bytes()
    _assert_refused(platform, platform.promote(PASSED, "prod", CR_PROD), before, "not in UAT's release manifest")


@pytest.mark.parametrize("product, version, reason", [
    (PRODUCT, FAILED, "has not passed the validation gate"),
    (PRODUCT, 99, "has no version 99"),
    ("mortgage", PASSED, "has no version 1"),  # a product of the environment that has no registered model
    ("pension", PASSED, "is not a product"),
    (PRODUCT, UNPUBLISHED, "no verified binary in Nexus"),
])
def test_a_version_not_fit_for_release_is_refused(platform, product, version, reason):
    before = platform.file_bytes()
    _assert_refused(platform, platform.promote(version, "uat", CR_UAT, product=product), before, reason)


def test_a_binary_changed_in_nexus_is_refused(platform):
    stored = Path(platform.resources["nexus"].root) / nexus_paths(NAME, PASSED).model
    stored.write_bytes(stored.read_bytes() + b"\0")  # behind Nexus's back: the sidecar no longer matches
    before = platform.file_bytes()
    _assert_refused(platform, platform.promote(PASSED, "uat", CR_UAT), before, "checksum mismatch")


def test_metadata_in_nexus_that_describes_another_binary_is_refused(platform):
    stored = Path(platform.resources["nexus"].root) / nexus_paths(NAME, PASSED).metadata
    document = json.loads(stored.read_text()) | {"model_sha256": "0" * 64}
    stored.write_text(json.dumps(document))  # rewritten with a matching sidecar: only the content is wrong
    Path(f"{stored}.sha256").write_text(hashlib.sha256(stored.read_bytes()).hexdigest())
    before = platform.file_bytes()
    _assert_refused(platform, platform.promote(PASSED, "uat", CR_UAT), before, "metadata.json describes")


def test_a_rewritten_audit_log_stops_promotion_before_anything_changes(platform):
    audit = platform.resources["audit"]
    audit.record("erasure", "customer C1", actor="dpo", environment="lab", run_id="r")
    DeltaTable(audit.location).alter.set_table_properties({"delta.appendOnly": "false"})
    before = platform.file_bytes()
    result = platform.promote(PASSED, "uat", CR_UAT)
    assert not result.success and "not append-only" in failure_reason(result)
    assert platform.file_bytes() == before and platform.alias(CHAMPION) is None


def test_a_promotion_waits_while_another_holds_the_env_files(platform):
    done = threading.Event()
    worker = threading.Thread(target=lambda: (platform.promote(PASSED, "uat", CR_UAT), done.set()))
    with platform.resources["release_manifest"].locked():
        worker.start()
        assert not done.wait(5)
        assert platform.manifest("uat") == {}
    worker.join(120)
    assert done.is_set() and platform.manifest("uat")[PRODUCT].challenger.version == PASSED


def test_the_cli_promotes_on_the_local_instance(platform, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "cli_dagster_home"))
    monkeypatch.setenv("AIML_USER", "rtb.engineer")
    args = ["promote", "--product", PRODUCT, "--version", str(PASSED), "--resources-dir", str(platform.resources_dir)]
    assert cli.main([*args, "--change-request", CR_UAT, "--target", "uat"]) == 0
    assert f"{NAME} version {PASSED} promoted to uat" in capsys.readouterr().out
    assert cli.main([*args, "--target", "prod"]) == 1
    assert "promotion refused: no change request id" in capsys.readouterr().err
    assert platform.manifest("uat")[PRODUCT].challenger.change_request == CR_UAT
    assert platform.manifest("prod") == {}
    events = platform.audit()
    assert [(e["action"], e["actor"]) for e in events] == [
        (PROMOTION_STARTED, "rtb.engineer"), (PROMOTION, "rtb.engineer"), (PROMOTION_REFUSED, "rtb.engineer")]
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:  # the runs are in the instance the CLI prepared
        assert all(instance.get_run_by_id(e["run_id"]) is not None for e in events)


def test_manifest_rewrite_keeps_everything_above_the_marker(platform):
    manifests = ReleaseManifest(resources_dir=str(platform.resources_dir))
    path = platform.resources_dir / "uat.yaml"
    path.write_bytes(path.read_bytes().replace(b"products:", b"# a hand-written note  \nproducts:"))
    head = path.read_bytes()[: path.read_bytes().index(MANIFEST_MARKER.encode())]
    entry = ReleaseEntry(name=NAME, version=1, sha256="0" * 64, metadata_sha256="1" * 64, change_request=CR_UAT)
    manifests.write({"uat": {PRODUCT: ProductRelease(challenger=entry), "mortgage": ProductRelease()}})
    assert path.read_bytes().startswith(head + MANIFEST_MARKER.encode() + b"\n")
    assert manifests.read("uat") == {PRODUCT: ProductRelease(challenger=entry)}  # empty releases are left out
    assert not [p for p in platform.resources_dir.iterdir() if p.name.startswith(".")]  # no staged copies left


def test_an_invalid_manifest_is_never_written(platform):
    manifests = ReleaseManifest(resources_dir=str(platform.resources_dir))
    before = platform.file_bytes()
    entry = ReleaseEntry(name=NAME, version=1, sha256="0" * 64, metadata_sha256="1" * 64, change_request=CR_UAT)
    with pytest.raises(ManifestError, match="not in products"):
        manifests.write({"uat": {PRODUCT: ProductRelease(champion=entry)},
                         "prod": {"unknown_product": ProductRelease(champion=entry)}})
    assert platform.file_bytes() == before  # uat was valid, but nothing is replaced unless everything is
    assert not [p for p in platform.resources_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("edit, error", [
    pytest.param(lambda text: text.replace(MANIFEST_MARKER + "\n", ""), "marker", id="marker removed"),
    pytest.param(lambda text: text.split(MANIFEST_MARKER)[0], "marker", id="marker and block removed"),
    pytest.param(lambda text: text + MANIFEST_MARKER + "\n", "marker", id="second marker"),
    pytest.param(lambda text: "release_manifest: {}\n" + text.replace("release_manifest: {}\n", ""),
                 "only below the marker", id="manifest moved above the marker"),
])
def test_a_file_whose_manifest_block_was_edited_by_hand_is_refused(platform, edit, error):
    path = platform.resources_dir / "prod.yaml"
    path.write_text(edit(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(ManifestError, match=error):
        ReleaseManifest(resources_dir=str(platform.resources_dir)).write({"prod": {}})
    assert path.read_bytes() == before


def test_a_local_promotion_never_rewrites_the_repositorys_manifests(aiml_home):
    from aiml_assets.models.promotion import release_resources_dir

    from aiml_assets.definitions import build_definitions

    before = {env: (RESOURCES_DIR / f"{env}.yaml").read_bytes() for env in ("uat", "prod")}
    build_definitions("local")
    assert not (aiml_home / "resources").exists()  # loading the code location writes nothing; first use copies
    local = release_resources_dir(load_settings("local"))
    assert local == aiml_home / "resources" and (local / "prod.yaml").read_bytes() == before["prod"]
    assert release_resources_dir(load_settings("lab")) == RESOURCES_DIR
    assert {env: (RESOURCES_DIR / f"{env}.yaml").read_bytes() for env in ("uat", "prod")} == before


def test_the_local_manifest_copies_take_the_generated_products(aiml_home):
    """`run-local --products 49` promotes product_49: the local copies of uat/prod stand for the local products,
    while the repository's files (and another env's, read as themselves) still refuse a product they do not list."""
    entry = ReleaseEntry(name=registered_name("aiml_local", "product_49"), version=1, sha256="0" * 64,
                         metadata_sha256="1" * 64, change_request=CR_PROD)
    manifests = release_manifest_for(with_product_count(load_settings("local"), "49"))
    manifests.write({"prod": {"product_49": ProductRelease(champion=entry)}})
    assert manifests.read("prod") == {"product_49": ProductRelease(champion=entry)}
    with pytest.raises(ManifestError, match="product_49 not in products"):
        release_manifest_for(load_settings("local")).write({"prod": {"product_49": ProductRelease(champion=entry)}})
