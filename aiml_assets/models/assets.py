"""Model versions: one propensity model per product, trained on the lab training set, gated, published to Nexus."""


import functools
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    Backoff,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    StaticPartitionsDefinition,
    asset,
    asset_check,
)
from pyspark.sql import functions as F

from aiml_assets.asset_tables import lab_table
from aiml_assets.features.assets import TRAINING_KEY
from aiml_assets.models import diagnostics, registry
from aiml_assets.models.binary import fetch_metadata, nexus_paths, publish_model, version_metadata
from aiml_assets.models.gate import decide
from aiml_assets.models.registry import BINARY_TAG, CHALLENGER, CHAMPION, GATE_TAG
from aiml_assets.models.schemas import model_binary_schema, model_scores_schema
from aiml_assets.models.training import (
    FEATURE_IMPORTANCE, evaluate, log_and_register, registered_name, score, train, validation_metrics,
)
from aiml_assets.plots import inline_markdown
from aiml_assets.provenance import code_version
from aiml_assets.quality import pandera_check, spark_schema, validate
from aiml_assets.resources.nexus import NexusError, NexusUnavailable
from aiml_assets.resources.per_environment import STEP_LAUNCHER_KEY
from aiml_assets.settings import Settings

GROUP = "model_versions"
MODEL_KEY = AssetKey(["models", "propensity_model"])
BINARY_KEY = AssetKey(["models", "model_binary"])
MODEL_RESOURCES = {STEP_LAUNCHER_KEY, "spark", "catalog", "mlflow"}
BINARY_RESOURCES = {STEP_LAUNCHER_KEY, "spark", "mlflow", "nexus"}
# For a blip: a locked MLflow store (each attempt has already waited out SQLite's 20 s busy timeout), Nexus
# unreachable. What cannot change on a retry fails with `Failure(allow_retries=False)`.
TRANSIENT = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL)


def naming_the_store(doing: str):
    """A step whose locked MLflow store fails as an error naming the store, `doing` and the partition."""
    def decorate(step):
        @functools.wraps(step)
        def wrapped(context):
            with context.resources.mlflow.unavailable_named(f"{doing} for {context.partition_key}"):
                return step(context)
        return wrapped
    return decorate


@dataclass(frozen=True)
class TrainingData:
    rows: pd.DataFrame
    table: str
    table_version: int
    snapshots: list[str]

    def tags(self) -> dict[str, str]:
        return {"training_table": self.table, "training_table_version": str(self.table_version),
                "training_partitions": ",".join(self.snapshots)}


def read_training_data(context, settings: Settings, product: str, *, version: int | None = None,
                       snapshots: list[str] | None = None) -> TrainingData:
    """One product's rows of the training set at Delta `version` (default: its current version, then pinned), of
    the given snapshots or the latest `training_snapshots` ones, read by catalog name."""
    name = lab_table(settings, TRAINING_KEY).name
    catalog, spark = context.resources.catalog, context.resources.spark.get_session()
    version = catalog.version(name) if version is None else version
    rows = catalog.read(spark, name, version).filter(F.col("product_code") == product)
    if snapshots is None:
        present = sorted(str(r[0]) for r in rows.select("snapshot_date").distinct().collect())
        snapshots = present[-settings.models.training_snapshots:]
    frame = rows.filter(F.col("snapshot_date").isin(snapshots)).toPandas()
    return TrainingData(frame, name, version, snapshots)


def _metric_metadata(metrics: dict[str, float]) -> dict:
    return {key: MetadataValue.float(round(value, 6)) for key, value in metrics.items()}


