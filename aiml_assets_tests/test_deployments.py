"""deployments/: Dagster instances, Databricks cluster specs and policies, S3 lifecycle rules, the GitLab pipeline."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, asset, materialize
from dagster._config import convert_potential_field, process_config, validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_databricks.configs import define_databricks_submit_run_config
from dagster_databricks.databricks import DatabricksJobRunner
from databricks.sdk.service import compute

from aiml_assets.governance.lifecycle import BACKSTOP_DAYS
from aiml_assets.resources import step_launcher
from aiml_assets.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ROOT / "deployments"
DATABRICKS = DEPLOYMENTS / "databricks"
REMOTE_ENVS = ("lab", "uat", "prod")
RETENTION_ENVS = ("lab", "uat")
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dummy_user",
    "DAGSTER_PG_PASSWORD": "dummy_password",
    "DAGSTER_PG_HOST": "dummy-host",
    "DAGSTER_PG_DB": "dummy_db",
    "DAGSTER_PG_PORT": "5432",
}


def env_file(env: str) -> dict:
    return yaml.safe_load((ROOT / "resources" / f"{env}.yaml").read_text())


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOYMENTS / "gitlab" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Dagster instances ----------------------------------------------------------------------------------------


def test_local_instance_loads_and_stores_runs_in_sqlite_under_dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOYMENTS / "dagster" / "local" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    @asset
    def one() -> int:
        return 1

    with DagsterInstance.from_config(str(home)) as instance:
        assert not instance.telemetry_enabled
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"  # Dagster's default
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        assert materialize([one], instance=instance).success
        assert len(instance.get_runs()) == 1
    assert (home / "history" / "runs.db").is_file()


def test_remote_instance_config_is_valid_and_takes_every_credential_from_env(tmp_path, monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "remote"
    home.mkdir()
    shutil.copy(DEPLOYMENTS / "dagster" / "remote" / "dagster.yaml", home / "dagster.yaml")

    config, custom_class = dagster_instance_config(str(home))  # schema only: nothing connects to PostgreSQL
    assert custom_class is None
    assert config["telemetry"] == {"enabled": False}
    db = config["storage"]["postgres"]["postgres_db"]
    assert {key: db[key] for key in ("username", "password", "hostname", "db_name", "port")} == {
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "db_name": {"env": "DAGSTER_PG_DB"},
        "port": {"env": "DAGSTER_PG_PORT"},
    }

    # dagster-postgres' own schema, with the env vars resolved
    from dagster_postgres import DagsterPostgresStorage

    pg = process_config(convert_potential_field(DagsterPostgresStorage.config_type()).config_type, config["storage"]["postgres"])
    assert pg.success, pg.errors
    assert pg.value["postgres_db"]["password"] == "dummy_password"
    assert pg.value["postgres_db"]["port"] == 5432

    # every pluggable class imports and accepts its config
    for key in ("run_coordinator", "run_launcher", "compute_logs", "local_artifact_storage"):
        klass = getattr(importlib.import_module(config[key]["module"]), config[key]["class"])
        checked = process_config(convert_potential_field(klass.config_type()).config_type, config[key].get("config") or {})
        assert checked.success, (key, checked.errors)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert 0 < config["concurrency"]["runs"]["max_concurrent_runs"] <= 20
    assert config["concurrency"]["pools"]["default_limit"] == 1  # cdp/nba_propensity's pool: one switch at a time
    assert config["compute_logs"]["config"]["base_dir"].startswith("/opt/dagster/")


def test_one_remote_instance_file_serves_lab_uat_and_prod():
    assert sorted(p.name for p in (DEPLOYMENTS / "dagster").iterdir() if p.is_dir()) == ["local", "remote"]


def test_no_secret_values_in_deployments():
    patterns = [
        re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
        re.compile(r"dapi[0-9a-f]{32}"),  # Databricks personal access token
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        re.compile(r"(?im)^\s*[\w-]*(password|secret|token)[\w-]*\s*:[ \t]*[^\s{$#]"),  # YAML literal credential
    ]
    for path in DEPLOYMENTS.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
            text = path.read_text()
            for pattern in patterns:
                assert not pattern.search(text), f"{path.relative_to(ROOT)}: {pattern.pattern}"


# --- Databricks cluster specs and policies --------------------------------------------------------------------


def spec_file(env: str) -> dict:
    name = env_file(env)["databricks"]["cluster_spec"]
    return json.loads((DATABRICKS / name).read_text())


def cluster_spec(env: str) -> dict:
    """The step launcher's `run_config.cluster.new`: the spec file on the env file's instance pool."""
    return step_launcher.cluster_spec(load_settings(env))


def pool_definition(env: str) -> dict:
    return json.loads((DATABRICKS / "pools" / f"{env}_pool.json").read_text())


def policy(env: str) -> dict:
    return json.loads((DATABRICKS / "policies" / f"{env}_policy.json").read_text())


def submitted_cluster(spec: dict) -> dict:
    """The `new_cluster` the step launcher would send: dagster-databricks' own translation, parsed by the SDK."""
    schema = define_databricks_submit_run_config().config_type
    run_config = process_config(schema, {"run_name": "x", "cluster": {"new": spec}})
    assert run_config.success, run_config.errors
    runner = DatabricksJobRunner(host="https://dbc-example.cloud.databricks.com", token="not-a-token")
    captured = {}

    class _Submitted:
        def bind(self):
            return {"run_id": 1}

    def submit(**kwargs):
        captured.update(kwargs)
        return _Submitted()

    runner.client.workspace_client.jobs.submit = submit  # no network
    run_config = step_launcher.with_driver_pool(run_config.value)  # as the launcher resource adds it
    runner.submit_run(run_config, {"spark_python_task": {"python_file": "dbfs:/x.py", "parameters": []}})
    return captured["tasks"][0].new_cluster.as_dict()


