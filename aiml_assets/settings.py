"""Environment selection: `AIML_ENV` picks `resources/<env>.yaml`, parsed into typed, validated settings.

The env files are the only place the four environments differ; everything else reads these settings.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from datetime import date
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aiml_assets.sql_identifiers import LOCAL_FOLDER, PRINCIPAL, S3_LOCATION

ENVIRONMENTS = ("local", "lab", "uat", "prod")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESOURCES_DIR = PROJECT_ROOT / "resources"
DEPLOYMENTS_DIR = PROJECT_ROOT / "deployments"
LOCAL_SPARK_OVERRIDES = RESOURCES_DIR / "local.override.yaml"  # untracked: this machine's local Spark settings
SPARK_ENV_PREFIX = "AIML_SPARK_"
# Locally, how many products the model family has: the env file's named products, then generated codes up to this
# count (`aiml seed-edp --products N` seeds them). Unset: the env file's products.
PRODUCTS_ENV_VAR = "AIML_PRODUCTS"


class SettingsError(ValueError):
    """An environment file is missing or does not hold what the code location needs."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_MASTER = re.compile(r"local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?|spark://[\w.-]+:[0-9]+(,[\w.-]+:[0-9]+)*")
_JVM_SIZE = re.compile(r"[1-9][0-9]*[kmgt]", re.IGNORECASE)


class LocalSparkSettings(_Strict):
    """Local compute: in-process Spark by default, or a standalone Spark cluster's master (`spark://host:port`).

    In the local environment each field can be overridden without touching the tracked env file: by the `spark:`
    mapping of the untracked LOCAL_SPARK_OVERRIDES file, then by `AIML_SPARK_<FIELD>` variables (which win)."""

    master: str = "local[*]"
    shuffle_partitions: int = Field(4, ge=1)
    driver_memory: str = "4g"
    executor_memory: str | None = None  # a cluster's executors (spark.executor.memory); None: Spark's 1g
    executor_cores: int | None = Field(None, ge=1)  # None: each executor takes all of its worker's cores
    python: str | None = None  # the executors' Python (spark.pyspark.python); None: the driver's interpreter
    ui: bool = False  # the driver's web UI on port 4040 (spark.ui.enabled)

    @field_validator("master")
    @classmethod
    def _known_master(cls, master: str) -> str:
        if not _MASTER.fullmatch(master):
            raise ValueError("expected local, local[N], local[*] or a standalone master spark://host:port")
        return master

    @field_validator("driver_memory", "executor_memory")
    @classmethod
    def _jvm_size(cls, size: str | None) -> str | None:
        if size is not None and not _JVM_SIZE.fullmatch(size):
            raise ValueError("expected a JVM memory size: a whole number and a unit k, m, g or t, e.g. 512m or 4g")
        return size

    @field_validator("python")
    @classmethod
    def _absolute(cls, python: str | None) -> str | None:
        if python is not None and not python.startswith("/"):
            raise ValueError("expected the absolute path of the Python executors run (a name is looked up on "
                             "their PATH, which is not this environment's)")
        return python


class DatabricksSecret(_Strict):
    """A secret the cluster reads from a Databricks secret scope into an environment variable."""

    name: str
    scope: str
    key: str


class DatabricksSettings(_Strict):
    """How assets run on the environment's workspace through the Databricks step launcher."""

    # The host comes from this env var at run time; credentials are never configured here: the Databricks SDK
    # reads the service principal's DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET from the environment.
    host_env_var: str = "DATABRICKS_HOST"
    cluster_spec: str  # a file under deployments/databricks/
    # The instance pool the environment's job clusters take their driver and workers from (idle instances: a step's
    # cluster starts in about a minute, not several), pinned by the environment's cluster policy. Its node type and
    # AWS availability are the pool's (deployments/databricks/pools/).
    instance_pool_id: str = Field(pattern=r"^[0-9]{4}-[0-9]{6}-[a-z]+[0-9]*-pool-[A-Za-z0-9]+$")
    run_name: str
    secrets: list[DatabricksSecret] = []
    staging_prefix: str = Field(pattern=r"^/")  # DBFS folder where the launcher stages each step
    timeout_seconds: int = Field(4 * 3600, ge=60)
    poll_interval_sec: int = Field(10, ge=1)


