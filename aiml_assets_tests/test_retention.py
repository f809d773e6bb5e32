"""Perishable storage: the retention purge on local folders and on a versioned S3 bucket (a moto server, which
delta-rs reaches over HTTP like real S3), with an injected clock: moto never expires anything by itself. Tables are
written with per-file statistics (delta-rs's writer and the local one record them, like Databricks'), and "nothing
left" is checked in every object version: data, log entries, checkpoints and the statistics in them."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from aiml_assets.governance.retention import cutoff, past_retention, purge, scrub_history
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.storage import LocalStorage, S3Storage
from aiml_assets.resources.tables import FIRST_WRITTEN, DeltaRsTables
from aiml_assets.sql_identifiers import UnsafeSqlValue

RETENTION = 90
TABLE = "customer_features"
OLD, NEW = ["Cold00001", "Cold00002"], ["Cnew00003"]  # ids no file name or uuid can hold by chance


@pytest.fixture(scope="module")
def moto_url():
    # its own process: some delta-rs calls hold the GIL while they wait for the server, so a server thread in this
    # process could never answer them
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait()


@pytest.fixture(params=["local", "s3"])
def bucket(request, tmp_path, monkeypatch):
    """The lab bucket: a folder, or a versioned bucket on the moto server."""
    if request.param == "local":
        return LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab"})
    url = request.getfixturevalue("moto_url")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-2",
                        "AWS_DEFAULT_REGION": "eu-west-2", "AWS_ENDPOINT_URL": url, "AWS_ALLOW_HTTP": "true",
                        "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}.items():
        monkeypatch.setenv(name, value)
    name = f"buk-aiml-lab-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", region_name="eu-west-2", endpoint_url=url)
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return S3Storage(buckets={"lab": f"s3://{name}"}, endpoint_url=url)


def write_snapshot(storage, snapshot: str, customers: list[str]):
    rows = pa.table({"customer_id": customers, "snapshot_date": [snapshot] * len(customers)})
    location = storage.uri("lab", TABLE)
    write_deltalake(location, rows, partition_by=["snapshot_date"], mode="overwrite",
                    predicate=f"snapshot_date = '{snapshot}'" if DeltaTable.is_deltatable(location) else None)


def version_bytes(storage, version) -> bytes:
    if isinstance(storage, S3Storage):
        bucket, key = storage._split("lab", version.key)
        return storage.client().get_object(Bucket=bucket, Key=key, VersionId=version.version_id)["Body"].read()
    return Path(storage.uri("lab", version.key)).read_bytes()


def naming(storage, ids: list[str]) -> dict[tuple[str, str | None], set[str]]:
    """Every object version in the bucket naming any of `ids`: in its bytes, or in a Parquet file's rows (a
    checkpoint's statistics included) or footer statistics."""
    found = {}
    for version in storage.versions("lab"):
        if version.delete_marker:
            continue
        data = version_bytes(storage, version)
        text = data.decode("latin-1")
        if version.key.endswith(".parquet"):
            text += json.dumps(pq.read_table(pa.BufferReader(data)).to_pylist(), default=str)
            text += str(pq.ParquetFile(pa.BufferReader(data)).metadata.to_dict())
        if hits := {c for c in ids if c in text}:
            found[(version.key, version.version_id)] = hits
    return found


def two_ages(storage):
    """An old snapshot, an overwritten and a deleted stray object; then, a clear second later, a fresh snapshot and
    object. Returns the moment between them: purging as of that moment + retention makes only the first lot old."""
    write_snapshot(storage, "2024-11-01", OLD)
    storage.put("lab", "exports/old.csv", b"v1")
    storage.put("lab", "exports/old.csv", b"v2")  # on S3: v1 is now a noncurrent version
    storage.put("lab", "exports/deleted.csv", b"x")
    storage.delete("lab", "exports/deleted.csv")  # on S3: a delete marker over the data
    time.sleep(1.2)  # S3 stamps LastModified to the second
    between = datetime.now(timezone.utc)
    time.sleep(1.2)
    write_snapshot(storage, "2024-12-01", NEW)
    storage.put("lab", "exports/new.csv", b"fresh")
    return between


def run_purge(storage, now, catalog=None, name=None):
    return purge(storage, DeltaRsTables(write_roots=[storage.root("lab")]), catalog, role="lab", retention_days=RETENTION, now=now, run_id="run-1",
                 name_of=lambda key: name, log=lambda _: None)