def flatten(cluster: dict) -> dict:
    """Policy attribute paths of an API cluster spec (`runs/submit` makes job clusters)."""
    flat: dict = {"cluster_type": "job"}
    for key, value in cluster.items():
        if key == "cluster_log_conf":
            ((kind, info),) = value.items()
            flat["cluster_log_conf.type"] = kind.upper()
            flat["cluster_log_conf.path"] = info["destination"]
        elif key == "init_scripts":
            for i, script in enumerate(value):
                ((kind, info),) = script.items()
                flat[f"init_scripts.{i}.{kind}.destination"] = info["destination"]
        elif key == "ssh_public_keys":
            flat.update({f"ssh_public_keys.{i}": k for i, k in enumerate(value)})
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# Fixed values Databricks applies itself and the launcher schema cannot express.
APPLIED_BY_POLICY = ("workload_type.",)


def violations(rules: dict, cluster: dict) -> list[str]:
    flat = flatten(cluster)
    found = []
    for path, rule in rules.items():
        pattern = re.compile("^" + re.escape(path).replace(r"\*", "[0-9]+") + "$")
        present = {k: v for k, v in flat.items() if pattern.match(k)}
        kind = rule["type"]
        if kind == "forbidden":
            found += [f"{k}: forbidden" for k in present]
            continue
        if not present:
            if not (rule.get("isOptional") or (kind == "fixed" and path.startswith(APPLIED_BY_POLICY))):
                found.append(f"{path}: missing ({kind})")
            continue
        for key, value in present.items():
            if kind == "fixed":
                ok = value == rule["value"]
            elif kind == "allowlist":
                ok = value in rule["values"]
            elif kind == "blocklist":
                ok = value not in rule["values"]
            elif kind == "range":
                ok = rule.get("minValue", float("-inf")) <= value <= rule.get("maxValue", float("inf"))
            elif kind == "regex":
                ok = re.search(rule["pattern"], str(value)) is not None
            elif kind == "unlimited":
                ok = True
            else:
                raise AssertionError(f"{path}: unknown policy type {kind!r}")
            if not ok:
                found.append(f"{key}={value!r} breaks {rule}")
    return found


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_cluster_spec_validates_against_dagster_databricks_schema(env):
    assert env_file(env)["databricks"]["cluster_spec"] == f"{env}_cluster.json"
    spec = cluster_spec(env)
    result = validate_config(define_databricks_submit_run_config().config_type, {"run_name": "x", "cluster": {"new": spec}})
    assert result.success, [error.message for error in result.errors]