class StorageSettings(_Strict):
    """The environment's own buckets. Locally they are folders under the AIML home."""

    kind: Literal["local", "s3"]
    buckets: dict[str, str] = Field(min_length=1)  # role (lab, uat, prod, publication...) -> bucket URI
    retention_days: int | None = Field(None, ge=1)  # None: permanent (prod)
    perishable: list[str] = []  # the bucket roles the retention purge empties of anything older than retention_days
    # The bucket posture (deployments/s3/bucket-posture.json, the bucket_lifecycle job); required on S3:
    kms_key_alias: str | None = Field(None, pattern=r"^alias/[A-Za-z0-9/_-]{1,250}$")  # SSE-KMS: buckets and writes
    access_roles: list[Annotated[str, Field(pattern=r"^arn:aws:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")]] = []
    audit_lock_days: int | None = Field(None, ge=1)  # the audit bucket's Object Lock retention (compliance mode)

    @model_validator(mode="after")
    def _s3_buckets_have_a_posture(self) -> StorageSettings:
        if self.kind == "s3" and (self.kms_key_alias is None or not self.access_roles):
            raise ValueError("kms_key_alias, access_roles: required for S3 buckets (their encryption key and the "
                             "only principals their policy lets in)")
        if self.kind == "s3" and "audit" in self.buckets and self.audit_lock_days is None:
            raise ValueError("audit_lock_days: required with an S3 audit bucket (its Object Lock retention)")
        return self

    @model_validator(mode="after")
    def _perishable_buckets_have_a_retention(self) -> StorageSettings:
        if bool(self.perishable) != (self.retention_days is not None):
            raise ValueError("perishable, retention_days: a retention needs the buckets it applies to, and back")
        for role in self.perishable:
            if role not in self.buckets or role == "audit":
                raise ValueError(f"perishable: {role!r} is not a bucket of this environment that may expire")
        return self

    @model_validator(mode="after")
    def _uris_match_kind(self) -> StorageSettings:
        for role, uri in self.buckets.items():
            if self.kind == "s3" and not uri.startswith("s3://"):
                raise ValueError(f"buckets.{role}: expected an s3:// URI for kind s3, got {uri!r}")
            if self.kind == "local" and "://" in uri:
                raise ValueError(f"buckets.{role}: expected a folder under the AIML home for kind local, got {uri!r}")
            # the URIs become LOCATIONs and delta.`...` paths in SQL text
            (S3_LOCATION if self.kind == "s3" else LOCAL_FOLDER).check(uri, f"buckets.{role}")
        return self


# A group, user or service principal named in GRANT and OWNER TO statements
CatalogPrincipal = Annotated[str, AfterValidator(PRINCIPAL.check)]


class CatalogSettings(_Strict):
    """Unity Catalog remotely; locally a persistent catalog that maps the same three-level names."""

    kind: Literal["local", "unity"]  # EDP products keep EDP's own names (edp.fdp.customers, ...)
    aiml_catalog: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    table_owner: CatalogPrincipal = "aiml-engineers"  # the catalog principal (a group) that owns our interim tables


class MlflowSettings(_Strict):
    tracking_uri: str  # "sqlite" means the SQLite file under the AIML home
    registry_uri: str
    experiment: str


class NexusSettings(_Strict):
    kind: Literal["local", "http"]
    url: str = ""  # http(s) base URL of the Nexus server; empty for local
    repository: str = "aiml-models"
    username_env_var: str = "NEXUS_USERNAME"
    password_env_var: str = "NEXUS_PASSWORD"

    @model_validator(mode="after")
    def _url_for_http(self) -> NexusSettings:
        if self.kind == "http" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http(s):// URL for kind http, got {self.url!r}")
        return self


