"""The validation gate's rule: absolute thresholds from the env file, and not worse than the champion."""

from __future__ import annotations

from dataclasses import dataclass

from aiml_assets.settings import GateSettings

SHOWN = ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_ratio", "validation_rows")


@dataclass(frozen=True)
class GateDecision:
    failures: list[str]
    candidate: dict[str, float]
    champion: dict[str, float] | None  # the champion's metrics on the same validation rows, if there is one
    champion_version: int | None

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


def decide(gate: GateSettings, candidate: dict[str, float], champion: dict[str, float] | None = None,
           champion_version: int | None = None) -> GateDecision:
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
    return GateDecision(failures, candidate, champion, champion_version)
