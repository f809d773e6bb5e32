"""`aiml run-local`, the README's first command, end to end at a small size under an injected today: it picks what
the data holds, and one product's failed gate leaves that product out while the others are published."""

import re

from pyspark.sql import functions as F

from aiml_assets import cli
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.spark import SparkResource
from local_environment import local_environment


def _summary(out: str) -> dict[str, dict]:
    """The per-product table run-local ends with."""
    lines = out[out.index("product "):].splitlines()
    rows = {}
    for line in lines[2:]:
        match = re.match(r"^(\w+)\s+([\d.]+|-)\s+(passed|failed|not run)\s+(.*?)\s+(version \d+|no)\s+(\d+)$", line)
        if not match:
            break
        product, auc, gate, reason, promoted, scored = match.groups()
        rows[product] = {"auc": auc, "gate": gate, "reason": reason, "promoted": promoted, "scored": int(scored)}
    return rows


def test_run_local_publishes_the_products_whose_gate_passed(tmp_path, spark, capsys):
    with local_environment(tmp_path / "home", DAGSTER_HOME=str(tmp_path / "dagster")):
        code = cli.main(["run-local", "--customers", "1500", "--end-date", "2026-11-30", "--today", "2028-02-29"])
        out, err = capsys.readouterr()
        assert code == 0, out[-2000:] + err[-2000:]
        assert "the EDP data ends 2026-11-30: snapshots 2026-09-01, 2026-10-01, 2026-11-01" in out
        assert "scoring day 2026-12-01" in out
        summary = _summary(out)
        assert list(summary) == ["credit_card", "personal_loan", "mortgage", "savings_account", "home_insurance",
                                 "investment_isa"]
        passed = {p for p, row in summary.items() if row["gate"] == "passed"}
        failed = {p for p, row in summary.items() if row["gate"] == "failed"}
        assert passed and failed and passed | failed == set(summary)  # 1,500 customers: some products are too few
        for product in failed:
            assert summary[product]["reason"] != "-" and "<" in summary[product]["reason"]
            assert summary[product]["promoted"] == "no" and summary[product]["scored"] == 0
        for product in passed:
            assert summary[product]["promoted"] == "version 1" and summary[product]["scored"] > 0
        published = LocalCatalog(home=str(tmp_path / "home")).read(SparkResource().get_session(),
                                                                     "edp.cdp.nba_propensity")
        counts = {r[0]: r[1] for r in published.groupBy("product_code").count().collect()}
        assert counts == {p: summary[p]["scored"] for p in passed}
        assert {str(r[0]) for r in published.select(F.col("snapshot_date")).distinct().collect()} == {"2026-12-01"}


def test_run_local_on_data_too_short_to_label_says_so_and_fails(tmp_path, capsys):
    with local_environment(tmp_path / "home", DAGSTER_HOME=str(tmp_path / "dagster")):
        code = cli.main(["run-local", "--customers", "50", "--end-date", "2024-11-20", "--today", "2026-12-01"])
    assert code == 1
    assert "nothing to run: the EDP data ends 2024-11-20: no snapshot has a complete 30-day label window" in \
        capsys.readouterr().err