# The parts of the graph an environment may run (its env file's `asset_groups`), in HLD order.
ASSET_GROUPS = ("edp_sources", "lab_features", "model_versions", "prod_inference", "uat_parallel_run",
                "cdp_publication")


class FeatureSettings(_Strict):
    """Lab features: monthly snapshots (the first of each month) from `snapshot_start`."""

    snapshot_start: date
    label_window_days: int = Field(30, ge=1)
    main_job_snapshots: int = Field(3, ge=1)  # how many of the latest snapshots the main job (re)builds


class SourceRules(_Strict):
    """What EDP's products must hold beyond each column's type and values (sources/schemas.py): plausible dates and
    ages, complete months of steady volume, and what to do with a column we do not expect."""

    earliest_date: date  # no date or timestamp of a source before the bank's data begins
    min_age_years: int = Field(ge=16, le=25)  # a customer's age when they joined, at least
    max_age_years: int = Field(ge=80, le=130)  # a customer's age at the data horizon, at most
    volume_band: tuple[float, float]  # a month's rows / the median of its neighbours' must fall in this range
    extra_columns: dict[str, Literal["warn", "fail"]] = {}  # per product (edp.fdp.customers, ...); absent: warn

    @model_validator(mode="after")
    def _ordered(self) -> SourceRules:
        low, high = self.volume_band
        if not 0 < low < 1 < high:
            raise ValueError(f"volume_band: expected 0 < low < 1 < high, got {list(self.volume_band)}")
        return self


class GateSettings(_Strict):
    """The blocking validation gate a new model version must pass to get the `challenger` alias."""

    min_roc_auc: float = Field(ge=0.5, le=1.0)
    # too good to be true (a leaked feature): above this validation ROC AUC, or this far above the champion's
    max_roc_auc: float = Field(gt=0.5, le=1.0)
    max_gain_over_champion: float = Field(gt=0.0, le=0.5)
    min_pr_auc_lift: float = Field(ge=1.0)  # PR AUC over the validation positive rate; 1.0 is a random ranking
    calibration_ratio: tuple[float, float]  # mean predicted / observed rate must fall in this range
    champion_tolerance: float = Field(0.0, ge=0.0, le=0.1)  # ROC AUC the challenger may trail the champion by

    @model_validator(mode="after")
    def _ordered(self) -> GateSettings:
        low, high = self.calibration_ratio
        if not 0 < low <= 1 <= high:
            raise ValueError(f"calibration_ratio: expected [low, high] with 0 < low <= 1 <= high, got {[low, high]}")
        return self


class ModelSettings(_Strict):
    training_snapshots: int = Field(3, ge=2)  # the latest N snapshots of the training set: N-1 train, 1 validates
    gate: GateSettings


class DriftSettings(_Strict):
    """Population stability index (PSI) of each scoring feature against the deployed model's training data."""

    warn_psi: float = Field(gt=0)
    fail_psi: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DriftSettings:
        if self.warn_psi >= self.fail_psi:
            raise ValueError(f"warn_psi {self.warn_psi} must be below fail_psi {self.fail_psi}")
        return self


class InferenceSettings(_Strict):
    """Daily scoring of every customer with the deployed models."""

    scoring_start: date  # the first daily partition
    deploys_from: Literal["uat", "prod"]  # whose release manifest (resources/<env>.yaml) this env deploys
    canary_share: float = Field(0.0, ge=0.0, le=0.5)  # share of customers the challenger scores, hash-selected
    drift: DriftSettings


class PublicationSettings(_Strict):
    """The Consolidated Data Product in the EDP central catalog."""

    catalog: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # where tenants find it: <catalog>.<schema>.nba_propensity
    schema_name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    owner: CatalogPrincipal
    classification: Literal["public", "internal", "confidential", "restricted"]
    tenant_groups: list[CatalogPrincipal] = Field(min_length=1)  # granted SELECT, nothing else


