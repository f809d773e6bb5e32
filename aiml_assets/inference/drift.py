"""Drift of the scoring features from the deployed model's training data: PSI per feature against the model's
reference profile (bins from training; see models/reference_profile.py), counted on Spark in one small job."""

from __future__ import annotations

from functools import reduce

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from aiml_assets.inference.deployment import CHAMPION, Deployment, reference_profile
from aiml_assets.models.reference_profile import expected_shares, psi
from aiml_assets.resources.nexus import NexusRepository
from aiml_assets.settings import DriftSettings


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


def drift_result(log, asset: AssetKey, check: str, features: DataFrame, deployed: list[Deployment],
                 nexus: NexusRepository, thresholds: DriftSettings) -> AssetCheckResult:
    """The feature drift check on `features`: per deployed model, champions and challengers, the worst PSI among the
    rows it scores against its reference profile in Nexus. Passes up to `warn_psi`, warns up to `fail_psi`, fails
    (an error: blocking) above."""
    worst: dict[str, tuple[str, float]] = {}
    for deployment in deployed:
        eligible = features.filter(F.col(f"holds_{deployment.product_code}") == 0)  # the rows the model scores
        values = feature_psi(eligible, reference_profile(nexus, deployment))
        label = (deployment.product_code if deployment.model_role == CHAMPION
                 else f"{deployment.product_code} ({deployment.model_role})")
        worst[label] = max(values.items(), key=lambda item: item[1])
    summary = {product: {"feature": feature, "psi": round(value, 4)} for product, (feature, value) in worst.items()}
    highest = max(value for _, value in worst.values())
    metadata = {"max_psi": MetadataValue.float(round(highest, 6)),
                "worst_feature_per_product": MetadataValue.json(summary)}
    target = dict(asset_key=asset, check_name=check, metadata=metadata)
    if highest <= thresholds.warn_psi:
        return AssetCheckResult(passed=True, **target)
    severity = AssetCheckSeverity.ERROR if highest > thresholds.fail_psi else AssetCheckSeverity.WARN
    drifted = ", ".join(f"{p}: {f} PSI {v:.3f}" for p, (f, v) in worst.items() if v > thresholds.warn_psi)
    message = (f"{asset.to_user_string()}: feature drift against the deployed models' training data ({drifted}); "
               f"warn above {thresholds.warn_psi}, fail above {thresholds.fail_psi}")
    log.warning(message)
    return AssetCheckResult(passed=False, severity=severity, description=message, **target)
