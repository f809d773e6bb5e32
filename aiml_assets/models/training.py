"""Training and evaluation of one product's propensity model, independent of Dagster.

`train` runs on the executors, one product's rows per call (`family.train_family`): it and what it calls use nothing
of `aiml_assets` beyond this module and `reference_profile` (both are shipped to the workers by value) and the constants of
`model_inputs`, which travel as values.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version as installed_version
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aiml_assets.model_inputs import CATEGORICAL, NON_FEATURES
from aiml_assets.models.reference_profile import profile
from aiml_assets.resources.safe_artifact import TRUSTED_SKOPS_TYPES
from aiml_assets.provenance import git_commit

if TYPE_CHECKING:  # scikit-learn and MLflow load where a model is trained or logged, not with the code location
    from sklearn.pipeline import Pipeline

# Take-up is rare (about 1% a month), so the trees are kept small and slow to learn: a freer model memorises the
# few positives and its validation probabilities collapse towards 0 (calibration ratio ~0.2 in our measurements).
PARAMS = {"learning_rate": 0.05, "max_iter": 100, "max_leaf_nodes": 8, "min_samples_leaf": 40,
          "l2_regularization": 1.0, "early_stopping": False, "random_state": 7}


# MLflow 3.17 serializes sklearn models with skops and refuses unlisted types; this is the one type of ours it flags
# (the tree nodes of HistGradientBoosting). We trust it because we wrote the file ourselves, in this run.


VERSION_TAG = "registered_model_version"  # run tag: the version this run's registration returned
REFERENCE_PROFILE = "reference_profile.json"  # run artifact: the training rows' feature distribution (drift)
FEATURE_IMPORTANCE = "plots/feature_importance.json"  # run artifact: feature name -> importance (aggregate)


class NotEnoughSnapshots(ValueError):
    pass


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NON_FEATURES]


def temporal_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on every snapshot before the latest present; validate on the latest."""
    snapshots = sorted(frame["snapshot_date"].unique())
    if len(snapshots) < 2:
        raise NotEnoughSnapshots(f"a temporal split needs at least 2 snapshots, got {len(snapshots)}")
    latest = snapshots[-1]
    return frame[frame["snapshot_date"] < latest], frame[frame["snapshot_date"] == latest]


def build_pipeline(features: list[str]) -> Pipeline:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric = [c for c in features if c not in CATEGORICAL]
    # HistGradientBoosting handles the nullable day counts (NaN) natively, so numeric columns pass through.
    encode = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
         ("numeric", "passthrough", numeric)],
        verbose_feature_names_out=False,
    )
    return Pipeline([("encode", encode), ("classifier", HistGradientBoostingClassifier(**PARAMS))])


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Model input: feature columns only, numerics as float (nullable ints become NaN)."""
    x = frame[feature_columns(frame)].copy()
    for c in x.columns:
        if c not in CATEGORICAL:
            x[c] = pd.to_numeric(x[c], errors="coerce").astype("float64")
    return x


def score(model: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    """The model's probability of take-up for every row of `frame`."""
    return model.predict_proba(prepare(frame))[:, 1]


def evaluate(model: Pipeline, valid: pd.DataFrame) -> dict[str, float]:
    return validation_metrics(valid, score(model, valid))