class LockdownSettings(_Strict):
    """UAT and prod run only what this instance's schedule or sensor ticks launched, what this CI service principal
    launched with a signed, approved change, or what a break-glass grant in force allows (governance/lockdown.py)."""

    ci_principal: str = Field(pattern=r"^[a-z][a-z0-9-]{2,62}$")
    # the HMAC key CI signs launches with; held only by the CI runner and the environment's code server
    signing_key_env: str = Field("AIML_LAUNCH_SIGNING_KEY", pattern=r"^[A-Z][A-Z0-9_]*$")
    max_signature_minutes: int = Field(60, ge=1, le=240)  # how long a CI launch may wait to start
    # how late a scheduled run may start (the daemon catching up after downtime); each signature runs only once
    schedule_signature_hours: int = Field(24, ge=1, le=48)
    # a schedule's tick lists its runs only once they are all submitted; how long a run waits to find itself there
    tick_wait_seconds: float = Field(120, ge=0, le=900)


class ErasureSettings(_Strict):
    """GDPR erasure (sources/erased.py): customers are recorded and matched as HMAC-SHA256 digests under this
    environment's erasure key, held only in the variable named here (a Databricks secret remotely)."""

    key_env: str = Field("AIML_ERASURE_KEY", pattern=r"^[A-Z][A-Z0-9_]*$")


class AuditSettings(_Strict):
    """The audit log's hash chain (resources/audit.py) is an HMAC under this environment's audit key, held only in
    the variable named here: a Databricks secret on clusters, the code server's and daemon's secret store."""

    key_env: str = Field("AIML_AUDIT_KEY", pattern=r"^[A-Z][A-Z0-9_]*$")
    development_key: bool = False  # local only: a fixed, public key when the variable is unset


class ReleaseEntry(_Strict):
    """One deployed model version: what UAT and prod pull from Nexus, and the change request that put it there."""

    name: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of model.zip
    # of metadata.json, whose reference profile is the drift baseline: pinned here like the binary, not trusted to
    # Nexus's own sidecar
    metadata_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    change_request: str


class ProductRelease(_Strict):
    champion: ReleaseEntry | None = None
    challenger: ReleaseEntry | None = None


