"""What a trained model looks like: ROC curve and feature importance, as PNGs for MLflow and asset metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from aiml_assets.models.training import prepare
from aiml_assets.plots import figure, to_png

IMPORTANCE_ROWS = 5000  # permutation importance re-scores the sample once per feature and repeat
TOP_FEATURES = 15


def roc_png(labels: np.ndarray, scores: np.ndarray, title: str) -> bytes:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = figure(4.5, 4.5)
    ax.plot(fpr, tpr, color="steelblue", label="model")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    return to_png(fig)


def feature_importance(model, valid: pd.DataFrame) -> dict[str, float]:
    """Drop in validation ROC AUC when each feature is shuffled (model-agnostic; HistGradientBoosting has no
    built-in importances)."""
    from sklearn.inspection import permutation_importance

    sample = valid.sample(n=min(IMPORTANCE_ROWS, len(valid)), random_state=0)
    # One OpenMP thread: the many small predictions otherwise spend their time starting thread teams (13x slower
    # on a 2-core box in our measurement).
    with threadpool_limits(1):
        result = permutation_importance(model, prepare(sample), sample["label"].to_numpy(), scoring="roc_auc",
                                        n_repeats=3, random_state=0)
    ranked = sorted(zip(prepare(sample).columns, result.importances_mean), key=lambda kv: -kv[1])
    return {name: round(float(value), 5) for name, value in ranked}


def importance_png(importance: dict[str, float], title: str) -> bytes:
    top = list(importance.items())[:TOP_FEATURES][::-1]
    fig, ax = figure(6, 0.3 * len(top) + 1)
    ax.barh([name for name, _ in top], [value for _, value in top], color="steelblue")
    ax.set(xlabel="drop in ROC AUC when shuffled", title=title)
    ax.tick_params(axis="y", labelsize=7)
    return to_png(fig)