def validation_metrics(valid: pd.DataFrame, p: np.ndarray) -> dict[str, float]:
    """How well the scores `p` rank and calibrate the labels of `valid`."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = valid["label"].to_numpy()
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        # calibration in the large: mean predicted over observed rate (1.0 is perfectly calibrated on average)
        "calibration_ratio": float(p.mean() / max(y.mean(), 1e-12)),
        "validation_rows": float(len(y)),
        "validation_positive_rate": float(y.mean()),
    }


@dataclass
class TrainedModel:
    model: Pipeline
    metrics: dict[str, float]
    train_snapshots: list[str]
    validation_snapshot: str
    train_rows: int
    validation: pd.DataFrame = field(repr=False)
    validation_scores: np.ndarray = field(repr=False)
    reference_profile: dict = field(default_factory=dict, repr=False)  # feature shares of the training rows


def train(frame: pd.DataFrame, *, shuffle_labels: bool = False) -> TrainedModel:
    """Fit on the earlier snapshots, score the latest. `shuffle_labels` is a test hook for a deliberately weak model."""
    train_rows, valid_rows = temporal_split(frame)
    y = train_rows["label"].to_numpy()
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    if len(np.unique(y)) < 2 or valid_rows["label"].nunique() < 2:
        raise ValueError("training and validation data each need both label values")
    x = prepare(train_rows)
    model = build_pipeline(list(x.columns)).fit(x, y)
    scores = score(model, valid_rows)
    return TrainedModel(
        model=model, metrics=validation_metrics(valid_rows, scores),
        train_snapshots=[str(s) for s in sorted(train_rows["snapshot_date"].unique())],
        validation_snapshot=str(valid_rows["snapshot_date"].iloc[0]), train_rows=len(train_rows),
        validation=valid_rows, validation_scores=scores, reference_profile=profile(x, CATEGORICAL),
    )


def registered_name(aiml_catalog: str, product: str) -> str:
    return f"{aiml_catalog}.models.nba_propensity_{product}"


# What loading the model needs, at the versions it was trained with. Stated rather than inferred: MLflow's inference
# imports the model in the current process and picks up whatever that process has loaded (pytest, rich, ...).
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def model_requirements() -> list[str]:
    return [f"{package}=={installed_version(package)}" for package in MODEL_REQUIREMENTS]


def anonymous_example(x: pd.DataFrame) -> pd.DataFrame:
    """An input example that is nobody's record: one row of medians (numeric) and most common values (categorical).
    The example travels with the model to MLflow and Nexus, which must not hold customer data."""
    row = {c: (x[c].mode().iloc[0] if c in CATEGORICAL else float(x[c].median())) for c in x.columns}
    return pd.DataFrame([row], columns=x.columns)


def log_and_register(trained: TrainedModel, *, experiment_id: str, name: str, product: str, tags: dict[str, str],
                     plots: dict[str, bytes] | None = None, importance: dict[str, float] | None = None,
                     example: pd.DataFrame | None = None):
    """One MLflow run: params, metrics, signature + input example, tags, plots; registers and returns
    (run_id, version). The version is the one registration returned, never "the latest". `example` is the
    anonymous input example (default: made from `trained.validation`, which then needs its feature columns).

    A store failing part way (locked, down) must leave nothing that looks complete: the run carries its tags from
    its first write, so an abandoned one can be found (`registry.end_abandoned_runs`); the version is created
    with the run's tags in one write, so the registry alone says where it came from; and the run names its
    version (`VERSION_TAG`) last, so only a run that finished names one (`registry.version_registered_by`).
    """
    import mlflow
    from mlflow.models import infer_signature

    example = anonymous_example(prepare(trained.validation)) if example is None else example
    signature = infer_signature(example, trained.model.predict_proba(example)[:, 1])
    all_tags = {**tags, "git_commit": git_commit(), "train_snapshots": ",".join(trained.train_snapshots),
                "validation_snapshot": trained.validation_snapshot, "product": product}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"nba_propensity_{product}", tags=all_tags) as run:
        mlflow.log_params({**PARAMS, "product": product, "train_rows": trained.train_rows,
                           "validation_snapshot": trained.validation_snapshot})
        mlflow.log_metrics(trained.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for file_name, png in (plots or {}).items():
                (Path(tmp) / file_name).write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / file_name), artifact_path="plots")
        if importance:
            mlflow.log_dict(importance, FEATURE_IMPORTANCE)
        mlflow.log_dict(trained.reference_profile, REFERENCE_PROFILE)
        info = mlflow.sklearn.log_model(trained.model, name="model", signature=signature, input_example=example,
                                        serialization_format="skops", skops_trusted_types=list(TRUSTED_SKOPS_TYPES),
                                        pip_requirements=model_requirements())
        version = mlflow.register_model(info.model_uri, name, tags=all_tags).version
        if version is None:
            raise RuntimeError(f"registration of {name} returned no version")
        mlflow.set_tag(VERSION_TAG, str(version))
    return run.info.run_id, int(version)
