"""Training the model family on the executors: one `applyInPandas` group per product, so no product's rows reach
the driver. Each group fits its product's model, validates it (and the champion, if there is one) on the latest
snapshot and returns one small row: the fitted model as skops bytes, metrics, importance, reference profile, an
anonymous input example and the validation scores the gate and the scores schema share.

A cluster's Python workers cannot import the code bundle the step launcher ships to the driver only, so the
modules the group function runs are pickled by value (`SHIPPED_BY_VALUE`): the function carries their code, and
the worker imports nothing of `aiml_assets`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from io import StringIO

import numpy as np
import pandas as pd
from pyspark import cloudpickle
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from aiml_assets.models import diagnostics, reference_profile, training
from aiml_assets.models.diagnostics import feature_importance
from aiml_assets.resources.safe_artifact import TRUSTED_SKOPS_TYPES
from aiml_assets.models.training import TrainedModel, anonymous_example, evaluate, prepare, train

# The modules whose functions the group function calls: each calls nothing of aiml_assets beyond the others. The
# group function names their functions, never a module (a module pickled by value would carry all its imports).
SHIPPED_BY_VALUE = (training, reference_profile, diagnostics)

FITTED = T.StructType([
    T.StructField("product_code", T.StringType(), False),
    T.StructField("error", T.StringType(), True),  # why this product has no model; the other columns are null
    T.StructField("model", T.BinaryType(), True),
    T.StructField("metrics", T.StringType(), True),
    T.StructField("champion_metrics", T.StringType(), True),
    T.StructField("importance", T.StringType(), True),
    T.StructField("reference_profile", T.StringType(), True),
    T.StructField("example", T.StringType(), True),
    T.StructField("train_snapshots", T.ArrayType(T.StringType()), True),
    T.StructField("validation_snapshot", T.StringType(), True),
    T.StructField("train_rows", T.LongType(), True),
    T.StructField("validation_customers", T.ArrayType(T.StringType()), True),
    T.StructField("validation_labels", T.ArrayType(T.IntegerType()), True),
    T.StructField("validation_scores", T.ArrayType(T.DoubleType()), True),
])


def fit_groups(champions: dict[str, object]):
    """The applyInPandas function: one product's rows in, one `FITTED` row out. `champions`: product -> the
    champion's loaded model, scored on the same validation rows as the candidate."""
    columns = FITTED.fieldNames()

    def fit(rows: pd.DataFrame) -> pd.DataFrame:
        import skops.io
        from threadpoolctl import threadpool_limits

        product = str(rows["product_code"].iloc[0])
        rows = rows.sort_values(["snapshot_date", "customer_id"], ignore_index=True)  # the same fit on any cluster
        try:
            with threadpool_limits(1):  # one OpenMP thread per Python worker: the cores are shared by the tasks
                trained = train(rows)
                importance = feature_importance(trained.model, trained.validation)
                champion = champions.get(product)
                champion_metrics = None if champion is None else evaluate(champion, trained.validation)
        except Exception as exc:  # this product's failure, reported on its own partition; the others go on
            failed = dict.fromkeys(columns) | {"product_code": product, "error": f"{type(exc).__name__}: {exc}"}
            return pd.DataFrame([failed], columns=columns)
        validation = trained.validation
        example = anonymous_example(prepare(validation))
        return pd.DataFrame([{
            "product_code": product, "error": None, "model": skops.io.dumps(trained.model),
            "metrics": json.dumps(trained.metrics), "champion_metrics": json.dumps(champion_metrics),
            "importance": json.dumps(importance), "reference_profile": json.dumps(trained.reference_profile),
            "example": example.to_json(orient="records"), "train_snapshots": trained.train_snapshots,
            "validation_snapshot": trained.validation_snapshot, "train_rows": trained.train_rows,
            "validation_customers": validation["customer_id"].astype(str).tolist(),
            "validation_labels": validation["label"].astype(int).tolist(),
            "validation_scores": trained.validation_scores.astype("float64").tolist(),
        }])

    return fit


@dataclass(frozen=True)
class Fitted:
    """One product's trained candidate, back on the driver: small (a model and one snapshot's scores)."""

    product: str
    trained: TrainedModel
    champion_metrics: dict[str, float] | None
    importance: dict[str, float]
    example: pd.DataFrame

    def scores(self) -> pd.DataFrame:
        """The candidate's scores on its validation snapshot, as the ModelScores schema checks them."""
        return self.trained.validation[["customer_id", "snapshot_date", "product_code"]].assign(
            score=self.trained.validation_scores)


def _fitted(row) -> Fitted:
    import skops.io

    model = skops.io.loads(row["model"], trusted=list(TRUSTED_SKOPS_TYPES))  # bytes our own executors made
    validation = pd.DataFrame({"customer_id": list(row["validation_customers"]),
                               "snapshot_date": date.fromisoformat(row["validation_snapshot"]),
                               "product_code": row["product_code"], "label": list(row["validation_labels"])})
    scores = np.asarray(row["validation_scores"], dtype="float64")
    trained = TrainedModel(
        model=model, metrics=json.loads(row["metrics"]), train_snapshots=list(row["train_snapshots"]),
        validation_snapshot=row["validation_snapshot"], train_rows=int(row["train_rows"]), validation=validation,
        validation_scores=scores, reference_profile=json.loads(row["reference_profile"]))
    example = prepare(pd.read_json(StringIO(row["example"]), orient="records", dtype=False))
    return Fitted(row["product_code"], trained, json.loads(row["champion_metrics"]), json.loads(row["importance"]),
                  example[list(model.feature_names_in_)])


def train_family(rows: DataFrame, champions: dict[str, object]) -> dict[str, Fitted | str]:
    """Per product of `rows` (its training snapshots, every column of the training set): its `Fitted` candidate,
    or why it has none. Only the small `FITTED` rows are collected."""
    for module in SHIPPED_BY_VALUE:
        cloudpickle.register_pickle_by_value(module)
    fitted = rows.groupBy("product_code").applyInPandas(fit_groups(champions), schema=FITTED)
    return {row["product_code"]: row["error"] if row["error"] else _fitted(row.asDict()) for row in fitted.collect()}


def chosen_snapshots(rows: DataFrame, count: int) -> dict[str, list[str]]:
    """Each product's latest `count` snapshots present in `rows` (one small aggregation)."""
    present = rows.select("product_code", F.col("snapshot_date").cast("string").alias("snapshot")).distinct()
    by_product: dict[str, list[str]] = {}
    for row in present.collect():
        by_product.setdefault(row["product_code"], []).append(row["snapshot"])
    return {product: sorted(snapshots)[-count:] for product, snapshots in by_product.items()}


def of_snapshots(rows: DataFrame, snapshots: dict[str, list[str]]) -> DataFrame:
    """The rows of each product's chosen snapshots (a broadcast join on the small product x snapshot list)."""
    spark = rows.sparkSession
    pairs = spark.createDataFrame([(p, s) for p, chosen in snapshots.items() for s in chosen],
                                  "product_code string, snapshot string")
    return rows.join(F.broadcast(pairs.withColumn("snapshot_date", F.col("snapshot").cast("date")).drop("snapshot")),
                     ["product_code", "snapshot_date"])