def model_assets(settings: Settings) -> list:
    products = StaticPartitionsDefinition(settings.products)
    common = dict(partitions_def=products, group_name=GROUP, owners=["team:aiml"])

    scores_schema = model_scores_schema(settings.products)

    def scores_frame(context, candidate: "Candidate"):
        rows = candidate.validation[["customer_id", "snapshot_date", "product_code"]].assign(
            score=candidate.scores.astype("float64"))
        return context.resources.spark.get_session().createDataFrame(rows, schema=spark_schema(scores_schema))

    @asset(
        key=MODEL_KEY,
        deps=[AssetDep(TRAINING_KEY, partition_mapping=AllPartitionMapping())],
        description="Per product: a propensity classifier trained on the earlier training-set snapshots and "
        "validated on the latest, tracked in MLflow and registered as a new version (gated before it gets an alias).",
        required_resource_keys=MODEL_RESOURCES,
        kinds={"mlflow", "scikitlearn"},
        retry_policy=TRANSIENT,
        **common,
    )
    @naming_the_store("training and registering the model")
    def propensity_model(context: AssetExecutionContext) -> MaterializeResult:
        product = context.partition_key
        name = registered_name(settings.catalog.aiml_catalog, product)
        experiment_id = context.resources.mlflow.activate()
        if abandoned := registry.end_abandoned_runs(experiment_id, _lineage(context), product):
            context.log.warning(f"{product}: ended MLflow runs {', '.join(abandoned)} left RUNNING by an earlier "
                                "attempt as FAILED; their versions, if any, are never gated or published")
        data = read_training_data(context, settings, product)
        context.log.info(f"{product}: training on {len(data.rows)} rows of {data.table} version "
                         f"{data.table_version}, snapshots {', '.join(data.snapshots)}")
        trained = train(data.rows)
        roc = diagnostics.roc_png(trained.validation["label"].to_numpy(), trained.validation_scores,
                                  f"{product}: validation {trained.validation_snapshot}")
        importance = diagnostics.feature_importance(trained.model, trained.validation)
        importance_plot = diagnostics.importance_png(importance, f"{product}: permutation importance")
        context.log.info(f"{product}: validation ROC AUC {trained.metrics['roc_auc']:.4f}; logging to MLflow")
        run_id, version = log_and_register(
            trained, experiment_id=experiment_id, name=name, product=product,
            tags={"dagster_run_id": context.run.run_id, "dagster_asset": MODEL_KEY.to_user_string(),
                  "code_version": code_version(), **data.tags()},
            plots={"roc_curve.png": roc, "feature_importance.png": importance_plot}, importance=importance,
        )
        context.log.info(f"{product}: registered {name} version {version} (MLflow run {run_id})")
        return MaterializeResult(metadata={
            "model_name": MetadataValue.text(name),
            "model_version": MetadataValue.int(version),
            "mlflow_run_id": MetadataValue.text(run_id),
            **_metric_metadata(trained.metrics),
            "training_table": MetadataValue.text(data.table),
            "training_table_version": MetadataValue.int(data.table_version),
            "training_snapshots": MetadataValue.text(", ".join(trained.train_snapshots)),
            "validation_snapshot": MetadataValue.text(trained.validation_snapshot),
            "roc_curve": MetadataValue.md(inline_markdown(roc, "ROC curve")),
            "feature_importance": MetadataValue.md(inline_markdown(importance_plot, "feature importance")),
        })

    @asset_check(
        asset=MODEL_KEY, name="validation_gate", blocking=True, partitions_def=products,
        required_resource_keys=MODEL_RESOURCES, retry_policy=TRANSIENT,
        description="Reloads the registered version, re-scores its validation snapshot, and requires the env file's "
        "thresholds, no loss against the champion and no result too good to be true (a leak alarm naming the top "
        "features); on pass the version gets the challenger alias.",
    )
    @naming_the_store("gating the registered version")
    def validation_gate(context: AssetCheckExecutionContext) -> AssetCheckResult:
        candidate = _candidate(context, settings)
        client = context.resources.mlflow.client()
        champion_version = registry.alias_version(client, candidate.name, CHAMPION)
        champion = None
        if champion_version is not None and champion_version != candidate.version:
            champion = evaluate(registry.load(candidate.name, champion_version), candidate.validation)
        importance = mlflow.artifacts.load_dict(f"runs:/{candidate.run_id}/{FEATURE_IMPORTANCE}")
        decision = decide(settings.models.gate, candidate.metrics, champion, champion_version, importance)
        # The scores' own schema is part of the verdict: the alias must not go to a version whose
        # ModelScores_schema check (a separate step) could still fail after this one passed.
        rows, violations = validate(scores_schema, scores_frame(context, candidate))
        decision = replace(decision, failures=decision.failures + [f"scores: {v.describe(rows)}" for v in violations])
        message = decision.describe(candidate.name, candidate.version)
        version = str(candidate.version)
        client.set_model_version_tag(candidate.name, version, "gate_metrics",
                                     json.dumps({"candidate": decision.candidate, "champion": decision.champion}))
        client.set_model_version_tag(candidate.name, version, GATE_TAG, "passed" if decision.passed else "failed")
        metadata = {"model_version": MetadataValue.int(candidate.version), **_metric_metadata(decision.candidate),
                    "top_features": MetadataValue.json(decision.top_features)}
        if decision.champion is not None:
            metadata["champion_version"] = MetadataValue.int(champion_version)
            metadata["champion_roc_auc"] = MetadataValue.float(round(decision.champion["roc_auc"], 6))
        if not decision.passed:
            context.log.error(message)
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=message,
                                    metadata=metadata)
        client.set_registered_model_alias(candidate.name, CHALLENGER, version)
        context.log.info(f"{message}; alias {CHALLENGER} -> version {version}")
        return AssetCheckResult(passed=True, description=message, metadata=metadata)

    @asset(
        key=BINARY_KEY,
        deps=[MODEL_KEY],
        description="The gated version's (this run's, else the challenger's) serialized model and its metadata "
        "(metrics, signature, git commit, training data versions) in Nexus at a fixed path per name and version, "
        "each with a sha256; never data.",
        required_resource_keys=BINARY_RESOURCES,
        kinds={"nexus"},
        retry_policy=TRANSIENT,
        **common,
    )
    @naming_the_store("publishing the gated version")
    def model_binary(context: AssetExecutionContext) -> MaterializeResult:
        name = registered_name(settings.catalog.aiml_catalog, context.partition_key)
        client = context.resources.mlflow.client()
        try:
            version = _version_to_publish(context, client, name)
            with tempfile.TemporaryDirectory(prefix="aiml_model_") as tmp:
                model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                                     dst_path=tmp))
                published = publish_model(context.resources.nexus, name, version, model_dir,
                                          metadata=version_metadata(client, name, version, model_dir))
        except NexusUnavailable:
            raise
        except (NexusError, registry.ModelVersionNotFound, registry.GateNotPassed) as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc  # the same on every attempt
        # the registry's record that the version is in Nexus, complete: set only once both files are published
        client.set_model_version_tag(name, str(version), BINARY_TAG, published["model_sha256"])
        context.log.info(f"{name} version {version}: published to Nexus, model sha256 {published['model_sha256']}")
        return MaterializeResult(metadata={
            "model_name": MetadataValue.text(name),
            "model_version": MetadataValue.int(version),
            **{key: MetadataValue.text(value) for key, value in published.items()},
        })

    def published_metadata(context):
        name = registered_name(settings.catalog.aiml_catalog, context.partition_key)
        version = _version_to_publish(context, context.resources.mlflow.client(), name)
        nexus = context.resources.nexus
        meta = fetch_metadata(nexus, name, version)
        row = {"name": meta["name"], "version": int(meta["version"]), "model_sha256": meta["model_sha256"],
               "metadata_sha256": nexus.sha256(nexus_paths(name, version).metadata),
               "roc_auc": float(meta["metrics"]["roc_auc"]), "git_commit": meta["git_commit"]}
        return context.resources.spark.get_session().createDataFrame(
            pd.DataFrame([row]), schema=spark_schema(model_binary_schema()))

    return [
        propensity_model, validation_gate, model_binary,
        pandera_check(MODEL_KEY, scores_schema, lambda context: scores_frame(context, _candidate(context, settings)),
                      MODEL_RESOURCES, partitions_def=products, settings=settings),
        pandera_check(BINARY_KEY, model_binary_schema(), published_metadata, BINARY_RESOURCES,
                      partitions_def=products),
    ]


