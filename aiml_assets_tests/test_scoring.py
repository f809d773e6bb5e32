"""The scoring UDF travels to Spark's Python workers on its own; the canary is a stable hash-selected share."""

import subprocess
import sys

import pandas as pd
from pyspark import cloudpickle
from pyspark.sql import functions as F
from sklearn.dummy import DummyClassifier

from aiml_assets.inference.scoring import _score_batches, in_canary


WORKER = """
import sys
class NoProject:  # a Databricks worker: the step launcher ships the code bundle to the driver only
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "aiml_assets":
            raise ImportError("aiml_assets is not importable on a worker")
sys.meta_path.insert(0, NoProject())
import pandas
from pyspark import cloudpickle
udf = cloudpickle.loads(open(sys.argv[1], "rb").read())
scored = pandas.concat(udf(iter([pandas.read_pickle(sys.argv[2])])))
print(list(scored["score"]), sorted(set(scored["model_version"])))
"""


def test_the_scoring_udf_runs_where_aiml_assets_cannot_be_imported(tmp_path):
    x = pd.DataFrame({"region": ["North", "South"], "spend_365d": [1.0, 2.0]})
    model = DummyClassifier(strategy="prior").fit(x, [0, 1])
    udf = _score_batches({("credit_card", "champion"): (model, "aiml.models.nba_propensity_credit_card", 3)},
                         ["region"])
    (tmp_path / "udf.pkl").write_bytes(cloudpickle.dumps(udf))
    batch = x.assign(customer_id=["C00000001", "C00000002"], snapshot_date=pd.to_datetime(["2026-11-01"] * 2).date,
                     product_code="credit_card", _deployed_role="champion", model_role="champion")
    batch.to_pickle(tmp_path / "batch.pkl")
    worker = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "udf.pkl"), str(tmp_path / "batch.pkl")],
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert worker.stdout.strip() == "[0.5, 0.5] [3]"


def test_the_canary_is_the_same_hash_selected_share_on_every_run(spark):
    customers = spark.range(20_000).select(F.format_string("C%08d", "id").alias("customer_id"))
    picked = customers.filter(in_canary(F.col("customer_id"), 0.1))
    share = picked.count() / 20_000
    assert 0.09 < share < 0.11
    again = {r[0] for r in customers.filter(in_canary(F.col("customer_id"), 0.1)).collect()}
    assert again == {r[0] for r in picked.collect()}
    assert customers.filter(in_canary(F.col("customer_id"), 0.0)).count() == 0
    # a larger share keeps every earlier canary customer: raising it only adds customers
    wider = {r[0] for r in customers.filter(in_canary(F.col("customer_id"), 0.2)).collect()}
    assert again < wider


def test_the_parallel_run_measures_how_far_the_challenger_moved_per_product(spark):
    from aiml_assets.inference.parallel_run import score_shift

    rows = []
    for i in range(2000):
        base = (i % 1000) / 1000 * 0.1
        for product, challenger in (("credit_card", base), ("mortgage", min(base * 3, 1.0))):
            rows.append((f"C{i:08d}", product, base, challenger, 1, 1 if product == "credit_card" else 2))
    frame = spark.createDataFrame(rows, "customer_id string, product_code string, champion_score double, "
                                  "challenger_score double, champion_rank int, challenger_rank int")
    shift = score_shift(frame)
    assert shift.loc["credit_card", "score_psi"] == 0 and shift.loc["credit_card", "mean_abs_diff"] == 0
    assert shift.loc["mortgage", "score_psi"] > 1 and shift.loc["mortgage", "same_rank_share"] == 0
    assert shift.loc["mortgage", "score_correlation"] > 0.99  # shifted, not reordered