def test_the_purge_removes_data_past_retention_with_its_versions_and_history(bucket):
    between = two_ages(bucket)
    now = between + timedelta(days=RETENTION)
    limit = cutoff(now, RETENTION)
    location = bucket.uri("lab", TABLE)
    assert past_retention(bucket, "lab", limit)  # without the purge, old data is there (the proof would fail)
    if isinstance(bucket, S3Storage):  # what a plain deletion leaves on a versioned bucket
        assert {"exports/old.csv", "exports/deleted.csv"} <= {v.key for v in bucket.versions("lab") if not v.is_latest}
        assert any(v.delete_marker for v in bucket.versions("lab", "exports/deleted.csv"))

    DeltaRsTables(write_roots=[bucket.root("lab")]).checkpoint(location)  # the day before's: it holds OLD's stats
    assert naming(bucket, OLD)

    report = run_purge(bucket, now)

    assert report.partitions_deleted == {TABLE: ["snapshot_date=2024-11-01"]}
    assert DeltaTable(location).to_pyarrow_table().column("customer_id").to_pylist() == NEW
    assert naming(bucket, OLD) == {}  # no version of any object, no checkpoint or statistic of the log
    with pytest.raises(Exception, match="(?i)not found|no such file|no files in log"):  # no time travel back to the old snapshot
        DeltaTable(location, version=0).to_pyarrow_table()
    assert past_retention(bucket, "lab", limit) == []
    keys = {v.key for v in bucket.versions("lab")}
    assert {"exports/new.csv"} == {k for k in keys if k.startswith("exports/")}
    assert not any(v.delete_marker for v in bucket.versions("lab") if v.key.startswith("exports/"))


def test_the_purge_keeps_everything_within_retention(bucket):
    between = two_ages(bucket)
    before = sorted((v.key, v.version_id) for v in bucket.versions("lab"))
    report = run_purge(bucket, between + timedelta(days=RETENTION - 1))
    assert (report.partitions_deleted, report.tables_removed, report.versions_destroyed) == ({}, [], 0)
    after = sorted((v.key, v.version_id) for v in bucket.versions("lab"))
    assert set(before) <= set(after)  # nothing destroyed; the day's first-write record and checkpoint added
    assert all("/_delta_log/" in key for key, _ in set(after) - set(before))
    assert DeltaTable(bucket.uri("lab", TABLE), version=0).to_pyarrow_table().num_rows == 2  # time travel intact


def test_a_table_wholly_past_retention_goes_with_its_catalog_name(bucket, tmp_path):
    two_ages(bucket)
    catalog = LocalCatalog(home=str(tmp_path / "catalog_home"))
    catalog.register("aiml_local.lab.customer_features", bucket.uri("lab", TABLE), owner="aiml-engineers")
    now = datetime.now(timezone.utc) + timedelta(days=RETENTION, minutes=1)

    report = run_purge(bucket, now, catalog, "aiml_local.lab.customer_features")

    assert report.tables_removed == [TABLE]
    assert not catalog.exists("aiml_local.lab.customer_features")
    assert list(bucket.versions("lab")) == []


def test_an_erasure_leaves_nothing_in_any_version_and_does_not_wait_for_the_lifecycle_rule(bucket):
    tables, location = DeltaRsTables(write_roots=[bucket.root("lab")]), bucket.uri("lab", TABLE)
    write_snapshot(bucket, "2024-11-01", OLD + NEW)
    tables.checkpoint(location)
    write_snapshot(bucket, "2024-11-01", NEW)  # OLD erased: the rewrite, as the erasure job does it
    tables.vacuum(location, retain_hours=0)
    assert set(naming(bucket, OLD)) >= {(v.key, v.version_id) for v in bucket.versions("lab", f"{TABLE}/_delta_log/")
                                        if v.key.endswith("00000000000000000000.json")}  # the statistics name them

    scrub_history(bucket, tables, "lab", TABLE)

    assert naming(bucket, OLD) == {}
    versions = list(bucket.versions("lab", f"{TABLE}/"))
    assert all(v.is_latest and not v.delete_marker for v in versions)
    assert len([v for v in versions if v.key.endswith(".parquet") and "_delta_log" not in v.key]) == 1
    write_snapshot(bucket, "2024-12-01", ["Cnew00004"])  # the scrubbed table takes writes and reads as before
    assert sorted(DeltaTable(location).to_pyarrow_table().column("customer_id").to_pylist()) == NEW + ["Cnew00004"]


def test_a_rewrite_does_not_restart_the_clock_and_a_purged_partition_starts_afresh(spark, tmp_path):
    storage = LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab"})
    tables, location = DeltaRsTables(write_roots=[storage.root("lab")]), storage.uri("lab", TABLE)

    def write(snapshot, ids):  # the local writer, as the lab assets and the erasure job write
        rows = spark.createDataFrame([(c, snapshot) for c in ids], "customer_id string, snapshot_date string")
        tables.write(rows, location, run_id="run", partition_by=["snapshot_date"], replace={"snapshot_date": snapshot})

    write("2024-11-01", OLD)
    assert run_purge(storage, datetime.now(timezone.utc)).partitions_deleted == {}  # the day's purge records it
    time.sleep(1.2)
    between = datetime.now(timezone.utc)
    time.sleep(1.2)
    write("2024-11-01", OLD)  # re-materialized (or erased): new files of data first written before `between`
    write("2024-12-01", NEW)

    report = run_purge(storage, between + timedelta(days=RETENTION))

    assert report.partitions_deleted == {TABLE: ["snapshot_date=2024-11-01"]}
    assert naming(storage, OLD) == {}
    assert "snapshot_date=2024-11-01" not in tables.first_written(location)  # forgotten with its data
    write("2024-11-01", OLD)  # written again: its clock starts afresh
    assert run_purge(storage, between + timedelta(days=RETENTION)).partitions_deleted == {}
    assert tables.first_written(location)["snapshot_date=2024-11-01"] > between.timestamp() * 1000


