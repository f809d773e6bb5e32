"""Model versions: one propensity model per product, trained on the lab training set, gated, published to Nexus.

The family is one step (`model_family`): a single-run backfill over the selected products trains them all on the
executors (`family.train_family`), then the driver gives each product its MLflow run, registered version, gate
verdict, ModelScores schema check, Nexus binary and ModelBinary schema check, yielding each materialization and
check evaluation for that product's partition. One product's failure is that product's: it gets a failed check or
no materialization, the others go on, and the step fails at the end naming it. Selecting one partition (a data
scientist in the UI) trains one product the same way.
"""


import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

from dagster import (
    AllPartitionMapping,
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MetadataValue,
    StaticPartitionsDefinition,
    multi_asset,
)

from aiml_assets.asset_tables import TableAccess, lab_table
from aiml_assets.keys import BINARY_KEY, MODEL_GROUP as GROUP, MODEL_KEY, TRAINING_KEY, StepLauncherParam
from aiml_assets.models import registry
from aiml_assets.models.family import Fitted, chosen_snapshots, of_snapshots, train_family
from aiml_assets.models.publishing import Attempts, publish_version, published_row
from aiml_assets.models.registry import CHALLENGER, CHAMPION, GATE_TAG
from aiml_assets.models.schemas import model_binary_schema, model_scores_schema
from aiml_assets.models.training import log_and_register, registered_name
from aiml_assets.models.diagnostics import importance_png, roc_png
from aiml_assets.models.gate import decide
from aiml_assets.plots import inline_markdown
from aiml_assets.provenance import code_version
from aiml_assets.quality import refuse_unchecked, schema_check, schema_check_spec, spark_schema
from aiml_assets.resources.catalog import Catalog
from aiml_assets.resources.nexus import NexusRepository
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.storage import Storage
from aiml_assets.resources.tables import DeltaTables
from aiml_assets.resources.tracking import MlflowResource
from aiml_assets.settings import Settings

__all__ = ["BINARY_KEY", "GROUP", "MODEL_KEY", "model_assets"]

GATE = "validation_gate"


class ProductFailed(Exception):
    """This product gets nothing further in this step (its reason is already on its partition); the others go
    on."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: int
    run_id: str


def _metric_metadata(metrics: dict[str, float]) -> dict:
    return {key: MetadataValue.float(round(value, 6)) for key, value in metrics.items()}


def _evaluation(result: AssetCheckResult, partition: str) -> AssetCheckEvaluation:
    """`result` as the evaluation of `partition`'s check: a step over several partitions records each its own."""
    return AssetCheckEvaluation(asset_key=result.asset_key, check_name=result.check_name, passed=result.passed,
                                metadata=result.metadata, severity=result.severity, description=result.description,
                                blocking=True, partition=partition)


def _lineage(run) -> list[str]:
    """This run, then the run it re-executes from failure and the root of that chain."""
    return [run.run_id, run.parent_run_id, run.root_run_id]


def model_assets(settings: Settings) -> list:
    products = StaticPartitionsDefinition(settings.products)
    common = dict(group_name=GROUP, owners=["team:aiml"], skippable=True)
    checks = [
        AssetCheckSpec(GATE, asset=MODEL_KEY, blocking=True, description=(
            "Requires the env file's thresholds on the candidate's validation scores, no loss against the champion "
            "(scored on the same rows) and no result too good to be true (a leak alarm naming the top features); "
            "on pass the version gets the challenger alias.")),
        schema_check_spec(MODEL_KEY, model_scores_schema(settings.products), settings),
        schema_check_spec(BINARY_KEY, model_binary_schema()),
    ]

    @multi_asset(
        name="model_family",
        specs=[
            AssetSpec(MODEL_KEY, deps=[AssetDep(TRAINING_KEY, partition_mapping=AllPartitionMapping())],
                      description="Per product: a propensity classifier trained on the earlier training-set "
                      "snapshots and validated on the latest, tracked in MLflow and registered as a new version "
                      "(gated before it gets an alias).", kinds={"mlflow", "scikitlearn"}, **common),
            AssetSpec(BINARY_KEY, deps=[MODEL_KEY], description="The gated version's (this run's, else the "
                      "challenger's) serialized model and its metadata (metrics, signature, git commit, training "
                      "data versions) in Nexus at a fixed path per name and version, each with a sha256; never data.",
                      kinds={"nexus"}, **common),
        ],
        check_specs=checks, partitions_def=products, can_subset=True, backfill_policy=BackfillPolicy.single_run(),
    )
    def model_family(context: AssetExecutionContext, pyspark_step_launcher: StepLauncherParam,
                     spark: SparkResource, catalog: Catalog, tables: DeltaTables, storage: Storage,
                     mlflow: MlflowResource, nexus: NexusRepository) -> Iterator:
        selected = context.selected_asset_keys
        refuse_unchecked(selected, context.selected_asset_check_keys, checks)
        step = FamilyStep(settings, context.log, _lineage(context.run),
                          TableAccess(spark, catalog, tables, storage, context.run.run_id), mlflow, nexus)
        failed = {}
        candidates = step.train(context.partition_keys) if MODEL_KEY in selected else {}
        for product in context.partition_keys:
            try:
                if MODEL_KEY in selected:
                    yield from step.register_and_gate(product, candidates.get(product))
                if BINARY_KEY in selected:
                    yield from step.publish(product)
            except ProductFailed as exc:
                failed[product] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one product's error is that product's; the step fails below
                context.log.error(f"{product}: failed: {type(exc).__name__}: {exc}")
                failed[product] = f"{type(exc).__name__}: {exc}"
        if failed:
            raise Failure(description=f"{len(failed)} of {len(context.partition_keys)} products failed: "
                          + "; ".join(f"{product}: {reason}" for product, reason in failed.items()),
                          metadata={"failed_products": MetadataValue.json(failed)}, allow_retries=False)

    return [model_family]


