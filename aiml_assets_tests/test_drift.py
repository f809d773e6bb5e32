"""Feature drift: a model's reference profile, and PSI of Spark data against it (bins counted as the profile was)."""

import numpy as np
import pandas as pd
import pytest

from aiml_assets.inference.drift import feature_psi
from aiml_assets.models.reference_profile import profile, psi


def _frame(rng, n: int, shift: float = 0.0, share_north: float = 0.3) -> pd.DataFrame:
    spend = rng.gamma(2.0, 100.0, n) * (1 + shift)
    days = rng.integers(1, 365, n).astype("float64")
    days[rng.random(n) < 0.2] = np.nan  # customers without a transaction in the year
    region = np.where(rng.random(n) < share_north, "North", "South")
    return pd.DataFrame({"spend_365d": spend, "days_since_last_txn": days, "region": region})


def test_the_profile_holds_bins_and_shares_never_rows():
    x = _frame(np.random.default_rng(1), 5000)
    made = profile(x, categorical=["region"])
    spend = made["features"]["spend_365d"]
    assert len(spend["edges"]) == 9 and sum(spend["shares"]) + spend["null_share"] == pytest.approx(1.0)
    assert made["features"]["days_since_last_txn"]["null_share"] == pytest.approx(0.2, abs=0.02)
    assert set(made["features"]["region"]["shares"]) == {"North", "South"}


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    assert psi({"a": 0.5, "b": 0.5}, {"a": 50, "b": 50}) == pytest.approx(0.0)
    assert psi({"a": 0.5, "b": 0.5}, {"a": 90, "b": 10}) > psi({"a": 0.5, "b": 0.5}, {"a": 60, "b": 40}) > 0
    assert psi({"a": 1.0}, {"a": 90, "unseen": 10}) > 0.1  # a value the reference never saw counts


def test_spark_counts_bins_as_the_profile_did(spark):
    rng = np.random.default_rng(2)
    reference = profile(_frame(rng, 4000), categorical=["region"])
    same = feature_psi(spark.createDataFrame(_frame(rng, 4000)), reference)
    assert set(same) == {"spend_365d", "days_since_last_txn", "region"}
    assert max(same.values()) < 0.02  # a fresh sample of the same population
    drifted = feature_psi(spark.createDataFrame(_frame(rng, 4000, shift=0.8, share_north=0.7)), reference)
    assert drifted["spend_365d"] > 0.25 and drifted["region"] > 0.25
    assert drifted["days_since_last_txn"] < 0.02  # untouched


def test_a_feature_the_model_needs_but_scoring_lacks_is_an_error(spark):
    reference = profile(_frame(np.random.default_rng(3), 100), categorical=["region"])
    with pytest.raises(ValueError, match=r"lack the model's inputs \['region'\]"):
        feature_psi(spark.createDataFrame(_frame(np.random.default_rng(3), 10).drop(columns=["region"])), reference)