class Settings(_Strict):
    environment: Literal["local", "lab", "uat", "prod"]
    compute: Literal["local", "databricks"]
    spark: LocalSparkSettings = LocalSparkSettings()
    databricks: DatabricksSettings | None = None
    storage: StorageSettings
    catalog: CatalogSettings
    mlflow: MlflowSettings
    nexus: NexusSettings
    products: list[str] = Field(min_length=1)
    sources: SourceRules
    asset_groups: list[Literal[ASSET_GROUPS]] = Field(min_length=1)  # which parts of the graph this env runs
    features: FeatureSettings | None = None
    models: ModelSettings | None = None
    inference: InferenceSettings | None = None
    publication: PublicationSettings | None = None
    lockdown: LockdownSettings | None = None  # required in uat and prod: no run launched by hand
    erasure: ErasureSettings = ErasureSettings()
    audit: AuditSettings = AuditSettings()
    # product -> deployed versions; written by the promotion job (`aiml promote`), never by hand
    release_manifest: dict[str, ProductRelease] = {}

    @model_validator(mode="after")
    def _databricks_when_remote(self) -> Settings:
        if self.compute == "databricks" and self.databricks is None:
            raise ValueError("databricks: required when compute is databricks")
        return self

    @model_validator(mode="after")
    def _clusters_get_the_keys(self) -> Settings:
        secrets = {s.name for s in self.databricks.secrets} if self.databricks is not None else set()
        if self.databricks is not None and self.erasure.key_env not in secrets:
            raise ValueError(f"databricks.secrets: needs {self.erasure.key_env} from the environment's secret scope "
                             "(erasure.key_env): without it no run can leave erased customers out")
        if self.databricks is not None and self.audit.key_env not in secrets:
            raise ValueError(f"databricks.secrets: needs {self.audit.key_env} from the environment's secret scope "
                             "(audit.key_env): without it no step can record to the audit log")
        if self.audit.development_key and self.environment != "local":
            raise ValueError("audit.development_key: local only; elsewhere the audit key is a secret")
        return self

    @model_validator(mode="after")
    def _lab_features_need_their_settings(self) -> Settings:
        if "lab_features" in self.asset_groups:
            if self.features is None:
                raise ValueError("features: required when asset_groups has lab_features")
            if "lab" not in self.storage.perishable:
                raise ValueError("storage: lab_features need a perishable lab bucket (storage.perishable, "
                                 "retention_days)")
        return self

    @model_validator(mode="after")
    def _model_versions_need_their_settings(self) -> Settings:
        if "model_versions" in self.asset_groups:
            if self.models is None:
                raise ValueError("models: required when asset_groups has model_versions")
            if "lab_features" not in self.asset_groups:
                raise ValueError("asset_groups: model_versions train on lab_features, which this environment lacks")
        return self

    @model_validator(mode="after")
    def _scoring_needs_its_settings(self) -> Settings:
        groups = set(self.asset_groups)
        if "prod_inference" in groups and (self.inference is None or "scoring" not in self.storage.buckets):
            raise ValueError("inference, storage.buckets.scoring: required when asset_groups has prod_inference")
        if self.inference is not None and self.environment in ("uat", "prod") \
                and self.inference.deploys_from != self.environment:
            raise ValueError(f"inference.deploys_from: {self.environment} deploys from its own release manifest, "
                             f"not {self.inference.deploys_from}'s")
        for part in ("uat_parallel_run", "cdp_publication"):
            if part in groups and "prod_inference" not in groups:
                raise ValueError(f"asset_groups: {part} needs prod_inference")
        if "cdp_publication" in groups:
            if self.environment not in ("local", "prod"):
                raise ValueError(f"asset_groups: cdp_publication only in prod (and local); {self.environment} never "
                                 "publishes to EDP")
            if self.publication is None or "publication" not in self.storage.buckets:
                raise ValueError("publication, storage.buckets.publication: required when asset_groups has "
                                 "cdp_publication")
        return self

    @model_validator(mode="after")
    def _uat_and_prod_are_locked(self) -> Settings:
        if self.environment in ("uat", "prod") and self.lockdown is None:
            raise ValueError(f"lockdown: required in {self.environment} (runs only from schedule and sensor ticks, "
                             "signed CI launches under an approved change, or break-glass)")
        return self

    @model_validator(mode="after")
    def _manifest_names_known_products(self) -> Settings:
        unknown = sorted(set(self.release_manifest) - set(self.products))
        if unknown:
            raise ValueError(f"release_manifest: {', '.join(unknown)} not in products")
        return self

    @property
    def is_local(self) -> bool:
        return self.compute == "local"


def current_env() -> str:
    env = os.environ.get("AIML_ENV", "local").strip() or "local"
    if env not in ENVIRONMENTS:
        raise SettingsError(f"AIML_ENV={env!r} is not an environment; expected one of {', '.join(ENVIRONMENTS)}")
    return env


def aiml_home() -> Path:
    """Local state (catalog, MLflow database, Nexus folder, buckets) lives here; tests point it at a temp dir."""
    return Path(os.environ.get("AIML_HOME", PROJECT_ROOT / ".aiml")).resolve()


def _describe(error: dict) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"  {field}: {error['msg']} (got {error.get('input')!r})"


