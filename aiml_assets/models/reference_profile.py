"""A model's reference profile: how each input feature was distributed in its training rows.

Made at training time and shipped in the model's Nexus metadata, so that scoring can measure drift (PSI) without
reading lab data: bin edges and shares, never rows. Numeric features get decile edges plus a share for missing
values; categorical features get the share of each value.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from aiml_assets.model_inputs import PROFILE_BINS

FLOOR = 1e-4  # an empty bin counts as this share, so that PSI stays finite


def profile(x: pd.DataFrame, categorical: list[str]) -> dict:
    """The reference profile of the model input `x` (one column per feature)."""
    features = {}
    for column in x.columns:
        values = x[column]
        if column in categorical:
            shares = values.astype("string").fillna("<null>").value_counts(normalize=True)
            features[column] = {"kind": "categorical", "shares": {str(k): float(v) for k, v in shares.items()}}
            continue
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        present = numbers.dropna().to_numpy()
        quantiles = np.linspace(0, 1, PROFILE_BINS + 1)[1:-1]
        edges = sorted({float(e) for e in np.quantile(present, quantiles)}) if len(present) else []
        buckets = np.searchsorted(edges, present, side="right")  # number of edges <= value, as drift.py counts
        counts = np.bincount(buckets, minlength=len(edges) + 1)
        features[column] = {"kind": "numeric", "edges": edges, "rows": int(len(numbers)),
                            "shares": [float(c) / len(numbers) for c in counts],
                            "null_share": float(numbers.isna().mean())}
    return {"bins": PROFILE_BINS, "rows": int(len(x)), "features": features}


def expected_shares(feature: dict) -> dict[str, float]:
    """The reference shares by bin name: `b<i>` for numeric bins, `null`, or the category value."""
    if feature["kind"] == "categorical":
        return dict(feature["shares"])
    shares = {f"b{i}": share for i, share in enumerate(feature["shares"])}
    shares["null"] = feature["null_share"]
    return shares


def psi(expected: dict[str, float], actual_counts: dict[str, int]) -> float:
    """Population stability index of the observed counts against the reference shares (bins as in
    `expected_shares`; observed values the reference never saw count in their own bins)."""
    total = sum(actual_counts.values())
    if total == 0:
        return 0.0
    value = 0.0
    for name in set(expected) | set(actual_counts):
        e = max(expected.get(name, 0.0), FLOOR)
        a = max(actual_counts.get(name, 0) / total, FLOOR)
        value += (a - e) * math.log(a / e)
    return value