def test_schema_validation_rejects_keys_the_launcher_does_not_accept():
    spec = {**cluster_spec("prod"), "autotermination_minutes": 10}
    result = validate_config(define_databricks_submit_run_config().config_type, {"run_name": "x", "cluster": {"new": spec}})
    assert not result.success


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_cluster_spec_matches_its_environment(env):
    spec, settings = spec_file(env), env_file(env)
    assert re.fullmatch(r"17\.3\.x-scala2\.13", spec["spark_version"])  # DBR 17.3 LTS: Spark 4.0
    assert spec["data_security_mode"] == "SINGLE_USER"  # Unity Catalog, and /dbfs works for the step launcher
    assert spec["spark_env_vars"]["AIML_ENV"] == env
    assert spec["spark_conf"]["spark.databricks.sql.initial.catalog.name"] == settings["catalog"]["aiml_catalog"]
    tags = {tag["key"]: tag["value"] for tag in spec["custom_tags"]}
    assert tags["Environment"] == env and tags["CostCentre"]
    assert spec["enable_local_disk_encryption"] is True
    assert "init_scripts" not in spec
    # policy_id names the policy whose definition is the policy file (pinned to the real id at deploy time)
    pin = load_script("pin_cluster_policy")
    assert spec["policy_id"] == pin.policy_name(env)
    assert (DATABRICKS / "policies" / f"{env}_policy.json").is_file()


def test_cluster_sizes_lab_trains_uat_is_fixed_prod_is_half_of_training():
    lab, uat, prod = (cluster_spec(env)["size"] for env in REMOTE_ENVS)
    assert lab["autoscale"]["max_workers"] > lab["autoscale"]["min_workers"]
    assert "num_workers" in uat
    assert prod["autoscale"]["max_workers"] * 2 == lab["autoscale"]["max_workers"]


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_clusters_take_driver_and_workers_from_the_environments_pool(env):
    pool_id = env_file(env)["databricks"]["instance_pool_id"]
    cluster = submitted_cluster(cluster_spec(env))
    assert cluster["instance_pool_id"] == cluster["driver_instance_pool_id"] == pool_id
    # a pool-backed cluster takes its node type and AWS availability from the pool and must not set them
    assert not {"node_type_id", "driver_node_type_id", "aws_attributes", "enable_elastic_disk"} & set(cluster)
    rules = policy(env)
    assert rules["instance_pool_id"]["value"] == rules["driver_instance_pool_id"]["value"] == pool_id
    assert rules["instance_pool_id"]["type"] == rules["driver_instance_pool_id"]["type"] == "fixed"


