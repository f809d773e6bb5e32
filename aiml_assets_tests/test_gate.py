"""The validation gate's leak alarm as a pure rule: a ceiling on ROC AUC and on its gain over the champion."""

import pytest

from aiml_assets.models.gate import decide
from aiml_assets.settings import GateSettings

GATE = GateSettings(min_roc_auc=0.6, max_roc_auc=0.97, max_gain_over_champion=0.08, min_pr_auc_lift=1.5,
                    calibration_ratio=(0.5, 2.0))
IMPORTANCE = {"tenure_days": 0.01, "leaked": 0.45, "spend_30d": 0.03, "region_London": 0.0, "txn_count_30d": 0.02,
              "segment_premier": 0.005, "age_band_18-24": -0.001}
LEAK = "too good to be true, look for a leaked feature; top features by importance: " \
       "leaked 0.45, spend_30d 0.03, txn_count_30d 0.02, tenure_days 0.01, segment_premier 0.005"


def metrics(roc_auc: float) -> dict[str, float]:
    """Validation metrics that pass every rule but the ones on ROC AUC."""
    return {"roc_auc": roc_auc, "pr_auc": 0.1, "validation_positive_rate": 0.01, "calibration_ratio": 1.0}


def test_a_roc_auc_above_the_ceiling_blocks_and_names_the_top_features():
    decision = decide(GATE, metrics(0.99), importance=IMPORTANCE)
    assert decision.failures == ["roc_auc 0.9900 > max_roc_auc 0.97", LEAK]
    assert list(decision.top_features) == ["leaked", "spend_30d", "txn_count_30d", "tenure_days", "segment_premier"]


def test_a_gain_over_the_champion_above_the_threshold_blocks():
    decision = decide(GATE, metrics(0.93), metrics(0.84), champion_version=3, importance=IMPORTANCE)
    assert decision.failures == [
        "roc_auc 0.9300 is 0.0900 above champion version 3's 0.8400 > max_gain_over_champion 0.08", LEAK]


@pytest.mark.parametrize("candidate, champion", [
    (0.93, None),  # no champion: only the ceiling applies
    (0.97, None),  # exactly at the ceiling
    (0.90, 0.82),  # exactly at the gain threshold (0.08000000000000007 in floats)
    (0.97, 0.89),  # at both
])
def test_up_to_the_thresholds_passes_with_the_top_features_reported(candidate, champion):
    decision = decide(GATE, metrics(candidate), champion and metrics(champion), champion and 2, IMPORTANCE)
    assert decision.passed, decision.failures
    assert next(iter(decision.top_features)) == "leaked"


def test_an_alarm_without_recorded_importances_still_blocks():
    assert decide(GATE, metrics(1.0)).failures[-1].endswith("top features by importance: not recorded")
