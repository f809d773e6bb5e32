"""The local EDP: four synthetic source products, consistent, reproducible, streamed, and carrying model signal."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aiml_assets.edp import seed as edp_seed
from aiml_assets.edp.seed import (
    BATCH_ROWS,
    CUSTOMERS,
    EDP_PRODUCTS,
    HOLDINGS,
    RESPONSES,
    TRANSACTIONS,
    generate_chunks,
    seed_edp,
)
from aiml_assets.cli import main
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.settings import PRODUCTS_ENV_VAR, RESOURCES_DIR, load_settings, product_codes

END = date(2026, 10, 31)
PRODUCTS = load_settings("local").products
EXPECTED_TYPES = {
    CUSTOMERS: {"customer_id": "string", "birth_date": "date", "region": "string", "segment": "string",
                "income_band": "string", "joined_date": "date"},
    TRANSACTIONS: {"transaction_id": "bigint", "customer_id": "string", "transaction_ts": "timestamp",
                   "amount": "double", "category": "string", "channel": "string"},
    HOLDINGS: {"holding_id": "string", "customer_id": "string", "product_code": "string", "opened_date": "date",
               "closed_date": "date"},
    RESPONSES: {"response_id": "string", "campaign_id": "string", "customer_id": "string", "product_code": "string",
                "contact_date": "date", "channel": "string", "responded": "boolean", "response_date": "date"},
}
KEYS = {CUSTOMERS: "customer_id", TRANSACTIONS: "transaction_id", HOLDINGS: "holding_id", RESPONSES: "response_id"}


def _seed(aiml_home, customers: int, seed: int = 7, log=None) -> tuple[LocalCatalog, dict[str, int]]:
    catalog = LocalCatalog(home=str(aiml_home))
    counts = seed_edp(catalog, customers=customers, seed=seed, end_date=END, products=PRODUCTS,
                      log=log or (lambda message: None))
    return catalog, counts


def _arrow(catalog: LocalCatalog, name: str) -> pa.Table:
    return DeltaTable(catalog.location(name)).to_pyarrow_table().sort_by(KEYS[name])


def test_the_products_contract_is_defined_once_with_described_columns():
    assert list(EDP_PRODUCTS) == [CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES]
    assert {name: p.layer for name, p in EDP_PRODUCTS.items()} == {
        CUSTOMERS: "fdp", TRANSACTIONS: "fdp", HOLDINGS: "cdp", RESPONSES: "bdp"}
    for name, product in EDP_PRODUCTS.items():
        assert product.schema.names == list(EXPECTED_TYPES[name]), name
        assert set(product.column_descriptions) == set(product.schema.names), name
        assert all(product.column_descriptions.values()) and "\n" not in product.description


def test_seeded_products_are_registered_readable_and_consistent(spark, aiml_home):
    catalog, counts = _seed(aiml_home, customers=1500)

    assert catalog.names() == sorted(EDP_PRODUCTS)
    frames = {}
    for name, product in EDP_PRODUCTS.items():
        entry = catalog.entry(name)
        assert entry["owner"] == "EDP" and entry["comment"] == product.description
        assert entry["properties"]["edp_layer"] == product.layer
        assert entry["properties"]["seed"] == 7 and entry["properties"]["rows"] == counts[name]
        assert DeltaTable(catalog.location(name)).version() == 0  # one commit per table
        frames[name] = catalog.read(spark, name)
        assert dict(frames[name].dtypes) == EXPECTED_TYPES[name], name
    customers, transactions, holdings, responses = (frames[n] for n in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES))

    # volumes, and keys unique and not null (one Spark job for the four tables)
    assert counts[CUSTOMERS] == 1500
    assert 35 <= counts[TRANSACTIONS] / 1500 <= 65
    assert counts[HOLDINGS] > 1500 and counts[RESPONSES] > 1500
    keys = None
    for name, df in frames.items():
        part = df.select(F.lit(name).alias("table"), F.col(KEYS[name]).cast("string").alias("key"))
        keys = part if keys is None else keys.unionByName(part)
    stats = keys.groupBy("table").agg(F.count("key").alias("n"), F.countDistinct("key").alias("distinct")).collect()
    assert {r["table"]: (r["n"], r["distinct"]) for r in stats} == {n: (c, c) for n, c in counts.items()}

    # every foreign key resolves
    references = (transactions.select("customer_id").unionByName(holdings.select("customer_id"))
                  .unionByName(responses.select("customer_id")).distinct())
    assert references.join(customers, "customer_id", "left_anti").count() == 0
    products = holdings.select("product_code").unionByName(responses.select("product_code")).distinct().collect()
    assert {r[0] for r in products} == set(PRODUCTS)

    # nothing before the customer joined or after the end date; closures and responses after what they close
    joined = customers.select("customer_id", "joined_date")
    end, after_end = F.lit(END), F.lit(END + timedelta(days=1)).cast("timestamp")
    violations = [
        customers.where((F.col("joined_date") > end) | (F.months_between("joined_date", "birth_date") < 12 * 18)),
        transactions.join(joined, "customer_id").where(
            (F.col("transaction_ts") < F.col("joined_date").cast("timestamp")) | (F.col("transaction_ts") >= after_end)
            | (F.col("amount") <= 0)),
        holdings.join(joined, "customer_id").where(
            (F.col("opened_date") < F.col("joined_date")) | (F.col("opened_date") > end)
            | (F.col("closed_date") <= F.col("opened_date")) | (F.col("closed_date") > end)),
        responses.join(joined, "customer_id").where(
            (F.col("contact_date") < F.col("joined_date")) | (F.col("contact_date") > end)
            | (F.col("response_date") < F.col("contact_date")) | (F.col("response_date") > end)
            | (F.col("responded") != F.col("response_date").isNotNull())),
    ]
    bad = violations[0].select("customer_id")
    for df in violations[1:]:
        bad = bad.unionByName(df.select("customer_id"))
    assert bad.count() == 0
    # the transactions are UTC microseconds in the files
    files = DeltaTable(catalog.location(TRANSACTIONS)).to_pyarrow_dataset().schema
    assert files.field("transaction_ts").type == pa.timestamp("us", tz="UTC")


def test_holdings_campaigns_and_spend_are_plausible(aiml_home):
    catalog, _ = _seed(aiml_home, customers=2000)
    holdings = DeltaTable(catalog.location(HOLDINGS)).to_pandas()
    responses = DeltaTable(catalog.location(RESPONSES)).to_pandas()
    for df, columns in ((holdings, ["opened_date", "closed_date"]), (responses, ["contact_date", "response_date"])):
        for column in columns:
            df[column] = pd.to_datetime(df[column])
    tx = DeltaTable(catalog.location(TRANSACTIONS)).to_pandas(columns=["transaction_ts", "category", "amount"])

    # a customer never holds two of the same product at once
    h = holdings.sort_values(["customer_id", "product_code", "opened_date"])
    same = h.customer_id.eq(h.customer_id.shift()) & h.product_code.eq(h.product_code.shift())
    previous_closed = h.closed_date.shift()
    assert (previous_closed[same].notna() & (h.opened_date[same] >= previous_closed[same])).all()
    # openings happen during the history window, and some holdings date from before it
    window_start = pd.Timestamp("2023-11-01")
    assert (holdings.opened_date >= window_start).mean() > 0.3
    assert (holdings.opened_date < window_start).mean() > 0.2

    # holdings taken up after a campaign response cluster shortly after it
    r = responses[responses.responded].merge(holdings, on=["customer_id", "product_code"])
    lag = (r.opened_date - r.response_date).dt.days
    converted = r[(lag >= 0) & (lag <= 21)].response_id.nunique() / responses.responded.sum()
    assert converted > 0.5
    n = responses[~responses.responded].merge(holdings, on=["customer_id", "product_code"])
    lag = (n.opened_date - n.contact_date).dt.days
    assert n[(lag >= 0) & (lag <= 21)].response_id.nunique() / (~responses.responded).sum() < 0.1
    assert 0.03 < responses.responded.mean() < 0.4

    # seasonality: a December peak, summer travel, weekend dining
    ts = tx.transaction_ts.dt
    by_month = tx.groupby(ts.month).size()
    assert by_month[12] > 1.1 * by_month.drop(12).mean()
    travel = tx[tx.category == "travel"].groupby(ts.month).size()
    assert travel[[7, 8]].mean() > 1.4 * travel[[1, 2, 3, 10, 11]].mean()
    dining = tx[tx.category == "dining"].groupby(ts.dayofweek).size()
    assert dining[[4, 5]].mean() > 1.3 * dining[[0, 1, 2]].mean()
    assert tx.groupby("category").amount.median()["travel"] > 3 * tx.groupby("category").amount.median()["groceries"]


def test_one_seed_gives_identical_data_and_another_seed_different_data(aiml_home):
    catalog, first = _seed(aiml_home, customers=600, seed=11)
    before = {name: _arrow(catalog, name) for name in EDP_PRODUCTS}
    catalog, again = _seed(aiml_home, customers=600, seed=11)
    assert again == first
    for name in EDP_PRODUCTS:
        assert DeltaTable(catalog.location(name)).version() == 1  # overwritten: a new version, no duplicates
        assert _arrow(catalog, name).equals(before[name]), name
    _seed(aiml_home, customers=600, seed=12)
    for name in EDP_PRODUCTS:
        other = _arrow(catalog, name)
        assert not other.equals(before[name]), name
    assert catalog.entry(CUSTOMERS)["properties"]["seed"] == 12


def test_generation_is_chunked_lazily_with_bounded_batches(monkeypatch, aiml_home):
    # chunks are independent of the total: the first chunk is the same whatever comes after it
    few = next(generate_chunks(500, seed=3, products=PRODUCTS, chunk_size=200, log=lambda m: None))
    many = next(generate_chunks(5_000, seed=3, products=PRODUCTS, chunk_size=200, log=lambda m: None))
    for name in EDP_PRODUCTS:
        assert few.tables[name].equals(many.tables[name]), name

    # seed_edp streams: chunk k is generated only after the batches of chunk k - 1 went to the writer, and no
    # batch holds more than one chunk's customers or more than BATCH_ROWS rows
    monkeypatch.setattr(edp_seed, "CHUNK_CUSTOMERS", 250)
    real_write = edp_seed.write_deltalake
    messages: list[str] = []
    seen: dict[str, list[tuple[int, int, int]]] = {}

    def chunks_so_far() -> int:
        return sum(m.startswith("EDP seed chunk") for m in messages)

    def spying_write(location, reader, **kwargs):
        name = kwargs["commit_properties"].custom_metadata["table"]
        log = seen.setdefault(name, [])

        def batches():
            for batch in reader:
                log.append((chunks_so_far(), batch.num_rows, len(pc.unique(batch.column("customer_id")))))
                yield batch

        return real_write(location, pa.RecordBatchReader.from_batches(reader.schema, batches()), **kwargs)

    monkeypatch.setattr(edp_seed, "write_deltalake", spying_write)
    _, counts = _seed(aiml_home, customers=1_000, log=messages.append)
    assert chunks_so_far() == 4
    tx = seen[TRANSACTIONS]
    assert [chunk for chunk, _, _ in tx] == sorted(chunk for chunk, _, _ in tx)
    assert tx[0][0] == 1 and len({chunk for chunk, _, _ in tx}) == 4
    assert sum(rows for _, rows, _ in tx) == counts[TRANSACTIONS]
    for name, batches in seen.items():
        assert all(rows <= BATCH_ROWS and customers <= 250 for _, rows, customers in batches), name


# ---- the signal the propensity models depend on ------------------------------------------------------------


def _features(cu, tx, ho, rs, snapshot: pd.Timestamp) -> pd.DataFrame:
    """Point-in-time features as of the snapshot (events on or before it) and 30-day take-up labels after it."""
    nxt = snapshot + pd.Timedelta(days=1)
    c = cu[cu.joined_date <= snapshot].set_index("customer_id")
    f = pd.DataFrame(index=c.index)
    f["age"] = (snapshot - c.birth_date).dt.days / 365.25
    f["tenure_days"] = (snapshot - c.joined_date).dt.days
    for segment in ("affluent", "premier", "small_business", "student"):
        f[f"segment_{segment}"] = (c.segment == segment).astype(int)
    past = tx[tx.ts < nxt]
    for days in (30, 90, 365):
        window = past[past.ts >= nxt - pd.Timedelta(days=days)].groupby("customer_id").amount
        f[f"count_{days}d"] = window.size().reindex(f.index, fill_value=0)
        f[f"spend_{days}d"] = window.sum().reindex(f.index, fill_value=0.0)
    f["recency_days"] = (nxt - past.groupby("customer_id").ts.max()).dt.days.reindex(f.index).fillna(3650)
    held = ho[(ho.opened_date <= snapshot) & (ho.closed_date.isna() | (ho.closed_date > snapshot))]
    taken = ho[(ho.opened_date > snapshot) & (ho.opened_date <= snapshot + pd.Timedelta(days=30))]
    contacts = rs[rs.contact_date <= snapshot]
    for p in PRODUCTS:
        f[f"holds_{p}"] = f.index.isin(held.customer_id[held.product_code == p]).astype(int)
        last = contacts[contacts.product_code == p].groupby("customer_id").contact_date.max()
        f[f"days_since_contact_{p}"] = (snapshot - last).dt.days.reindex(f.index).fillna(3650)
        f[f"label_{p}"] = f.index.isin(taken.customer_id[taken.product_code == p]).astype(int)
    return f


def test_take_up_is_predictable_from_point_in_time_features(aiml_home):
    catalog, _ = _seed(aiml_home, customers=3000)
    read = {name: DeltaTable(catalog.location(name)).to_pandas() for name in EDP_PRODUCTS}
    cu, tx, ho, rs = (read[n] for n in (CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES))
    for df, columns in ((cu, ["birth_date", "joined_date"]), (ho, ["opened_date", "closed_date"]),
                        (rs, ["contact_date"])):
        for column in columns:
            df[column] = pd.to_datetime(df[column])
    tx["ts"] = tx.transaction_ts.dt.tz_convert(None)

    snapshots = pd.date_range("2024-10-31", "2026-09-30", freq="ME")  # train on the earlier 12, test on the later
    frames = [_features(cu, tx, ho, rs, s) for s in snapshots]
    train, test = pd.concat(frames[:12]), pd.concat(frames[12:])
    columns = [c for c in train.columns if not c.startswith("label_")]
    aucs, take_up = {}, {}
    for p in PRODUCTS:
        tr, te = train[train[f"holds_{p}"] == 0], test[test[f"holds_{p}"] == 0]  # customers who could take it
        take_up[p] = tr[f"label_{p}"].mean()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(np.log1p(tr[columns]), tr[f"label_{p}"])
        aucs[p] = roc_auc_score(te[f"label_{p}"], model.predict_proba(np.log1p(te[columns]))[:, 1])
        assert te[f"label_{p}"].sum() >= 50, p
    assert all(0.003 <= rate <= 0.05 for rate in take_up.values()), take_up
    assert all(auc > 0.6 for auc in aucs.values()), aucs


def test_seed_edp_seeds_the_products_the_settings_then_name(aiml_home, monkeypatch):
    """`aiml seed-edp --products N`: the named products, then generated codes, each with its own take-up rate;
    the settings of the same process (run-local's) name exactly the seeded products; the env file is untouched."""
    monkeypatch.setenv(PRODUCTS_ENV_VAR, "")  # unset, and restored after the command sets it
    env_file = (RESOURCES_DIR / "local.yaml").read_text()
    assert main(["seed-edp", "--products", "9", "--customers", "400", "--end-date", END.isoformat()]) == 0

    products = load_settings().products
    assert products == [*PRODUCTS, "product_07", "product_08", "product_09"]
    catalog = LocalCatalog(home=str(aiml_home))
    held = set(DeltaTable(catalog.location(HOLDINGS)).to_pyarrow_table()["product_code"].to_pylist())
    assert held == set(products)
    assert catalog.entry(HOLDINGS)["properties"]["products"] == ",".join(products)
    assert (RESOURCES_DIR / "local.yaml").read_text() == env_file
    # at NBA 2.0's size every generated product still has a take-up rate of its own
    generated = product_codes(PRODUCTS, 49)[len(PRODUCTS):]
    assert len({edp_seed.propensity(code).base for code in generated}) == len(generated) == 43

    with pytest.raises(SystemExit, match="--products 12 disagrees with AIML_PRODUCTS=9"):
        main(["seed-edp", "--products", "12", "--customers", "400"])