def test_a_forged_first_write_record_cannot_keep_old_data(tmp_path):
    storage = LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab"})
    write_snapshot(storage, "2024-11-01", OLD)
    location = storage.uri("lab", TABLE)
    future = int((datetime.now(timezone.utc) + timedelta(days=3650)).timestamp() * 1000)
    DeltaTable(location).alter.set_table_properties({FIRST_WRITTEN: json.dumps({"snapshot_date=2024-11-01": future})},
                                                    raise_if_not_exists=False)
    for version in storage.versions("lab"):  # the data file past retention, the log (and its forged record) not
        if "_delta_log" not in version.key:
            aged = (datetime.now(timezone.utc) - timedelta(days=RETENTION + 1)).timestamp()
            os.utime(storage.uri("lab", version.key), (aged, aged))
    write_snapshot(storage, "2024-12-01", NEW)

    assert run_purge(storage, datetime.now(timezone.utc)).partitions_deleted == {TABLE: ["snapshot_date=2024-11-01"]}
    assert naming(storage, OLD) == {}


def test_local_age_is_the_files_write_time(tmp_path):
    storage = LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab"})
    storage.put("lab", "exports/aged.csv", b"x")
    aged = (datetime.now(timezone.utc) - timedelta(days=RETENTION + 1)).timestamp()
    os.utime(storage.uri("lab", "exports/aged.csv"), (aged, aged))
    assert [v.key for v in past_retention(storage, "lab", cutoff(datetime.now(timezone.utc), RETENTION))] == [
        "exports/aged.csv"]
    run_purge(storage, datetime.now(timezone.utc))
    assert list(storage.versions("lab")) == []


def hostile_log(storage, directory: str) -> str:
    """A snapshot whose data file is under `directory`, as its Delta log says (a log is only data in the bucket:
    anyone who can write there can write one); returns the table's location."""
    write_snapshot(storage, "2024-11-01", OLD[:1])
    location = storage.uri("lab", TABLE)
    Path(location, "snapshot_date=2024-11-01").rename(Path(location, directory))
    commit = next(Path(location, "_delta_log").glob("*.json"))
    hostile = json.dumps(f"{directory}/")[:-1]  # the opening quote and the directory, JSON-escaped
    commit.write_text(commit.read_text().replace('"path":"snapshot_date=2024-11-01/', f'"path":{hostile}'))
    return location


@pytest.mark.parametrize(("directory", "refusal"), [
    ("snapshot_date=2024-11-01' OR '1'='1", r"partition snapshot_date: .* is not an ISO date: expected YYYY-MM-DD"),
    ("snapshot_date=2024-11-01\\' OR true --", r"partition snapshot_date: .* is not an ISO date"),
    ("snapshot_date=31-11-2024", r"partition snapshot_date: '31-11-2024' is not an ISO date"),
    ("1=1) OR (snapshot_date=2024-11-01", r"partition column: '1' is not a plain SQL identifier"),
    ("snapshot_date`=2024-11-01", r"partition column: 'snapshot_date`' is not a plain SQL identifier"),
    ("customer_id=c1", r"partition column 'customer_id' is not a partition column of the asset tables "
                       r"\(snapshot_date\)"),
])
def test_a_hostile_partition_in_the_delta_log_is_refused_before_any_delete(tmp_path, directory, refusal):
    storage = LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab"})
    location = hostile_log(storage, directory)
    before = sorted((v.key, v.version_id) for v in storage.versions("lab") if "_delta_log" not in v.key)
    aged = (datetime.now(timezone.utc) - timedelta(days=RETENTION + 1)).timestamp()
    for version in storage.versions("lab"):  # the data file past retention, its log (just rewritten) within it
        if "_delta_log" not in version.key:
            os.utime(storage.uri("lab", version.key), (aged, aged))

    with pytest.raises(UnsafeSqlValue, match=rf"^{TABLE}: data file .* in the Delta log: {refusal}"):
        run_purge(storage, datetime.now(timezone.utc))

    assert DeltaTable(location).version() == 0  # no DELETE committed
    assert sorted((v.key, v.version_id) for v in storage.versions("lab") if "_delta_log" not in v.key) == before
