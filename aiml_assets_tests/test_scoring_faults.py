"""Scoring faults against the real writer: an exception inside the scoring UDF, and a kill -9 of the process writing
the scores (after Spark placed the partition's files, before delta-rs committed them). Either way the day's
committed partition is the one readers see, and a rerun writes the new one. (In a real `daily_scoring` run a
failing scores step also leaves the CDP alone: test_inference's Nexus-down test.)"""

import signal
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from aiml_assets.inference.deployment import CHAMPION, Deployment
from aiml_assets.inference.scoring import score_customers
from aiml_assets.resources.tables import DeltaRsTables

DAY = date(2026, 11, 1)
FEATURES = pd.DataFrame({"customer_id": [f"C{i:08d}" for i in range(40)], "snapshot_date": [DAY] * 40,
                         "holds_credit_card": [0] * 40, "region": ["North", "South"] * 20,
                         "spend_365d": [float(i) for i in range(40)]})
DEPLOYMENT = Deployment("credit_card", CHAMPION, "aiml_local.models.nba_propensity_credit_card", 1, "0" * 64,
                        "0" * 64, "CHG0000001")


def scores(spark, model):
    features = spark.createDataFrame(FEATURES)
    return score_customers(features, {("credit_card", CHAMPION): (model, DEPLOYMENT)}, 0.0,
                           datetime(2026, 11, 1, 6, tzinfo=timezone.utc))


def prior(scored: float):
    """A model scoring everyone `scored`."""
    x = FEATURES[["spend_365d"]]
    return DummyClassifier(strategy="prior").fit(x, [1] * round(40 * scored) + [0] * (40 - round(40 * scored)))


def write(tables, frame, location):
    return tables.write(frame, str(location), run_id="scores", partition_by=["snapshot_date"],
                        replace={"snapshot_date": DAY.isoformat()})


def committed(location) -> set[float]:
    return set(DeltaTable(str(location)).to_pyarrow_table().column("score").to_pylist())


def test_an_exception_inside_the_scoring_udf_commits_no_scores(spark, tmp_path):
    location, tables = tmp_path / "propensity_scores", DeltaRsTables(write_roots=[str(tmp_path)])
    version = write(tables, scores(spark, prior(0.25)), location)
    # fitted with a numeric region: on the real string column, predict_proba raises in the Python worker
    broken = LogisticRegression().fit(FEATURES[["region", "spend_365d"]].assign(region=[0, 1] * 20), [0, 1] * 20)
    with pytest.raises(Exception, match="could not convert string to float"):
        write(tables, scores(spark, broken), location)
    assert DeltaTable(str(location)).version() == version and committed(location) == {0.25}
    on_disk = {p.name for p in location.rglob("*.parquet")}
    assert on_disk == {uri.split("/")[-1] for uri in DeltaTable(str(location)).file_uris()}  # nothing left half-way


KILLED_WRITER = """
import os, signal, sys
import deltalake
sys.path.insert(0, sys.argv[2])
from test_scoring_faults import prior, scores, write
from aiml_assets.resources.spark import SparkResource
from aiml_assets.resources.tables import DeltaRsTables

spark = SparkResource(master="local[1]", shuffle_partitions=1, driver_memory="1g").get_session()
tables = DeltaRsTables(write_roots=[os.path.dirname(sys.argv[1])])
# killed once Spark has placed the partition's files in the table folder, as delta-rs is about to commit them
deltalake.DeltaTable.create_write_transaction = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
write(tables, scores(spark, prior(0.75)), sys.argv[1])
"""


def test_a_kill_during_the_scores_write_leaves_the_committed_partition_and_a_rerun_writes(spark, tmp_path):
    location, tables = tmp_path / "propensity_scores", DeltaRsTables(write_roots=[str(tmp_path)])
    write(tables, scores(spark, prior(0.25)), location)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(location), str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    placed = {p.name for p in location.rglob("*.parquet") if "_staging" not in p.parts}
    live = {uri.split("/")[-1] for uri in DeltaTable(str(location)).file_uris()}
    assert placed > live  # the killed write's files are on disk, and no commit names them: nobody reads them
    assert committed(location) == {0.25}
    write(tables, scores(spark, prior(0.75)), location)
    assert committed(location) == {0.75}
