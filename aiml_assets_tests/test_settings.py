"""Environment selection: AIML_ENV picks resources/<env>.yaml; bad files fail with file, field and expectation."""

from pathlib import Path

import pytest
import yaml

from aiml_assets.settings import (
    ENVIRONMENTS, PRODUCTS_ENV_VAR, RESOURCES_DIR, SettingsError, current_env, load_settings, parse_settings,
)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_file_loads(env):
    settings = load_settings(env)
    assert settings.environment == env
    assert settings.is_local == (env == "local")
    assert (settings.databricks is None) == (env == "local")


def test_default_environment_is_local(monkeypatch):
    monkeypatch.delenv("AIML_ENV", raising=False)
    assert current_env() == "local"


def test_unknown_environment_is_refused(monkeypatch):
    monkeypatch.setenv("AIML_ENV", "staging")
    with pytest.raises(SettingsError, match=r"AIML_ENV='staging' is not an environment; expected one of local, lab"):
        current_env()


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "lab.yaml"
    with pytest.raises(SettingsError, match=f"{missing}: environment file not found"):
        parse_settings(missing)


def _broken(tmp_path: Path, env: str, **changes) -> Path:
    raw = yaml.safe_load((RESOURCES_DIR / f"{env}.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("env", "change", "expected"),
    [
        ("lab", {"storage__retention_days": "ninety"}, r"storage\.retention_days: .*valid integer.*'ninety'"),
        ("lab", {"storage__buckets": {"lab": "/tmp/lab"}}, r"storage: .*buckets\.lab: expected an s3:// URI"),
        ("local", {"compute": "kubernetes"}, r"compute: Input should be 'local' or 'databricks'"),
        ("lab", {"databricks": None}, r"databricks: required when compute is databricks"),
        ("prod", {"catalog__aiml_catalog": "AIML Prod"}, r"catalog\.aiml_catalog: String should match pattern"),
        ("uat", {"nexus__url": "ftp://nexus"}, r"nexus: .*url: expected an http\(s\):// URL"),
        ("local", {"mlflow": None}, r"mlflow: Field required"),
        ("local", {"spark__cores": 3}, r"spark\.cores: Extra inputs are not permitted"),
        ("uat", {"asset_groups": ["edp_sources", "prod_inference", "cdp_publication"]},
         r"cdp_publication only in prod \(and local\); uat never publishes to EDP"),
        ("prod", {"inference": None}, r"inference, storage\.buckets\.scoring: required when asset_groups has prod_inference"),
        ("prod", {"publication": None}, r"publication, storage\.buckets\.publication: required"),
        ("prod", {"inference__canary_share": 0.9}, r"inference\.canary_share: Input should be less than or equal to 0\.5"),
        ("prod", {"lockdown": None}, r"lockdown: required in prod"),
        # a cluster without the erasure key could not leave erased customers out of anything it reads
        ("lab", {"databricks__secrets": [{"name": "NEXUS_USERNAME", "scope": "aiml-lab", "key": "nexus-username"}]},
         r"databricks\.secrets: needs AIML_ERASURE_KEY from the environment's secret scope"),
        ("prod", {"erasure__key_env": "aiml-erasure-key"}, r"erasure\.key_env: String should match pattern"),
        # every job cluster comes from the environment's instance pool: required, and a Databricks pool id
        ("lab", {"databricks__instance_pool_id": None}, r"databricks\.instance_pool_id: Field required"),
        ("prod", {"databricks__instance_pool_id": "aiml-prod-jobs"},
         r"databricks\.instance_pool_id: String should match pattern"),
        ("uat", {"databricks__instance_pool_id": "1121-093544-aiml5-pool-u4tpo0l2\n  node_type_id: p4d.24xlarge"},
         r"databricks\.instance_pool_id: String should match pattern"),
        ("uat", {"lockdown": None}, r"lockdown: required in uat"),
        ("prod", {"inference__deploys_from": "uat"}, r"prod deploys from its own release manifest, not uat's"),
        ("uat", {"inference__drift__warn_psi": 0.3}, r"warn_psi 0\.3 must be below fail_psi 0\.25"),
        ("lab", {"storage__perishable": ["audit"]}, r"perishable: 'audit' is not a bucket of this environment"),
        ("uat", {"storage__perishable": []}, r"perishable, retention_days: a retention needs the buckets"),
        ("prod", {"storage__perishable": ["scoring"]}, r"perishable, retention_days"),
        ("lab", {"storage__perishable": ["scoring"]}, r"perishable: 'scoring' is not a bucket"),
        # values that end up in Unity Catalog SQL text, with a backtick or a quote that would break out of its quoting
        ("prod", {"publication__owner": "aiml-data-product-owners` ; GRANT ALL PRIVILEGES ON CATALOG edp TO `users"},
         r"publication\.owner: .*not a catalog principal: expected letters, digits and \. _ @ \+ -"),
        ("prod", {"publication__tenant_groups": ["edp-tenant-marketing", "edp-tenant-digital'"]},
         r"publication\.tenant_groups\.1: .*not a catalog principal"),
        ("local", {"publication__tenant_groups": ["account users"]}, r"publication\.tenant_groups\.0: .*principal"),
        ("lab", {"catalog__table_owner": 'aiml-engineers"'}, r"catalog\.table_owner: .*not a catalog principal"),
        ("prod", {"storage__buckets__publication": "s3://buk-aiml-prod/cdp' LOCATION 's3://elsewhere"},
         r"storage: .*buckets\.publication: .* is not an S3 location: expected s3://<bucket>"),
        ("uat", {"storage__buckets__scoring": "s3://buk-aiml-uat`"}, r"buckets\.scoring: .* is not an S3 location"),
        ("lab", {"storage__buckets__lab": "s3://buk-aiml-lab/../buk-aiml-prod"}, r"buckets\.lab: .*not an S3 location"),
        ("local", {"storage__buckets__lab": "buckets/`lab`"},
         r"buckets\.lab: .* is not a folder under the AIML home: expected a relative path"),
    ],
)
def test_bad_field_names_file_field_and_expectation(tmp_path, env, change, expected):
    path = _broken(tmp_path, env, **change)
    with pytest.raises(SettingsError) as info:
        parse_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid settings")
    assert __import__("re").search(expected, message), message


def test_file_for_another_environment_is_refused(tmp_path):
    path = tmp_path / "prod.yaml"
    path.write_text((RESOURCES_DIR / "lab.yaml").read_text())
    with pytest.raises(SettingsError, match=r"prod\.yaml: environment: expected 'prod', got 'lab'"):
        parse_settings(path, expected_env="prod")


def test_not_a_mapping(tmp_path):
    path = tmp_path / "local.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SettingsError, match="expected a mapping of settings at the top level"):
        parse_settings(path)




@pytest.fixture
def product_count(monkeypatch):
    """Sets PRODUCTS_ENV_VAR for settings loaded after it; no test after this one sees them."""
    def set_count(count: str) -> None:
        monkeypatch.setenv(PRODUCTS_ENV_VAR, count)
        load_settings.cache_clear()

    yield set_count
    load_settings.cache_clear()


def test_local_product_count_extends_the_named_products(product_count):
    named = load_settings("local").products
    product_count("49")
    products = load_settings("local").products
    assert products[:6] == named and len(named) == 6
    assert len(set(products)) == 49 and products[6:8] == ["product_07", "product_08"]
    product_count("2")
    assert load_settings("local").products == named[:2]


@pytest.mark.parametrize(("env", "count", "expected"), [
    ("local", "0", r"AIML_PRODUCTS: expected a whole number of products, at least 1 \(got '0'\)"),
    ("local", "many", r"AIML_PRODUCTS: expected a whole number"),
    ("lab", "49", r"AIML_PRODUCTS: local only; lab has its env file's products"),
])
def test_bad_product_count_is_refused(product_count, env, count, expected):
    product_count(count)
    with pytest.raises(SettingsError, match=expected):
        load_settings(env)
