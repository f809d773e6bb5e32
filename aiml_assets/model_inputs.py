"""What a propensity model of ours takes as input: the feature columns (by the products, the feature windows and
EDP's spend categories), which of them are categorical, and how its reference profile bins them.

A leaf (it imports nothing of the project), because both sides of Nexus need it: the sources, features and models
build their columns by it, and the Nexus resource checks a published model's signature and metadata against it.
"""

from __future__ import annotations

SPEND_CATEGORIES = ("groceries", "dining", "travel", "fuel", "utilities", "entertainment", "retail", "other")
WINDOWS = (30, 90, 365)  # days before the snapshot that a count, spend or average ticket covers
CATEGORICAL = ["age_band", "region", "segment", "income_band"]
NON_FEATURES = frozenset({"customer_id", "snapshot_date", "product_code", "label"})  # training set columns
PROFILE_BINS = 10  # deciles of each numeric feature in the reference profile


def feature_columns(products: list[str]) -> list[str]:
    """The training set's feature columns, in its order, for these products."""
    return ["tenure_days", *CATEGORICAL, *(f"txn_count_{d}d" for d in WINDOWS), *(f"holds_{p}" for p in products),
            "contacts_365d", "responses_365d", *(f"spend_{d}d" for d in WINDOWS),
            *(f"avg_ticket_{d}d" for d in WINDOWS), *(f"share_{c}_365d" for c in SPEND_CATEGORIES),
            "days_since_last_txn", "days_since_last_contact"]