class FamilyStep:
    """What the family step does per product on the driver, with the step's resources."""

    def __init__(self, settings: Settings, log, lineage: list[str], io: TableAccess, mlflow: MlflowResource,
                 nexus: NexusRepository):
        self.settings, self.log, self.lineage, self.io, self.mlflow, self.nexus = \
            settings, log, lineage, io, mlflow, nexus
        self.scores_schema, self.binary_schema = model_scores_schema(settings.products), model_binary_schema()
        self.champions: dict[str, int] = {}
        self.experiment_id = ""

    def name(self, product: str) -> str:
        return registered_name(self.settings.catalog.aiml_catalog, product)

    def attempts(self, doing: str, product: str) -> Attempts:
        return Attempts(self.mlflow, self.log, f"{doing} for {product}")

    def train(self, products: list[str]) -> dict[str, Fitted | str]:
        """Every product's candidate, trained on the executors from one read of the training set at one version."""
        table = lab_table(self.settings, TRAINING_KEY)
        self.table, self.table_version = table.name, self.io.catalog.version(table.name)
        rows = self.io.catalog.read(self.io.spark.get_session(), table.name, self.table_version)
        rows = rows.filter(rows["product_code"].isin(products))
        self.snapshots = chosen_snapshots(rows, self.settings.models.training_snapshots)
        champion_models = Attempts(self.mlflow, self.log, "loading the champions").run(
            lambda: self.load_champions(products))
        self.log.info(f"training {len(self.snapshots)} products on the executors from {self.table} version "
                      f"{self.table_version}")
        return train_family(of_snapshots(rows, self.snapshots), champion_models)

    def load_champions(self, products: list[str]) -> dict[str, object]:
        """Each product's champion model, if it has one: scored on the executors beside its candidate."""
        self.experiment_id = self.mlflow.activate()
        client = self.mlflow.client()
        self.champions = {p: v for p in products
                          if (v := registry.alias_version(client, self.name(p), CHAMPION)) is not None}
        return {p: registry.load(self.name(p), v) for p, v in self.champions.items()}

    def register_and_gate(self, product: str, fitted: Fitted | str | None) -> Iterator:
        if not isinstance(fitted, Fitted):
            reason = fitted or f"no rows in {self.table} version {self.table_version}"
            self.log.error(f"{product}: not trained: {reason}")
            raise ProductFailed(f"not trained: {reason}")
        trained, name = fitted.trained, self.name(product)
        roc = roc_png(trained.validation["label"].to_numpy(), trained.validation_scores,
                      f"{product}: validation {trained.validation_snapshot}")
        importance_plot = importance_png(fitted.importance, f"{product}: permutation importance")
        tags = {"dagster_run_id": self.lineage[0], "dagster_asset": MODEL_KEY.to_user_string(),
                "code_version": code_version(), "training_table": self.table,
                "training_table_version": str(self.table_version),
                "training_partitions": ",".join(self.snapshots[product])}

        def register() -> Registered:
            if abandoned := registry.end_abandoned_runs(self.experiment_id, self.lineage, product):
                self.log.warning(f"{product}: ended MLflow runs {', '.join(abandoned)} left RUNNING by an earlier "
                                 "attempt as FAILED; their versions, if any, are never gated or published")
            run_id, version = log_and_register(
                trained, experiment_id=self.experiment_id, name=name, product=product, tags=tags,
                plots={"roc_curve.png": roc, "feature_importance.png": importance_plot},
                importance=fitted.importance, example=fitted.example)
            return Registered(name, version, run_id)

        attempts = self.attempts("training and registering the model", product)
        registered = attempts.run(register)
        self.log.info(f"{product}: registered {name} version {registered.version} (MLflow run {registered.run_id}), "
                      f"validation ROC AUC {trained.metrics['roc_auc']:.4f}")
        yield AssetMaterialization(MODEL_KEY, partition=product, metadata={
            "model_name": MetadataValue.text(name), "model_version": MetadataValue.int(registered.version),
            "mlflow_run_id": MetadataValue.text(registered.run_id), **_metric_metadata(trained.metrics),
            "training_table": MetadataValue.text(self.table),
            "training_table_version": MetadataValue.int(self.table_version),
            "training_snapshots": MetadataValue.text(", ".join(trained.train_snapshots)),
            "validation_snapshot": MetadataValue.text(trained.validation_snapshot),
            "roc_curve": MetadataValue.md(inline_markdown(roc, "ROC curve")),
            "feature_importance": MetadataValue.md(inline_markdown(importance_plot, "feature importance")),
            **attempts.metadata(),
        })
        # one scoring of the candidate (the executors') serves the scores schema and the gate
        scores = self.io.spark.get_session().createDataFrame(fitted.scores(), schema=spark_schema(self.scores_schema))
        scores_result = schema_check(self.log, self.io, MODEL_KEY, self.scores_schema, scores, self.settings, product)
        yield _evaluation(scores_result, product)
        gate = self.attempts("gating the registered version", product).run(
            lambda: self.gate(product, fitted, registered, scores_result))
        yield _evaluation(gate, product)
        if not (gate.passed and scores_result.passed):
            raise ProductFailed(f"{name} version {registered.version} failed its "
                                + ("validation gate" if not gate.passed else scores_result.check_name))

    def gate(self, product: str, fitted: Fitted, registered: Registered,
             scores: AssetCheckResult) -> AssetCheckResult:
        champion_version = self.champions.get(product)
        decision = decide(self.settings.models.gate, fitted.trained.metrics, fitted.champion_metrics,
                          champion_version, fitted.importance)
        # the scores' schema is part of the verdict: the alias must not go to a version whose scores fail it
        if not scores.passed:
            decision = replace(decision, failures=decision.failures + [
                f"scores: {line.strip()}" for line in (scores.description or "").splitlines()[1:]])
        message = decision.describe(registered.name, registered.version)
        client, version = self.mlflow.client(), str(registered.version)
        client.set_model_version_tag(registered.name, version, "gate_metrics", json.dumps(
            {"candidate": decision.candidate, "champion": decision.champion}))
        client.set_model_version_tag(registered.name, version, GATE_TAG, "passed" if decision.passed else "failed")
        metadata = {"model_version": MetadataValue.int(registered.version), **_metric_metadata(decision.candidate),
                    "top_features": MetadataValue.json(decision.top_features)}
        if decision.champion is not None:
            metadata["champion_version"] = MetadataValue.int(champion_version)
            metadata["champion_roc_auc"] = MetadataValue.float(round(decision.champion["roc_auc"], 6))
        target = dict(asset_key=MODEL_KEY, check_name=GATE, metadata=metadata, description=message)
        if not decision.passed:
            self.log.error(message)
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, **target)
        client.set_registered_model_alias(registered.name, CHALLENGER, version)
        self.log.info(f"{message}; alias {CHALLENGER} -> version {version}")
        return AssetCheckResult(passed=True, **target)

    def publish(self, product: str) -> Iterator:
        name = self.name(product)
        attempts = self.attempts("publishing the gated version", product)
        version, published = attempts.run(
            lambda: publish_version(self.mlflow, self.nexus, self.lineage, product, name))
        self.log.info(f"{name} version {version}: published to Nexus, model sha256 {published['model_sha256']}")
        yield AssetMaterialization(BINARY_KEY, partition=product, metadata={
            "model_name": MetadataValue.text(name), "model_version": MetadataValue.int(version),
            **{key: MetadataValue.text(value) for key, value in published.items()}, **attempts.metadata()})
        row = published_row(self.nexus, name, version)  # what Nexus now serves, as the schema judges it
        frame = self.io.spark.get_session().createDataFrame(row, schema=spark_schema(self.binary_schema))
        result = schema_check(self.log, self.io, BINARY_KEY, self.binary_schema, frame)
        yield _evaluation(result, product)
        if not result.passed:
            raise ProductFailed(f"{name} version {version} failed {result.check_name}")