@dataclass(frozen=True)
class Candidate:
    name: str
    version: int
    run_id: str  # the MLflow run that trained and registered it
    validation: pd.DataFrame
    scores: np.ndarray  # the registered version's, on `validation`
    metrics: dict[str, float]


def _candidate(context, settings: Settings) -> Candidate:
    """The version this run registered, re-scored from the registry on its own validation snapshot."""
    product = context.partition_key
    name = registered_name(settings.catalog.aiml_catalog, product)
    experiment_id = context.resources.mlflow.activate()
    run, version = registry.version_registered_by(experiment_id, _lineage(context), product)
    tags = run.data.tags
    # the same rows the asset validated on: the training table as of the version it trained from
    validation = read_training_data(context, settings, product, version=int(tags["training_table_version"]),
                                    snapshots=[tags["validation_snapshot"]]).rows
    scores = score(registry.load(name, version), validation)
    return Candidate(name, version, run.info.run_id, validation, scores, validation_metrics(validation, scores))


def _lineage(context) -> list[str]:
    """This run, then the run it re-executes from failure and the root of that chain."""
    return [context.run.run_id, context.run.parent_run_id, context.run.root_run_id]


def _version_to_publish(context, client, name: str) -> int:
    """The version this run (or the run it re-executes) trained, else the current challenger; either way only a
    version whose gate verdict is "passed"."""
    try:
        _, version = registry.version_registered_by(context.resources.mlflow.activate(), _lineage(context),
                                                    context.partition_key)
    except registry.ModelVersionNotFound:
        version = registry.alias_version(client, name, CHALLENGER)
        if version is None:
            raise registry.ModelVersionNotFound(
                f"{name} has no {CHALLENGER} version: no version has passed the gate") from None
    verdict = client.get_model_version(name, str(version)).tags.get(GATE_TAG)
    if verdict != "passed":
        raise registry.GateNotPassed(f"{name} version {version}: validation gate verdict is {verdict!r}, not "
                                     f"'passed'; only gated versions are published to Nexus")
    return version
