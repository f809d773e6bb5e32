"""Drift of the scoring features from the deployed model's training data: PSI per feature against the model's
reference profile (bins from training; see models/reference_profile.py), counted on Spark in one small job."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from aiml_assets.models.reference_profile import expected_shares, psi


def _bin(feature: str, reference: dict) -> Column:
    """The bin name of each row's value, as `expected_shares` names bins (a category the reference never saw is
    its own bin)."""
    col = F.col(feature)
    if reference["kind"] == "categorical":
        return F.coalesce(col.cast("string"), F.lit("<null>"))
    # the number of edges at or below the value: numpy's searchsorted(side="right"), as the profile was counted
    bucket = reduce(lambda acc, edge: acc + (col.cast("double") >= F.lit(edge)).cast("int"), reference["edges"],
                    F.lit(0))
    missing = col.isNull() | F.isnan(col.cast("double"))  # the profile counted pandas' NaN as missing too
    return F.when(missing, F.lit("null")).otherwise(F.concat(F.lit("b"), bucket.cast("string")))


def feature_psi(df: DataFrame, profile: dict) -> dict[str, float]:
    """PSI of every profiled feature of `df` against the profile: rows become (feature, bin) pairs, counted in one
    group-by."""
    features = profile["features"]
    missing = sorted(set(features) - set(df.columns))
    if missing:
        raise ValueError(f"scoring features lack the model's inputs {missing}")
    pairs = F.explode(F.array(*[F.struct(F.lit(name).alias("feature"), _bin(name, reference).alias("bin"))
                                for name, reference in features.items()]))
    counts: dict[str, dict[str, int]] = {name: {} for name in features}
    for row in df.select(pairs.alias("pair")).groupBy("pair.feature", "pair.bin").count().collect():
        counts[row["feature"]][row["bin"]] = row["count"]
    return {name: psi(expected_shares(reference), counts[name]) for name, reference in features.items()}
