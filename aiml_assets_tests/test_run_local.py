"""`aiml run-local`, the README's first command, end to end at a small size under an injected today: it picks what
the data holds, and one product's failed gate leaves that product out while the others are published.

The same run, followed by a failing check and an erasure, is then searched for customer ids: nothing customer-level
may leave the data tables (Dagster's event log and compute logs, MLflow, Nexus, the audit log, the run's output), and
the erased customers are in no file at all but the EDP products' own."""

import gzip
import io
import json
import os
import re
import sqlite3
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetSelection, DagsterInstance, define_asset_job
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F

from aiml_assets import cli
from aiml_assets.definitions import build_definitions
from aiml_assets.sources.erased import digest
from aiml_assets.governance.erasure import ERASURE_JOB
from aiml_assets.quality import check_name
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from aiml_assets.sources.edp import asset_key
from aiml_assets.sources.schemas import CUSTOMERS, SOURCE_MODELS
from local_environment import local_environment

ERASURE_KEY = "run-local-test-erasure-key"
CUSTOMER_ID = re.compile(rb"C[0-9]{8}")
# The data plane, relative to the AIML home: the Delta tables where customer ids belong. Every other file under the
# AIML and Dagster homes is searched, the audit log's table included; a Delta table not named here fails the test.
EDP_PRODUCTS = {"catalog/edp/fdp/customers", "catalog/edp/fdp/transactions", "catalog/edp/cdp/product_holdings",
                "catalog/edp/bdp/campaign_responses"}  # the seeded EDP products
DATA_TABLES = EDP_PRODUCTS | {
    "buckets/lab/customer_features", "buckets/lab/training_set",
    "buckets/lab/quarantine_edp_fdp_customers_customers_schema",  # the failing check's offending rows
    "buckets/prod/scoring_features", "buckets/prod/propensity_scores",
    "buckets/prod/parallel_run_report",  # UAT's side-by-side scores per customer
}
DATA_TABLE_FOLDERS = {"buckets/prod/cdp/nba_propensity/versions"}  # one Delta table per published CDP version
NOT_DATA = {"audit/audit_log", "buckets/prod/deployed_model"}  # Delta tables, but stores like any other: searched


@dataclass
class WholeGraph:
    code: int
    out: str
    err: str
    home: Path
    searched: list[Path]  # the roots searched, besides the data tables
    erased: list[str]  # the bad row's customer and one of the training set
    failing_check: object  # the evaluation of the check run on a source with a bad row
    quarantined: list[str]  # the customers in its quarantine table before the erasure
    published: dict[tuple[str, str], int]  # the CDP's rows per (product, day) right after run-local


