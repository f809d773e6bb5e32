"""The schema of a model version's metadata.json in Nexus: what the model_binary asset writes, each value bounded.

Nothing in it is a free-form list of records: metrics are the validation metrics by name, the reference profile is
per feature column of the training set (bin edges and shares of a distribution, never rows), and every string has a
pattern or a length.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, StrictFloat, StrictInt, model_validator

from aiml_assets.model_inputs import CATEGORICAL, PROFILE_BINS
from aiml_assets.resources.mlflow_file_shapes import Feature, Hex32, RegisteredName, Shape, Signature, pattern

MAX_METADATA_BYTES = 256 * 1024
MAX_CATEGORIES = 16  # per categorical feature; the widest today is region: 12 values and <null>
REQUIRED_METADATA_KEYS = ("name", "version", "metrics", "signature", "git_commit", "training_data", "model_sha256")

Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Share = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Count = Annotated[StrictInt, Field(ge=0)]


class Metrics(Shape):
    """training.validation_metrics, as MLflow returns them for the run."""

    roc_auc: Number
    pr_auc: Number | None = None
    log_loss: Number | None = None
    brier: Number | None = None
    calibration_ratio: Number | None = None
    validation_rows: Number | None = None
    validation_positive_rate: Number | None = None


class TrainingData(Shape):
    training_table: pattern(r"[a-z0-9_]+(?:\.[a-z0-9_]+){0,2}", 255) | None
    training_table_version: pattern(r"[0-9]{1,12}") | None = None
    training_partitions: pattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:,[0-9]{4}-[0-9]{2}-[0-9]{2}){0,119}", 1400) | None = None


def _a_distribution(shares: list[float]) -> None:
    if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ValueError("shares do not add up to 1")


class NumericProfile(Shape):
    kind: Literal["numeric"]
    edges: Annotated[list[Number], Field(max_length=PROFILE_BINS - 1)]
    rows: Count
    shares: Annotated[list[Share], Field(min_length=1, max_length=PROFILE_BINS)]
    null_share: Share

    @model_validator(mode="after")
    def _bins_of_a_distribution(self) -> NumericProfile:
        if len(self.shares) != len(self.edges) + 1 or self.edges != sorted(set(self.edges)):
            raise ValueError("not increasing bin edges with a share per bin")
        _a_distribution([*self.shares, self.null_share])
        return self


class CategoricalProfile(Shape):
    kind: Literal["categorical"]
    shares: Annotated[dict[pattern(r"[A-Za-z0-9 <>_+.-]+", 32), Share], Field(min_length=1, max_length=MAX_CATEGORIES)]

    @model_validator(mode="after")
    def _a_distribution(self) -> CategoricalProfile:
        _a_distribution(list(self.shares.values()))
        return self


class ReferenceProfile(Shape):
    bins: Literal[PROFILE_BINS]
    rows: Count
    features: dict[Feature, Annotated[NumericProfile | CategoricalProfile, Field(discriminator="kind")]]

    @model_validator(mode="after")
    def _categories_only_for_categorical_features(self) -> ReferenceProfile:
        if wrong := sorted(f for f, p in self.features.items() if (p.kind == "categorical") != (f in CATEGORICAL)):
            raise ValueError(f"{', '.join(wrong)}: categorical shares are for {', '.join(CATEGORICAL)} only")
        return self


class ModelMetadata(Shape):
    name: RegisteredName
    version: Annotated[StrictInt, Field(ge=1)]
    model_sha256: pattern(r"[0-9a-f]{64}")
    metrics: Metrics
    signature: Signature | None
    git_commit: pattern(r"[0-9a-f]{7,40}|unknown")
    training_data: TrainingData
    mlflow_run_id: Hex32 | None = None
    code_version: pattern(r"[0-9A-Za-z.+_-]+") | None = None
    reference_profile: ReferenceProfile | None = None
