"""Batch scoring on Spark: every customer and product they may be offered, by the deployed models.

Models run inside `mapInPandas`, so rows never gather on the driver; the loaded pipelines travel to the executors
with the function. A canary share of customers, chosen by a hash of the customer id (the same customers on every
run and every day), is scored by the product's challenger where one is deployed.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from aiml_assets.features.customer_features import offers
from aiml_assets.inference.deployment import CHALLENGER, CHAMPION, Deployment
from aiml_assets.inference.schemas import CANARY_ROLE, CHAMPION_ROLE
from aiml_assets.model_inputs import CATEGORICAL

CANARY_BUCKETS = 10_000
CANARY_SALT = "aiml-canary-v1"  # changing it would pick other customers: never change it under a running canary

_SCORED = T.StructType([
    T.StructField("customer_id", T.StringType(), False),
    T.StructField("snapshot_date", T.DateType(), False),
    T.StructField("product_code", T.StringType(), False),
    T.StructField("score", T.DoubleType(), False),
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.LongType(), False),
    T.StructField("model_role", T.StringType(), False),
])


def in_canary(customer_id: Column, share: float) -> Column:
    """True for a stable, hash-selected `share` of customers (xxhash64 is seeded and the same on every cluster)."""
    bucket = F.pmod(F.xxhash64(F.lit(CANARY_SALT), customer_id), F.lit(CANARY_BUCKETS))
    return bucket < F.lit(int(round(share * CANARY_BUCKETS)))


def _score_batches(models: dict[tuple[str, str], tuple[object, str, int]], categorical: list[str]):
    """The mapInPandas function. Self-contained on purpose: it refers to nothing of `aiml_assets`, because Python
    workers on a Databricks cluster cannot import the code bundle the step launcher ships to the driver only. So it
    prepares the input as `training.prepare` does (numerics as float) with pandas alone."""

    def apply(batches):
        import pandas
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # one OpenMP thread per Python worker: the cores are shared by the tasks
            for batch in batches:
                for (product, role), rows in batch.groupby(["product_code", "_deployed_role"], sort=False):
                    model, name, version = models[(product, role)]
                    x = rows[list(model.feature_names_in_)].copy()
                    for column in x.columns:
                        if column not in categorical:
                            x[column] = pandas.to_numeric(x[column], errors="coerce").astype("float64")
                    yield pandas.DataFrame({
                        "customer_id": rows["customer_id"].to_numpy(), "snapshot_date": rows["snapshot_date"].to_numpy(),
                        "product_code": product, "score": model.predict_proba(x)[:, 1].astype("float64"),
                        "model_name": name, "model_version": version, "model_role": rows["model_role"].to_numpy(),
                    })
    return apply


def score_customers(features: DataFrame, models: dict[tuple[str, str], tuple[object, Deployment]],
                    canary_share: float, scored_at: datetime) -> DataFrame:
    """One row per customer and deployed product they may be offered: score, rank among the customer's products
    (1 = best), model name, version and role (champion or canary), scored_at. `models`: (product,
    champion|challenger) -> (loaded model, its deployment); the products with a champion are the ones scored."""
    products = sorted({product for product, role in models if role == CHAMPION})
    with_challenger = sorted({product for product, role in models if role == CHALLENGER})
    canary = in_canary(F.col("customer_id"), canary_share) & F.col("product_code").isin(with_challenger)
    rows = (offers(features, products)
            .withColumn("model_role", F.when(canary, F.lit(CANARY_ROLE)).otherwise(F.lit(CHAMPION_ROLE)))
            .withColumn("_deployed_role", F.when(canary, F.lit(CHALLENGER)).otherwise(F.lit(CHAMPION))))
    plain = {key: (model, d.model_name, int(d.model_version)) for key, (model, d) in models.items()}
    scored = rows.mapInPandas(_score_batches(plain, list(CATEGORICAL)), schema=_SCORED)
    by_customer = Window.partitionBy("customer_id", "snapshot_date").orderBy(F.desc("score"), "product_code")
    return (scored.withColumn("rank", F.row_number().over(by_customer).cast("int"))
            .withColumn("scored_at", F.lit(scored_at).cast("timestamp"))
            .select("customer_id", "snapshot_date", "product_code", "score", "rank", "model_name", "model_version",
                    "model_role", "scored_at"))
