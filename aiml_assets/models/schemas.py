"""pandera schemas of the model assets: what a model version scores, and what its published binary declares."""

from __future__ import annotations

import pandera.pyspark as pa
import pyspark.sql.types as T


def _col(dtype, description: str, *checks: pa.Check) -> pa.Column:
    return pa.Column(dtype, checks=list(checks), nullable=False, description=description)


def model_scores_schema(products: list[str]) -> pa.DataFrameSchema:
    """The registered version's scores on its validation snapshot: a probability for every eligible customer."""
    return pa.DataFrameSchema({
        "customer_id": _col(T.StringType(), "Customer key", pa.Check.str_matches(r"C[0-9]{8}")),
        "snapshot_date": _col(T.DateType(), "Validation snapshot"),
        "product_code": _col(T.StringType(), "Product the model scores", pa.Check.isin(products)),
        "score": _col(T.DoubleType(), "Propensity to take up the product", pa.Check.in_range(0.0, 1.0)),
    }, unique=["customer_id", "snapshot_date", "product_code"], name="ModelScores")


def model_binary_schema() -> pa.DataFrameSchema:
    """The metadata published to Nexus beside the binary, one row per published version."""
    return pa.DataFrameSchema({
        "name": _col(T.StringType(), "Registered model name",
                     pa.Check.str_matches(r"[a-z][a-z0-9_]*\.models\.nba_propensity_[a-z0-9_]+$")),
        "version": _col(T.LongType(), "Registered version", pa.Check.ge(1)),
        "model_sha256": _col(T.StringType(), "sha256 of model.zip", pa.Check.str_matches(r"[0-9a-f]{64}$")),
        "metadata_sha256": _col(T.StringType(), "sha256 of metadata.json", pa.Check.str_matches(r"[0-9a-f]{64}$")),
        "roc_auc": _col(T.DoubleType(), "Validation ROC AUC the gate accepted", pa.Check.in_range(0.5, 1.0)),
        "git_commit": _col(T.StringType(), "Commit the model was trained from", pa.Check.str_matches(r"[0-9a-f]{7,40}|unknown$")),
    }, unique=["name", "version"], name="ModelBinary")