def test_a_spec_file_that_picks_its_own_nodes_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "databricks"
    shutil.copytree(DATABRICKS, copy)
    spec = {**spec_file("prod"), "nodes": {"node_types": {"node_type_id": "p4d.24xlarge"}}}
    (copy / "prod_cluster.json").write_text(json.dumps(spec))
    monkeypatch.setattr(step_launcher, "DEPLOYMENTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"prod_cluster\.json: sets nodes; the environment's instance pool decides"):
        step_launcher.cluster_spec(load_settings("prod"))


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_pool_definitions_are_create_requests_preloading_the_clusters_runtime(env):
    pool, spec = pool_definition(env), spec_file(env)
    create = inspect.signature(compute.InstancePoolsAPI.create).parameters
    assert set(pool) <= set(create) - {"self"} and {"instance_pool_name", "node_type_id"} <= set(pool)
    assert pool["instance_pool_name"] == f"aiml-{env}-jobs"
    assert set(pool["aws_attributes"]) <= set(compute.InstancePoolAwsAttributes.__dataclass_fields__)
    assert pool["aws_attributes"]["availability"] in {a.value for a in compute.InstancePoolAwsAttributesAvailability}
    assert pool["preloaded_spark_versions"] == [spec["spark_version"]]
    # a cluster may not set a tag its pool sets
    assert not set(pool.get("custom_tags", {})) & {tag["key"] for tag in spec["custom_tags"]}
    # a cluster of the largest size fits, with its driver
    size = spec["size"].get("autoscale", {}).get("max_workers", spec["size"].get("num_workers"))
    assert pool["max_capacity"] >= size + 1


def test_pools_put_prod_on_demand_and_lab_on_memory_nodes():
    assert len({env_file(env)["databricks"]["instance_pool_id"] for env in REMOTE_ENVS}) == 3  # one per workspace
    assert pool_definition("prod")["aws_attributes"]["availability"] == "ON_DEMAND"
    assert pool_definition("lab")["node_type_id"].startswith("r5d.")  # the model family trains in memory


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_cluster_spec_respects_its_policy(env):
    cluster = submitted_cluster(cluster_spec(env))
    assert violations(policy(env), cluster) == []


@pytest.mark.parametrize("env", REMOTE_ENVS)
def test_policy_fixes_access_mode_tags_and_restricts_nodes(env):
    rules = policy(env)
    assert rules["data_security_mode"] == {"type": "fixed", "value": "SINGLE_USER", "hidden": True}
    assert rules["cluster_type"]["value"] == "job"
    # nodes come from the pool the policy fixes: no node type, no AWS availability of the cluster's own
    for path in ("node_type_id", "driver_node_type_id", "aws_attributes.availability",
                 "aws_attributes.first_on_demand", "aws_attributes.zone_id", "aws_attributes.instance_profile_arn"):
        assert rules[path]["type"] == "forbidden", path
    assert rules["custom_tags.Environment"] == {"type": "fixed", "value": env}
    assert rules["custom_tags.CostCentre"]["type"] == "fixed"
    assert rules["spark_env_vars.AIML_ENV"]["value"] == env
    # every attribute path is a Clusters API attribute (or a documented virtual one)
    fields = set(compute.ClusterSpec.__dataclass_fields__) | {"cluster_type", "dbus_per_hour"}
    nested = {"aws_attributes": compute.AwsAttributes, "autoscale": compute.AutoScale}
    for path in rules:
        root, _, rest = path.partition(".")
        assert root in fields, path
        if root in nested:
            assert rest in nested[root].__dataclass_fields__, path


def test_prod_policy_forbids_every_kind_of_init_script():
    kinds = set(compute.InitScriptInfo.__dataclass_fields__)
    rules = policy("prod")
    for kind in kinds:
        assert rules[f"init_scripts.*.{kind}.destination"]["type"] == "forbidden"
    assert rules["workload_type.clients.notebooks"]["value"] is False


def test_policy_check_catches_violations():
    cluster = submitted_cluster(cluster_spec("prod"))
    assert violations(policy("prod"), {**cluster, "init_scripts": [{"volumes": {"destination": "/Volumes/x/y.sh"}}]})
    assert violations(policy("prod"), {**cluster, "data_security_mode": "USER_ISOLATION"})
    assert violations(policy("prod"), {**cluster, "custom_tags": {"Environment": "lab"}})
    assert violations(policy("lab"), {**cluster, "autoscale": {"min_workers": 2, "max_workers": 40}})
    assert violations(policy("prod"), {**cluster, "node_type_id": "p4d.24xlarge"})
    assert violations(policy("prod"), {**cluster, "aws_attributes": {"availability": "SPOT"}})
    lab_pool = env_file("lab")["databricks"]["instance_pool_id"]
    assert violations(policy("prod"), {**cluster, "instance_pool_id": lab_pool, "driver_instance_pool_id": lab_pool})
    assert violations(policy("prod"), {k: v for k, v in cluster.items() if k != "driver_instance_pool_id"})


def test_pin_cluster_policy_resolves_the_id_and_refuses_drift(tmp_path, monkeypatch):
    pin = load_script("pin_cluster_policy")
    definition = json.dumps(policy("uat"))
    workspace = [("other", "AAA", "{}"), ("aiml-uat-jobs", "E0123456789ABCDE", definition)]
    assert pin.resolve_policy_id("uat", workspace) == "E0123456789ABCDE"
    with pytest.raises(pin.PolicyError, match="differs"):
        pin.resolve_policy_id("uat", [("aiml-uat-jobs", "E0123456789ABCDE", "{}")])
    with pytest.raises(pin.PolicyError, match="found 0"):
        pin.resolve_policy_id("uat", workspace[:1])

    copy = tmp_path / "databricks"
    shutil.copytree(DATABRICKS, copy)
    monkeypatch.setattr(pin, "DATABRICKS_DIR", copy)
    pin.pin("uat", "E0123456789ABCDE")
    assert json.loads((copy / "uat_cluster.json").read_text())["policy_id"] == "E0123456789ABCDE"
    with pytest.raises(pin.PolicyError):  # already pinned: never overwrite a real id
        pin.pin("uat", "E0123456789ABCDE")


# --- S3 lifecycle ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", RETENTION_ENVS)
def test_lifecycle_rules_apply_to_a_versioned_bucket_and_expire_after_retention(env, s3):
    storage = env_file(env)["storage"]
    retention_days = storage["retention_days"]
    document = json.loads((DEPLOYMENTS / "s3" / f"lifecycle-{env}.json").read_text())
    for uri in storage["buckets"].values():
        bucket = uri.removeprefix("s3://")
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=document)

        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = [r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] if r["Status"] == "Enabled"]
        assert all(r["Filter"] == {"Prefix": ""} for r in rules)  # the whole bucket
        # the retention purge enforces retention_days; S3's rule is its backstop, BACKSTOP_DAYS later
        assert {r["Expiration"]["Days"] for r in rules if "Days" in r.get("Expiration", {})} == {
            retention_days + BACKSTOP_DAYS}
        assert [r["NoncurrentVersionExpiration"]["NoncurrentDays"] for r in rules if "NoncurrentVersionExpiration" in r] == [1]
        assert any(r.get("Expiration", {}).get("ExpiredObjectDeleteMarker") is True for r in rules)
        assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation", 0) >= 1 for r in rules)
    for rule in document["Rules"]:  # S3 rejects a delete-marker expiry combined with Days in one rule
        assert not {"Days", "ExpiredObjectDeleteMarker"} <= set(rule.get("Expiration", {}))


