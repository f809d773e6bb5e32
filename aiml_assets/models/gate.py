"""The validation gate's rule: absolute thresholds from the env file, not worse than the champion, and not too good
to be true (a leak alarm: a ceiling on ROC AUC and on its gain over the champion)."""

from __future__ import annotations

from dataclasses import dataclass

from aiml_assets.settings import GateSettings

SHOWN = ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_ratio", "validation_rows")
TOP_FEATURES = 5  # named by the leak alarm: where a data scientist looks first


@dataclass(frozen=True)
class GateDecision:
    failures: list[str]
    candidate: dict[str, float]
    champion: dict[str, float] | None  # the champion's metrics on the same validation rows, if there is one
    champion_version: int | None
    top_features: dict[str, float]  # the candidate's most important features (aggregate scores, no rows)

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self, name: str, version: int) -> str:
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        lines = [f"{name} version {version} {verdict}", f"  candidate: {_metrics(self.candidate)}"]
        if self.champion is not None:
            lines.append(f"  champion (version {self.champion_version}): {_metrics(self.champion)}")
        return "\n".join(lines)


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN if k in metrics)


def top_features(importance: dict[str, float]) -> dict[str, float]:
    return dict(sorted(importance.items(), key=lambda kv: -kv[1])[:TOP_FEATURES])


def decide(gate: GateSettings, candidate: dict[str, float], champion: dict[str, float] | None = None,
           champion_version: int | None = None, importance: dict[str, float] | None = None) -> GateDecision:
    failures = []
    if candidate["roc_auc"] < gate.min_roc_auc:
        failures.append(f"roc_auc {candidate['roc_auc']:.4f} < min_roc_auc {gate.min_roc_auc}")
    lift = candidate["pr_auc"] / max(candidate["validation_positive_rate"], 1e-12)
    if lift < gate.min_pr_auc_lift:
        failures.append(f"pr_auc lift {lift:.2f} < min_pr_auc_lift {gate.min_pr_auc_lift}")
    low, high = gate.calibration_ratio
    if not low <= candidate["calibration_ratio"] <= high:
        failures.append(f"calibration_ratio {candidate['calibration_ratio']:.3f} outside [{low}, {high}]")
    if champion is not None and candidate["roc_auc"] < champion["roc_auc"] - gate.champion_tolerance:
        failures.append(f"roc_auc {candidate['roc_auc']:.4f} worse than champion version {champion_version}'s "
                        f"{champion['roc_auc']:.4f} (tolerance {gate.champion_tolerance})")
    top = top_features(importance or {})
    leaks = _leak_alarms(gate, candidate, champion, champion_version)
    if leaks:
        named = ", ".join(f"{name} {value:.4g}" for name, value in top.items()) or "not recorded"
        failures += leaks + [f"too good to be true, look for a leaked feature; top features by importance: {named}"]
    return GateDecision(failures, candidate, champion, champion_version, top)


def _leak_alarms(gate: GateSettings, candidate: dict[str, float], champion: dict[str, float] | None,
                 champion_version: int | None) -> list[str]:
    alarms = []
    if candidate["roc_auc"] > gate.max_roc_auc:
        alarms.append(f"roc_auc {candidate['roc_auc']:.4f} > max_roc_auc {gate.max_roc_auc}")
    if champion is not None:
        # rounded: ROC AUC differences below 1e-6 mean nothing, and 0.90 - 0.82 is 0.08000000000000007 in floats
        gain = round(candidate["roc_auc"] - champion["roc_auc"], 6)
        if gain > gate.max_gain_over_champion:
            alarms.append(f"roc_auc {candidate['roc_auc']:.4f} is {gain:.4f} above champion version "
                          f"{champion_version}'s {champion['roc_auc']:.4f} > max_gain_over_champion "
                          f"{gate.max_gain_over_champion}")
    return alarms
