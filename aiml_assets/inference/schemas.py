"""pandera schemas of the scoring assets and of the CDP (columns depend on the env's products, so schema objects)."""

from __future__ import annotations

import pandera.pyspark as pa
import pyspark.sql.types as T

CHAMPION_ROLE, CANARY_ROLE = "champion", "canary"
MODEL_NAME = r"[a-z][a-z0-9_]*\.models\.nba_propensity_[a-z0-9_]+$"


def _col(dtype, description: str, *checks: pa.Check) -> pa.Column:
    return pa.Column(dtype, checks=list(checks), nullable=False, description=description)


def _customer() -> pa.Column:
    return _col(T.StringType(), "Customer key", pa.Check.str_matches(r"C[0-9]{8}$"))


def _product(products: list[str]) -> pa.Column:
    return _col(T.StringType(), "Product", pa.Check.isin(products))


def _score(description: str) -> pa.Column:
    return _col(T.DoubleType(), description, pa.Check.in_range(0.0, 1.0))


def _rank(products: list[str], description: str) -> pa.Column:
    return _col(T.IntegerType(), description, pa.Check.in_range(1, len(products)))


def _version(description: str) -> pa.Column:
    return _col(T.LongType(), description, pa.Check.ge(1))


def deployed_model_schema(products: list[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema({
        "snapshot_date": _col(T.DateType(), "Scoring date the deployment serves"),
        "product_code": _product(products),
        "model_role": _col(T.StringType(), "champion, or the challenger a canary share goes to",
                           pa.Check.isin(["champion", "challenger"])),
        "model_name": _col(T.StringType(), "Registered model name", pa.Check.str_matches(MODEL_NAME)),
        "model_version": _version("Registered version, as in the release manifest"),
        "model_sha256": _col(T.StringType(), "sha256 of model.zip, as in the release manifest and verified on pull",
                             pa.Check.str_matches(r"[0-9a-f]{64}$")),
        "metadata_sha256": _col(T.StringType(), "sha256 of metadata.json (the drift baseline), as in the release "
                                "manifest", pa.Check.str_matches(r"[0-9a-f]{64}$")),
        "change_request": _col(T.StringType(), "Change request that promoted the version",
                               pa.Check.str_matches(r"CHG[0-9]{7}$")),
    }, unique=["snapshot_date", "product_code", "model_role"], name="DeployedModel")


def _score_columns(products: list[str]) -> dict[str, pa.Column]:
    return {
        "customer_id": _customer(),
        "snapshot_date": _col(T.DateType(), "Scoring date: features use only events strictly before it"),
        "product_code": _product(products),
        "score": _score("Propensity to take up the product within the label window"),
        "rank": _rank(products, "Rank of this product among the customer's scored products (1 = best)"),
        "model_name": _col(T.StringType(), "Registered model name", pa.Check.str_matches(MODEL_NAME)),
        "model_version": _version("Registered version that scored the row"),
        "model_role": _col(T.StringType(), "champion, or canary (the challenger scores a hash-selected share)",
                           pa.Check.isin([CHAMPION_ROLE, CANARY_ROLE])),
        "scored_at": _col(T.TimestampType(), "When the scoring run computed the row"),
    }


def propensity_scores_schema(products: list[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(_score_columns(products), unique=["customer_id", "product_code", "snapshot_date"],
                              name="PropensityScores")


def nba_propensity_schema(products: list[str]) -> pa.DataFrameSchema:
    """The CDP's columns: the scores as published (one row per customer and eligible product)."""
    return pa.DataFrameSchema(_score_columns(products), unique=["customer_id", "product_code", "snapshot_date"],
                              name="NbaPropensity")


def parallel_run_schema(products: list[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema({
        "customer_id": _customer(),
        "snapshot_date": _col(T.DateType(), "Scoring date"),
        "product_code": _product(products),
        "champion_score": _score("Champion's score"),
        "challenger_score": _score("Challenger's score"),
        "champion_rank": _rank(products, "Rank of the product by the champions' scores"),
        "challenger_rank": _rank(products, "Rank of the product by the challengers' scores"),
        "champion_version": _version("Champion version"),
        "challenger_version": _version("Challenger version"),
    }, unique=["customer_id", "product_code", "snapshot_date"], name="ParallelRun")