def test_only_perishable_buckets_have_lifecycle_rules_prod_is_permanent():
    assert env_file("prod")["storage"].get("retention_days") is None
    assert sorted(p.name for p in (DEPLOYMENTS / "s3").glob("lifecycle-*.json")) == [
        f"lifecycle-{env}.json" for env in sorted(RETENTION_ENVS)
    ]
    readme = (DEPLOYMENTS / "s3" / "README.md").read_text().lower()
    assert "permanent" in readme and "versioning" in readme


# --- GitLab pipeline -------------------------------------------------------------------------------------------

CI = DEPLOYMENTS / "gitlab" / "gitlab-ci.yml"
PIPELINES = {
    "merge_request": {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/x"},
    "feature": {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature/new-features"},
    "release": {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "release/2.0"},
    "tag": {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v2.0.1"},
    "other_tag": {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v2.0.1-rc1"},
    "main": {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main"},
}


def ci() -> dict:
    return yaml.safe_load(CI.read_text())


def job(name: str) -> dict:
    """A job with its `extends` merged in (child keys win)."""
    config = ci()
    body = dict(config[name])
    parent = body.pop("extends", None)
    if parent:
        body = {**job(parent), **body}
    return body


def flat_script(body: dict) -> list[str]:
    def walk(items):
        for item in items:
            yield from (walk(item) if isinstance(item, list) else [item])

    return list(walk(body.get("before_script", []) + body.get("script", [])))


def condition_holds(expression: str, variables: dict) -> bool:
    assert "||" not in expression, "the test's rule evaluator handles && only"
    for term in (t.strip() for t in expression.split("&&")):
        if m := re.fullmatch(r'\$(\w+) == "([^"]*)"', term):
            ok = variables.get(m[1]) == m[2]
        elif m := re.fullmatch(r"\$(\w+) =~ /(.*)/", term):
            ok = m[1] in variables and re.search(m[2], variables[m[1]]) is not None
        elif m := re.fullmatch(r"\$(\w+)", term):
            ok = bool(variables.get(m[1]))
        else:
            raise AssertionError(f"unsupported rule expression {term!r}")
        if not ok:
            return False
    return True


def when(rules: list[dict], variables: dict) -> str | None:
    for rule in rules:
        if condition_holds(rule["if"], variables):
            return None if rule.get("when") == "never" else rule.get("when", "on_success")
    return None


def test_pipeline_parses_with_three_stages_in_order():
    assert ci()["stages"] == ["test", "deploy_uat", "deploy_prod"]
    assert {job(name)["stage"] for name in ("test", "deploy_uat", "deploy_prod")} == {"test", "deploy_uat", "deploy_prod"}


def test_pipelines_run_for_merge_requests_feature_release_branches_and_release_tags_only():
    rules = ci()["workflow"]["rules"]
    runs = {name for name, variables in PIPELINES.items() if when(rules, variables)}
    assert runs == {"merge_request", "feature", "release", "tag"}


def test_test_job_runs_make_test_on_merge_requests_and_feature_branches():
    body = job("test")
    assert "make test" in flat_script(body)
    for pipeline in ("merge_request", "feature", "release", "tag"):
        assert when(body["rules"], PIPELINES[pipeline]) == "on_success", pipeline


def test_uat_deploy_runs_automatically_only_on_release_branches_with_aiml_env_uat():
    body = job("deploy_uat")
    assert {name: when(body["rules"], v) for name, v in PIPELINES.items()} == {
        "merge_request": None, "feature": None, "release": "on_success", "tag": None, "other_tag": None, "main": None,
    }
    assert body["variables"]["AIML_ENV"] == "uat"
    assert body["environment"]["name"] == "uat"


def test_prod_deploy_is_manual_on_release_tags_in_the_protected_production_environment():
    body = job("deploy_prod")
    assert {name: when(body["rules"], v) for name, v in PIPELINES.items()} == {
        "merge_request": None, "feature": None, "release": None, "tag": "manual", "other_tag": None, "main": None,
    }
    assert body["allow_failure"] is False
    assert body["variables"]["AIML_ENV"] == "prod"
    assert body["environment"] == {"name": "production", "deployment_tier": "production"}
    assert body["resource_group"] == "production"


def test_prod_deploy_checks_the_change_request_before_anything_is_shipped():
    steps = flat_script(job("deploy_prod"))
    gate = next(i for i, step in enumerate(steps) if "aiml check-change-request" in step)
    assert '--change-request "${CHANGE_REQUEST_ID:-}"' in steps[gate] and '--release "$CI_COMMIT_TAG"' in steps[gate]
    assert gate < min(i for i, step in enumerate(steps) if "pip wheel" in step or "packages/generic" in step)
    # the gate's own rules (approval, state, window, release) are tested against a loopback ServiceNow in
    # test_lockdown; an unset or malformed id is refused before the change system is asked
    from aiml_assets.cli import main
    for value in ("", "CHG123", "chg0123456"):
        assert main(["check-change-request", "--change-request", value, "--release", "v1.0.0"]) == 1


@pytest.mark.parametrize("name", ["launch_uat", "launch_prod"])
def test_launch_jobs_are_manual_and_sign_through_aiml_launch(name):
    body = job(name)
    assert {name: when(body["rules"], v) for name, v in PIPELINES.items()}[
        "tag" if name == "launch_prod" else "release"] == "manual"
    assert "aiml launch" in "\n".join(flat_script(body)) and body["environment"]["action"] == "access"


@pytest.mark.parametrize("name", ["deploy_uat", "deploy_prod"])
def test_deploy_jobs_validate_definitions_build_upload_and_update_the_code_location(name):
    body = job(name)
    script = "\n".join(flat_script(body))
    for step in (
        "pin_cluster_policy.py",
        "dagster definitions validate",
        "pip wheel",
        "packages/generic",
        "reload_code_location.py",
    ):
        assert step in script, step
    assert script.index("dagster definitions validate") < script.index("pip wheel") < script.index("packages/generic")
    assert body["needs"] == ["test"]
    assert not {"DATABRICKS_CLIENT_SECRET", "DATABRICKS_CLIENT_ID", "DATABRICKS_HOST"} & set(body.get("variables", {}))


# --- code location reload -------------------------------------------------------------------------------------


def test_reload_code_location_fails_the_job_unless_the_code_server_serves_the_release():
    from dagster._grpc.types import ListRepositoriesResponse
    from dagster._serdes import serialize_value
    from dagster._utils.error import SerializableErrorInfo

    reload = load_script("reload_code_location")

    class CodeServer:
        def __init__(self, loads=True, new_id="new"):
            self.server_id, self.loads, self.new_id, self.reloads = "old", loads, new_id, 0

        def get_server_id(self, timeout=None):
            return self.server_id

        def reload_code(self, timeout):
            self.reloads += 1
            self.server_id = self.new_id

        def list_repositories(self):
            error = SerializableErrorInfo("No module named 'aiml_assets'", [], "DagsterImportError")
            return serialize_value(ListRepositoriesResponse([]) if self.loads else error)

    served = CodeServer()
    assert reload.main(served) == 0 and served.reloads == 1
    assert reload.main(CodeServer(loads=False)) == 1
    assert reload.main(CodeServer(new_id="old")) == 1  # e.g. --fixed-server-id: the webserver would not notice


# --- remote webserver, daemon and code server (deployments/dagster/remote) -------------------------------------

REMOTE = DEPLOYMENTS / "dagster" / "remote"


def run_remote(script: str, env: dict, tmp_path: Path) -> tuple[int, list[str]]:
    """Run a start script with stand-ins for dagster's commands that print AIML_ENV, their name and arguments."""
    stubs = tmp_path / "bin"
    if not stubs.exists():
        stubs.mkdir()
        for name in ("dagster-webserver", "dagster-daemon", "dagster"):
            (stubs / name).write_text('#!/bin/sh\nprintf \'%s\\n\' "AIML_ENV=${AIML_ENV:-}" "$(basename "$0")" "$@"\n')
            (stubs / name).chmod(0o755)
    result = subprocess.run([REMOTE / script], env={"PATH": f"{stubs}:/usr/bin:/bin", **env}, capture_output=True,
                            text=True)
    return result.returncode, result.stdout.splitlines()


@pytest.mark.parametrize(("env", "read_only"), [("lab", False), ("uat", True), ("prod", True)])
def test_remote_webserver_is_read_only_in_uat_and_prod(env, read_only, tmp_path):
    code, argv = run_remote("webserver.sh", {"AIML_ENV": env}, tmp_path)
    assert code == 0
    assert argv[1:4] == ["dagster-webserver", "-w", str(REMOTE / "workspace.yaml")]
    assert ("--read-only" in argv) == read_only


@pytest.mark.parametrize("script", ["webserver.sh", "code-server.sh"])
@pytest.mark.parametrize("env", [{}, {"AIML_ENV": ""}, {"AIML_ENV": "local"}, {"AIML_ENV": "PROD"}])
def test_remote_scripts_refuse_an_unknown_environment(script, env, tmp_path):
    # an unset or mistyped environment must not start a writable prod webserver
    code, argv = run_remote(script, {**env, "AIML_CODE_LOCATION_DIR": "/srv/aiml"}, tmp_path)
    assert (code, argv) == (2, [])


def test_remote_daemon_and_code_server_differ_between_environments_only_by_aiml_env(tmp_path):
    def started(env: str, script: str) -> list[str]:
        code, argv = run_remote(script, {"AIML_ENV": env, "AIML_CODE_LOCATION_DIR": "/srv/aiml"}, tmp_path)
        assert code == 0 and argv[0] == f"AIML_ENV={env}"  # the code server passes AIML_ENV to the code location
        return argv[1:]

    daemon, code_server = started("prod", "daemon.sh"), started("prod", "code-server.sh")
    for env in ("lab", "uat"):
        assert (started(env, "daemon.sh"), started(env, "code-server.sh")) == (daemon, code_server)
    assert daemon == ["dagster-daemon", "run", "-w", str(REMOTE / "workspace.yaml")]
    assert code_server[:7] == [
        "dagster", "code-server", "start", "-m", "aiml_assets.definitions", "-d", "/srv/aiml/current"]
    assert code_server[code_server.index("--location-name") + 1] == load_script("reload_code_location").LOCATION
    assert "--fixed-server-id" not in code_server  # a reload must change the id the webserver and daemon watch


def test_remote_workspace_reaches_the_code_server_over_grpc(monkeypatch):
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    monkeypatch.setenv("DAGSTER_CODE_SERVER_HOST", "aiml-code-server")
    monkeypatch.setenv("DAGSTER_CODE_SERVER_PORT", "4000")
    [origin] = WorkspaceFileTarget([str(REMOTE / "workspace.yaml")]).create_origins()
    assert isinstance(origin, GrpcServerCodeLocationOrigin)
    assert (origin.location_name, origin.host, origin.port) == ("aiml_assets", "aiml-code-server", 4000)
