"""The training core of issue 4 (temporal split, pipeline, metrics, MLflow registration) on synthetic rows."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from aiml_assets.models.training import NotEnoughSnapshots, log_and_register, registered_name, temporal_split, train


def synthetic(n=600, snapshots=(date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)), seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for s in snapshots:
        spend = rng.gamma(2.0, 100.0, n)
        days = rng.integers(1, 365, n).astype(float)
        days[rng.random(n) < 0.2] = np.nan  # nullable day count
        segment = rng.choice(["mass", "affluent", "premier"], n)
        logit = -2.0 + 0.006 * spend + (segment == "premier") * 1.0
        label = (rng.random(n) < 1 / (1 + np.exp(-logit + 1.5))).astype(int)
        parts.append(pd.DataFrame({
            "customer_id": [f"C{i:08d}" for i in range(n)], "snapshot_date": s,
            "age_band": rng.choice(["18-24", "25-34", "35-49"], n), "region": rng.choice(["London", "Wales"], n),
            "segment": segment, "income_band": rng.choice(["low", "mid", "high"], n),
            "tenure_days": rng.integers(30, 4000, n), "spend_365d": spend,
            "days_since_last_contact": days,
            "product_code": "credit_card", "label": label,
        }))
    return pd.concat(parts, ignore_index=True)


def test_temporal_split_validates_on_latest_snapshot():
    frame = synthetic()
    train_rows, valid_rows = temporal_split(frame)
    assert set(valid_rows["snapshot_date"]) == {date(2025, 3, 1)}
    assert set(train_rows["snapshot_date"]) == {date(2025, 1, 1), date(2025, 2, 1)}
    with pytest.raises(NotEnoughSnapshots):
        temporal_split(frame[frame["snapshot_date"] == date(2025, 3, 1)])


def test_signal_beats_baseline_and_shuffled_labels_do_not():
    frame = synthetic()
    good = train(frame)
    weak = train(frame, shuffle_labels=True)
    assert good.metrics["roc_auc"] > 0.6
    assert weak.metrics["roc_auc"] < good.metrics["roc_auc"] - 0.1
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "calibration_ratio"} <= good.metrics.keys()


def test_registration_records_its_own_versions_under_a_dotted_name(tmp_path):
    from aiml_assets.resources.tracking import MlflowResource

    resource = MlflowResource(tracking_uri="sqlite", registry_uri="sqlite", experiment="/aiml/test", home=str(tmp_path))
    experiment_id = resource.activate()
    trained = train(synthetic(n=300))
    name = registered_name("aiml_local", "credit_card")
    assert name == "aiml_local.models.nba_propensity_credit_card"
    runs = [log_and_register(trained, experiment_id=experiment_id, name=name, product="credit_card",
                             tags={"code_version": "test"}) for _ in range(2)]
    assert [version for _, version in runs] == [1, 2]
    client = resource.client()
    assert client.get_model_version(name, "2").run_id == runs[1][0]
    assert client.get_model_version(name, "2").tags["product"] == "credit_card"  # registered with the run's tags
    run = client.get_run(runs[0][0])
    assert run.data.metrics["roc_auc"] > 0.6 and run.data.tags["git_commit"]


def test_the_input_example_shipped_with_the_model_is_nobodys_record():
    from aiml_assets.models.training import anonymous_example, prepare

    x = prepare(synthetic(n=300))
    example = anonymous_example(x)
    assert len(example) == 1 and list(example.columns) == list(x.columns)
    assert example["spend_365d"].iloc[0] == pytest.approx(x["spend_365d"].median())
    assert not (x.round(6) == example.round(6).iloc[0]).all(axis=1).any()  # matches no customer's row


def test_a_run_left_running_names_no_version_and_is_ended_failed(tmp_path):
    """What an attempt leaves when its process dies, or its store is still locked as MLflow ends the run."""
    from mlflow import MlflowClient

    from aiml_assets.models.registry import ModelVersionNotFound, end_abandoned_runs, version_registered_by
    from aiml_assets.models.training import VERSION_TAG
    from aiml_assets.resources.tracking import MlflowResource

    experiment_id = MlflowResource(tracking_uri="sqlite", registry_uri="sqlite", experiment="/aiml/test",
                                   home=str(tmp_path)).activate()
    client = MlflowClient()
    abandoned = client.create_run(experiment_id, tags={"dagster_run_id": "attempt", "product": "mortgage",
                                                       VERSION_TAG: "1"}).info.run_id
    other = client.create_run(experiment_id, tags={"dagster_run_id": "another", "product": "mortgage"}).info.run_id
    with pytest.raises(ModelVersionNotFound):
        version_registered_by(experiment_id, ["attempt"], "mortgage")
    assert end_abandoned_runs(experiment_id, ["attempt", None, "attempt"], "mortgage") == [abandoned]
    assert client.get_run(abandoned).info.status == "FAILED" and client.get_run(other).info.status == "RUNNING"
    assert end_abandoned_runs(experiment_id, ["attempt"], "mortgage") == []


# What runs in a cluster's Python worker: aiml_assets cannot be imported there (the step launcher ships the code
# bundle to the driver only), so the unpickled group function must not try.
_WORKER = """
import pickle, sys
class NoProjectCode:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "aiml_assets":
            raise ImportError(f"{name}: not on the worker")
sys.meta_path.insert(0, NoProjectCode())
fit, frames = pickle.loads(sys.stdin.buffer.read())
sys.stdout.buffer.write(pickle.dumps([fit(frame) for frame in frames]))
"""


def test_the_family_group_function_runs_where_aiml_assets_cannot_be_imported(tmp_path):
    import pickle
    import subprocess
    import sys

    import skops.io
    from pyspark import cloudpickle

    from aiml_assets.models.family import SHIPPED_BY_VALUE, fit_groups
    from aiml_assets.resources.safe_artifact import TRUSTED_SKOPS_TYPES

    frame = synthetic()
    one_snapshot = frame[frame["snapshot_date"] == date(2025, 3, 1)].assign(product_code="mortgage")
    champion = train(synthetic(seed=4)).model
    for module in SHIPPED_BY_VALUE:
        cloudpickle.register_pickle_by_value(module)
    payload = cloudpickle.dumps((fit_groups({"credit_card": champion}), [frame, one_snapshot]))
    worker = subprocess.run([sys.executable, "-c", _WORKER], input=payload, capture_output=True, cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr.decode()[-3000:]
    fitted, failed = (result.iloc[0] for result in pickle.loads(worker.stdout))

    assert fitted["product_code"] == "credit_card" and fitted["error"] is None
    model = skops.io.loads(fitted["model"], trusted=list(TRUSTED_SKOPS_TYPES))
    valid = frame[frame["snapshot_date"] == date(2025, 3, 1)].sort_values("customer_id")
    # the scores returned are the returned model's on the validation snapshot, in the returned customers' order
    assert fitted["validation_customers"] == valid["customer_id"].tolist()
    from aiml_assets.models.training import score
    np.testing.assert_allclose(fitted["validation_scores"], score(model, valid))
    assert '"roc_auc"' in fitted["champion_metrics"] and fitted["train_snapshots"] == ["2025-01-01", "2025-02-01"]
    # one product's failure comes back as its own row, not as the task's
    assert failed["product_code"] == "mortgage" and failed["model"] is None
    assert failed["error"].startswith("NotEnoughSnapshots: a temporal split needs at least 2 snapshots")
