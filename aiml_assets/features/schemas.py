"""pandera schemas of the lab's feature assets (columns depend on the env's products, so schema objects)."""

from __future__ import annotations

import pandera.pyspark as pa
import pyspark.sql.types as T

from aiml_assets.features.customer_features import AGE_BANDS, WINDOWS
from aiml_assets.sources.schemas import CATEGORIES, INCOME_BANDS, REGIONS, SEGMENTS


def _col(dtype, description: str, *checks: pa.Check, nullable: bool = False) -> pa.Column:
    return pa.Column(dtype, checks=list(checks), nullable=nullable, description=description)


def _count(description: str) -> pa.Column:
    return _col(T.LongType(), description, pa.Check.ge(0))


def _feature_columns(products: list[str]) -> dict[str, pa.Column]:
    columns = {
        "customer_id": _col(T.StringType(), "Customer key", pa.Check.str_matches(r"C[0-9]{8}")),
        "snapshot_date": _col(T.DateType(), "Features use only events strictly before this date"),
        "tenure_days": _col(T.IntegerType(), "Days since the customer joined", pa.Check.gt(0)),
        "age_band": _col(T.StringType(), "Age band at the snapshot", pa.Check.isin([b for _, b in AGE_BANDS])),
        "region": _col(T.StringType(), "UK region", pa.Check.isin(REGIONS)),
        "segment": _col(T.StringType(), "Customer segment", pa.Check.isin(SEGMENTS)),
        "income_band": _col(T.StringType(), "Declared income band", pa.Check.isin(INCOME_BANDS)),
    }
    for d in WINDOWS:
        columns[f"txn_count_{d}d"] = _count(f"Transactions in the {d} days before the snapshot")
    for p in products:
        columns[f"holds_{p}"] = _col(T.IntegerType(), f"1 if {p} is held at the snapshot", pa.Check.isin([0, 1]))
    columns["contacts_365d"] = _count("Campaign contacts in the 365 days before the snapshot")
    columns["responses_365d"] = _count("Campaign responses in the 365 days before the snapshot")
    # Every float column must also be finite (quality.FINITE). The source refuses infinite amounts, but a sum of
    # finite ones can still overflow to inf, and its shares become NaN (inf / inf), which customer_features' fillna
    # turns into 0.0 (Spark fills NaN as well as null): the spend column's finite rule is what catches that.
    for d in WINDOWS:
        columns[f"spend_{d}d"] = _col(T.DoubleType(), f"Spend (GBP) in the {d} days before", pa.Check.ge(0))
    for d in WINDOWS:
        columns[f"avg_ticket_{d}d"] = _col(T.DoubleType(), f"Average ticket (GBP) over {d} days", pa.Check.ge(0))
    for c in CATEGORIES:
        columns[f"share_{c}_365d"] = _col(T.DoubleType(), f"Share of 365-day spend on {c}",
                                          pa.Check.in_range(0.0, 1.0 + 1e-9))
    columns["days_since_last_txn"] = _col(T.IntegerType(), "Days since the last transaction in the year before; "
                                          "null if none", pa.Check.in_range(1, 365), nullable=True)
    columns["days_since_last_contact"] = _col(T.IntegerType(), "Days since the last campaign contact; null if never",
                                              pa.Check.gt(0), nullable=True)
    return columns


def customer_features_schema(products: list[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(_feature_columns(products), unique=["customer_id", "snapshot_date"],
                              name="CustomerFeatures")


def training_set_schema(products: list[str]) -> pa.DataFrameSchema:
    columns = _feature_columns(products)
    columns["product_code"] = _col(T.StringType(), "Product offered", pa.Check.isin(products))
    columns["label"] = _col(T.IntegerType(), "1 if the product was taken up within the label window after the "
                            "snapshot", pa.Check.isin([0, 1]))
    return pa.DataFrameSchema(columns, unique=["customer_id", "snapshot_date", "product_code"], name="TrainingSet")
