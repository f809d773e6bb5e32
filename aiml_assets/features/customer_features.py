"""Customer features as of a snapshot date, point-in-time correct.

Only events strictly before the snapshot are used; only customers who had joined before it appear; a holding
counts if it was opened before the snapshot and not closed before it. Nothing here reads a table itself: the
caller hands in the source DataFrames, so the lab and prod scoring compute features with the same code.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from aiml_assets.model_inputs import WINDOWS
from aiml_assets.sources.erased import Sources
from aiml_assets.sources.schemas import CATEGORIES

AGE_BANDS = ((18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"), (55, "55-64"), (65, "65-74"), (75, "75+"))


def _days_before(snapshot: Column, column: str) -> Column:
    return F.datediff(snapshot, F.to_date(F.col(column)))


def _age_band(age: Column) -> Column:
    band = F.lit(None).cast("string")
    for lower, label in AGE_BANDS:
        band = F.when(age >= lower, F.lit(label)).otherwise(band)
    return band


def _spend_features(transactions: DataFrame, snapshot: Column) -> DataFrame:
    age = _days_before(snapshot, "transaction_ts")
    in_year = transactions.filter(F.col("transaction_ts") < snapshot.cast("timestamp")).filter(age <= 365)
    aggregates = []
    for days in WINDOWS:
        inside = age <= days
        aggregates += [
            F.count(F.when(inside, 1)).alias(f"txn_count_{days}d"),
            F.coalesce(F.sum(F.when(inside, F.col("amount"))), F.lit(0.0)).alias(f"spend_{days}d"),
        ]
    aggregates += [F.sum(F.when(F.col("category") == c, F.col("amount"))).alias(f"_spend_{c}") for c in CATEGORIES]
    aggregates.append(F.min(age).alias("days_since_last_txn"))
    spend = in_year.groupBy("customer_id").agg(*aggregates)
    for days in WINDOWS:
        spend = spend.withColumn(
            f"avg_ticket_{days}d",
            F.when(F.col(f"txn_count_{days}d") > 0, F.col(f"spend_{days}d") / F.col(f"txn_count_{days}d"))
            .otherwise(F.lit(0.0)),
        )
    for c in CATEGORIES:
        share = F.coalesce(F.col(f"_spend_{c}"), F.lit(0.0)) / F.col("spend_365d")
        spend = spend.withColumn(f"share_{c}_365d", F.when(F.col("spend_365d") > 0, share).otherwise(0.0))
    return spend.drop(*[f"_spend_{c}" for c in CATEGORIES])


def _holding_features(holdings: DataFrame, snapshot: Column, products: list[str]) -> DataFrame:
    open_at = holdings.filter(
        (F.col("opened_date") < snapshot) & (F.col("closed_date").isNull() | (F.col("closed_date") >= snapshot))
    )
    flags = [F.max(F.when(F.col("product_code") == p, 1).otherwise(0)).alias(f"holds_{p}") for p in products]
    return open_at.groupBy("customer_id").agg(*flags)


def _contact_features(responses: DataFrame, snapshot: Column) -> DataFrame:
    contacted = responses.filter(F.col("contact_date") < snapshot)
    responded_before = F.col("responded") & (F.col("response_date") < snapshot)
    return contacted.groupBy("customer_id").agg(
        F.min(_days_before(snapshot, "contact_date")).alias("days_since_last_contact"),
        F.count(F.when(_days_before(snapshot, "contact_date") <= 365, 1)).alias("contacts_365d"),
        F.count(F.when(responded_before & (_days_before(snapshot, "response_date") <= 365), 1)).alias("responses_365d"),
    )


def customer_features(sources: Sources, snapshot: date, products: list[str]) -> DataFrame:
    """One row per customer who joined before `snapshot`, from events strictly before it."""
    at = F.lit(snapshot).cast("date")
    customers = sources.customers.filter(F.col("joined_date") < at).select(
        "customer_id",
        at.alias("snapshot_date"),
        F.datediff(at, "joined_date").alias("tenure_days"),
        _age_band(F.floor(F.months_between(at, "birth_date") / 12)).alias("age_band"),
        "region",
        "segment",
        "income_band",
    )
    counts = [f"txn_count_{d}d" for d in WINDOWS] + [f"holds_{p}" for p in products] + ["contacts_365d", "responses_365d"]
    amounts = [f"{m}_{d}d" for m in ("spend", "avg_ticket") for d in WINDOWS] + [f"share_{c}_365d" for c in CATEGORIES]
    return (
        customers.join(_spend_features(sources.transactions, at), "customer_id", "left")
        .join(_holding_features(sources.holdings, at, products), "customer_id", "left")
        .join(_contact_features(sources.responses, at), "customer_id", "left")
        .fillna(0, subset=counts)
        .fillna(0.0, subset=amounts)
        .withColumn("days_since_last_txn", F.col("days_since_last_txn").cast("int"))
        .withColumn("days_since_last_contact", F.col("days_since_last_contact").cast("int"))
        .select(*FEATURE_COLUMNS_HEAD, *counts, *amounts, "days_since_last_txn", "days_since_last_contact")
    )


FEATURE_COLUMNS_HEAD = ("customer_id", "snapshot_date", "tenure_days", "age_band", "region", "segment", "income_band")


def offers(features: DataFrame, products: list[str]) -> DataFrame:
    """One row per customer and product the customer does not hold at the snapshot: what may be offered, so what
    the models learn from (lab) and score (prod)."""
    product = F.col("product_code")
    held = F.coalesce(*[F.when(product == p, F.col(f"holds_{p}")) for p in products])
    return features.withColumn("product_code", F.explode(F.array(*[F.lit(p) for p in products]))).filter(held == 0)