@contextmanager
def _captured(out_path: Path, err_path: Path):
    """stdout and stderr, of Python and of the run's step subprocesses alike (file descriptors 1 and 2)."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(out_path, "w", buffering=1) as out, open(err_path, "w", buffering=1) as err:
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _erase(home: Path, spark, quarantined: list[str]) -> list[str]:
    """The quarantined customer and one of the training set (scored and published too), erased by the gdpr_erasure
    job (which takes their keyed digests)."""
    training = LocalCatalog(home=str(home)).read(spark, "aiml_local.lab.training_set")
    trained = training.filter(~F.col("customer_id").isin(quarantined)).select("customer_id").distinct()
    ids = sorted([*quarantined, trained.orderBy("customer_id").first()[0]])
    config = {"request_id": "DSR-2026-0099", "customer_digests": [digest(c, ERASURE_KEY.encode()) for c in ids]}
    with DagsterInstance.get() as instance:
        result = build_definitions("local").resolve_job_def(ERASURE_JOB).execute_in_process(
            instance=instance, run_config={"ops": {"erase_customers": {"config": config}}})
    assert result.success
    return ids


def _fail_a_check(home: Path):
    """A new version of the customers product with one bad row (a seeded customer's, with an unknown segment), and
    its pandera check run on it."""
    location = LocalCatalog(home=str(home)).location(CUSTOMERS)
    row = DeltaTable(location).to_pyarrow_table().slice(0, 1)
    write_deltalake(location, row.set_column(row.schema.get_field_index("segment"), "segment",
                                             pa.array(["not_a_segment"])), mode="append")
    defs = build_definitions("local")
    check = AssetSelection.checks(AssetCheckKey(asset_key(CUSTOMERS), check_name(SOURCE_MODELS[CUSTOMERS])))
    job = define_asset_job("one_check", selection=check).resolve(asset_graph=defs.resolve_asset_graph(),
                                                                 resource_defs=defs.resources)
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, resources=defs.resources, raise_on_error=False)
    [evaluation] = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return evaluation


@pytest.fixture(scope="module")
def whole_graph(tmp_path_factory, spark) -> Iterator[WholeGraph]:
    """One run-local at 1,500 customers, then a failing source check and an erasure of two customers, the
    quarantined one among them."""
    root = tmp_path_factory.mktemp("run_local")
    home, dagster_home = root / "home", root / "dagster"
    with local_environment(home, DAGSTER_HOME=str(dagster_home), AIML_ERASURE_KEY=ERASURE_KEY):
        with _captured(root / "stdout.txt", root / "stderr.txt"):
            code = cli.main(["run-local", "--customers", "1500", "--end-date", "2026-11-30", "--today", "2028-02-29"])
            published = _published(home, spark) if code == 0 else {}
            failing = _fail_a_check(home) if code == 0 else None
            quarantined = _quarantined(home, spark, failing) if code == 0 else []
            erased = _erase(home, spark, quarantined) if code == 0 else []
        yield WholeGraph(code, (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text(), home,
                         [home, dagster_home, root / "stdout.txt", root / "stderr.txt"], erased, failing, quarantined,
                         published)


def _published(home: Path, spark) -> dict[tuple[str, str], int]:
    rows = LocalCatalog(home=str(home)).read(spark, "edp.cdp.nba_propensity").groupBy("product_code", "snapshot_date")
    return {(r[0], str(r[1])): r[2] for r in rows.count().collect()}


def _quarantined(home: Path, spark, evaluation) -> list[str]:
    table = LocalCatalog(home=str(home)).read(spark, evaluation.metadata["quarantine_table"].value)
    return sorted(r[0] for r in table.select("customer_id").distinct().collect())


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


def test_run_local_publishes_the_products_whose_gate_passed(whole_graph):
    out, err = whole_graph.out, whole_graph.err
    assert whole_graph.code == 0, out[-2000:] + err[-2000:]
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
    assert whole_graph.published == {(p, "2026-12-01"): summary[p]["scored"] for p in passed}


def _unpacked(where: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """`data`, and whatever it holds compressed: zip members, gzip, Parquet rows, SQLite rows."""
    yield where, data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield from _unpacked(f"{where}!{name}", archive.read(name))
    elif data[:2] == b"\x1f\x8b":
        yield from _unpacked(f"{where}!gunzip", gzip.decompress(data))
    elif data[:4] == b"PAR1":
        yield f"{where}!rows", json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str).encode()
    elif data[:16] == b"SQLite format 3\x00":
        db = sqlite3.connect(":memory:")
        db.deserialize(data[:18] + b"\x01\x01" + data[20:])  # as a rollback-journal file: a WAL one will not open
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        yield f"{where}!rows", repr([db.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables]).encode()


def _delta_tables(home: Path) -> set[str]:
    return {str(log.parent.relative_to(home)) for log in home.rglob("_delta_log")}


def _within(path: Path, home: Path, tables: set[str]) -> bool:
    return path.is_relative_to(home) and any(path.relative_to(home).as_posix().startswith(f"{t}/") for t in tables)


def _in_data_plane(path: Path, home: Path) -> bool:
    return _within(path, home, DATA_TABLES | DATA_TABLE_FOLDERS)


def _edp_product(path: Path, home: Path) -> bool:
    return _within(path, home, EDP_PRODUCTS)


def _hits(roots: list[Path], home: Path, seeded: set[bytes], skipped=_in_data_plane) -> Counter:
    """Searched file -> how many seeded customer ids it holds (in any form it is unpacked to)."""
    hits = Counter()
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    for path in files:
        if skipped(path, home):
            continue
        found = {i for _, data in _unpacked(str(path), path.read_bytes()) for i in CUSTOMER_ID.findall(data)}
        if found & seeded:
            hits[str(path)] = len(found & seeded)
    return hits


def test_no_customer_id_leaves_the_data_tables(whole_graph, spark):
    """The attack: everything the run, an erasure and a failing check wrote outside the data tables, searched for
    the ids of every seeded customer."""
    assert whole_graph.code == 0 and whole_graph.erased
    home = whole_graph.home
    failing = whole_graph.failing_check
    assert not failing.passed and failing.metadata["quarantined_rows"].value == 2  # unknown segment; repeated id
    assert len(whole_graph.quarantined) == 1  # the bad row's id, in the data plane only
    unclassified = {t for t in _delta_tables(home) - DATA_TABLES - NOT_DATA
                    if not any(t.startswith(f"{folder}/") for folder in DATA_TABLE_FOLDERS)}
    assert not unclassified, f"Delta tables neither named data tables nor searched: {sorted(unclassified)}"
    seeded = {i.encode() for i in DeltaTable(str(home / "catalog/edp/fdp/customers")).to_pyarrow_table(
        columns=["customer_id"]).column(0).to_pylist()}
    assert len(seeded) == 1500
    with local_environment(home, AIML_ERASURE_KEY=ERASURE_KEY):
        audit = json.dumps(build_resources(load_settings())["audit"].read(), default=str).encode()
    hits = _hits(whole_graph.searched, home, seeded)
    if audited := {i for i in CUSTOMER_ID.findall(audit)} & seeded:
        hits["AuditLog.read()"] = len(audited)
    assert not hits, "customer ids outside the data tables (file: how many): " + json.dumps(hits, indent=1)


def test_erased_customers_are_in_no_file_but_the_edp_products(whole_graph):
    """After the erasure, its two customers are nowhere in the environment: not in the lab and scoring tables, the
    quarantine, the published CDP versions, their Delta logs' statistics and checkpoints, nor any store searched
    above. Only EDP's own products hold them (EDP erases there)."""
    assert whole_graph.code == 0 and whole_graph.quarantined[0] in whole_graph.erased
    hits = _hits(whole_graph.searched, whole_graph.home, {i.encode() for i in whole_graph.erased}, _edp_product)
    assert not hits, "erased customers still held (file: how many): " + json.dumps(hits, indent=1)


def test_run_local_on_data_too_short_to_label_says_so_and_fails(tmp_path, capsys):
    with local_environment(tmp_path / "home", DAGSTER_HOME=str(tmp_path / "dagster")):
        code = cli.main(["run-local", "--customers", "50", "--end-date", "2024-11-20", "--today", "2026-12-01"])
    assert code == 1
    assert "nothing to run: the EDP data ends 2024-11-20: no snapshot has a complete 30-day label window" in \
        capsys.readouterr().err