def parse_settings(path: Path, expected_env: str | None = None, products: list[str] | None = None) -> Settings:
    """The settings of an env file; `products`, if given, in place of the file's (a local copy of another env's file
    stands for the local products)."""
    if not path.is_file():
        raise SettingsError(f"{path}: environment file not found")
    raw = _read_yaml(path) | ({"products": products} if products is not None else {})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(_describe(e) for e in exc.errors())
        raise SettingsError(f"{path}: invalid settings\n{lines}") from exc
    if expected_env and settings.environment != expected_env:
        raise SettingsError(f"{path}: environment: expected {expected_env!r}, got {settings.environment!r}")
    return settings


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top level")
    return raw


def with_spark_overrides(settings: Settings, overrides: Path) -> Settings:
    """`settings` with its Spark settings overridden by the `spark:` mapping of `overrides` (if the file exists),
    then by non-empty AIML_SPARK_<FIELD> variables; a bad value fails naming the file and field, or the variable."""
    layers = []
    if overrides.is_file():
        raw = _read_yaml(overrides)
        if set(raw) != {"spark"} or not isinstance(raw["spark"], dict):
            raise SettingsError(f"{overrides}: expected only a `spark:` mapping of local Spark settings, got "
                                f"{sorted(raw)}")
        layers.append((raw["spark"], f"{overrides}: ", lambda field: f"spark.{field}"))
    variables = {name.removeprefix(SPARK_ENV_PREFIX).lower(): value for name, value in os.environ.items()
                 if name.startswith(SPARK_ENV_PREFIX) and value.strip()}
    layers.append((variables, "", lambda field: f"{SPARK_ENV_PREFIX}{field.upper()}"))
    merged, spark = settings.spark.model_dump(), settings.spark
    for values, where, name in layers:
        merged.update(values)
        try:
            spark = LocalSparkSettings.model_validate(merged)
        except ValidationError as exc:
            lines = "\n".join(f"  {where}{_describe_override(e, name)}" for e in exc.errors())
            raise SettingsError(f"invalid local Spark settings\n{lines}") from exc
    return settings.model_copy(update={"spark": spark})


def _describe_override(error: dict, name) -> str:
    field = str(error["loc"][0])
    if error["type"] == "extra_forbidden":
        known = ", ".join(map(name, LocalSparkSettings.model_fields))
        return f"{name(field)}: not a Spark setting; expected one of {known}"
    return f"{name(field)}: {error['msg']} (got {error.get('input')!r})"


def product_codes(named: list[str], count: int) -> list[str]:
    """`count` distinct product codes: the first of `named`, then generated ones (product_07, product_08, ...)."""
    generated = [f"product_{number:02d}" for number in range(len(named) + 1, count + 1)]
    return [*named, *generated][:count]


def with_product_count(settings: Settings, count: str | None) -> Settings:
    """`settings` with `count` products (PRODUCTS_ENV_VAR's value; None or empty: the env file's products)."""
    if count is None or not count.strip():
        return settings
    if settings.environment != "local":
        raise SettingsError(f"{PRODUCTS_ENV_VAR}: local only; {settings.environment} has its env file's products")
    if not count.strip().isdigit() or int(count) < 1:
        raise SettingsError(f"{PRODUCTS_ENV_VAR}: expected a whole number of products, at least 1 (got {count!r})")
    products = product_codes(settings.products, int(count))
    try:
        return Settings.model_validate({**settings.model_dump(), "products": products})
    except ValidationError as exc:
        lines = "\n".join(_describe(e) for e in exc.errors())
        raise SettingsError(f"{PRODUCTS_ENV_VAR}={count}: invalid settings\n{lines}") from exc


@lru_cache(maxsize=None)
def load_settings(env: str | None = None) -> Settings:
    env = env or current_env()
    if env not in ENVIRONMENTS:
        raise SettingsError(f"{env!r} is not an environment; expected one of {', '.join(ENVIRONMENTS)}")
    settings = with_product_count(parse_settings(RESOURCES_DIR / f"{env}.yaml", expected_env=env),
                                  os.environ.get(PRODUCTS_ENV_VAR))
    return with_spark_overrides(settings, LOCAL_SPARK_OVERRIDES) if env == "local" else settings
