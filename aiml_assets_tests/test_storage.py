"""The environment's buckets: local folders and S3 (real S3 semantics through moto) behave alike; what the local
table writer leaves in them."""

from datetime import date, datetime, timezone

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from aiml_assets.resources.storage import LocalStorage, S3Storage, StorageError
from aiml_assets.resources.tables import DeltaRsTables

BUCKETS = {"lab": "s3://buk-aiml-lab", "publication": "s3://buk-aiml-prod/cdp"}


@pytest.fixture
def s3_storage(s3):
    for bucket in ("buk-aiml-lab", "buk-aiml-prod", "buk-aiml-uat"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return S3Storage(buckets=BUCKETS), s3


@pytest.fixture
def local_storage(tmp_path):
    return LocalStorage(home=str(tmp_path), buckets={"lab": "buckets/lab", "publication": "buckets/prod/cdp"})


@pytest.fixture(params=["local", "s3"])
def storage(request):
    if request.param == "local":
        return request.getfixturevalue("local_storage")
    return request.getfixturevalue("s3_storage")[0]


def test_put_get_list_delete_round_trip(storage):
    storage.put("lab", "features/snapshot=2024-01-31/part-0.parquet", b"abc")
    storage.put("lab", "features/snapshot=2024-02-29/part-0.parquet", b"defg")
    storage.put("lab", "training/part-0.parquet", b"x")
    assert storage.get("lab", "features/snapshot=2024-02-29/part-0.parquet") == b"defg"
    listed = {o.key: o.size for o in storage.list("lab", "features/")}
    assert listed == {"features/snapshot=2024-01-31/part-0.parquet": 3, "features/snapshot=2024-02-29/part-0.parquet": 4}
    storage.delete("lab", "features/snapshot=2024-01-31/part-0.parquet")
    assert [o.key for o in storage.list("lab", "features/")] == ["features/snapshot=2024-02-29/part-0.parquet"]


def test_overwrite_replaces_whole_object(storage):
    storage.put("publication", "v1/manifest.json", b"old contents")
    storage.put("publication", "v1/manifest.json", b"new")
    assert storage.get("publication", "v1/manifest.json") == b"new"


def test_bucket_roles_outside_the_environment_are_refused(storage):
    with pytest.raises(StorageError, match=r"no 'scoring' bucket; it has \['lab', 'publication'\]"):
        storage.put("scoring", "x", b"1")


@pytest.mark.parametrize("key", ["../other-bucket/x", "/etc/passwd", ""])
def test_keys_cannot_escape_the_bucket(storage, key):
    with pytest.raises(StorageError, match="expected a relative key inside the bucket"):
        storage.put("lab", key, b"1")


def test_s3_objects_land_in_the_configured_bucket_and_prefix(s3_storage):
    storage, s3 = s3_storage
    uri = storage.put("publication", "nba_propensity/v3/part-0.parquet", b"scores")
    assert uri == "s3://buk-aiml-prod/cdp/nba_propensity/v3/part-0.parquet"
    body = s3.get_object(Bucket="buk-aiml-prod", Key="cdp/nba_propensity/v3/part-0.parquet")["Body"].read()
    assert body == b"scores"
    assert s3.list_objects_v2(Bucket="buk-aiml-uat").get("KeyCount") == 0
    assert [o.key for o in storage.list("publication")] == ["nba_propensity/v3/part-0.parquet"]


def test_local_buckets_live_under_the_home(local_storage, tmp_path):
    path = local_storage.put("lab", "a/b.bin", b"1")
    assert path == str(tmp_path / "buckets" / "lab" / "a" / "b.bin")
    assert not list((tmp_path / "buckets" / "lab" / "a").glob("tmp*"))  # atomic write left no temp file


def test_the_local_writer_records_per_file_statistics_like_databricks(spark, tmp_path):
    """What a stats leak needs to be seen locally: each file's row count, bounds and null counts in the Delta log."""
    location = str(tmp_path / "lab" / "customer_features")
    rows = [("C00000002", 3, 1.5, date(2024, 1, 2), datetime(2024, 1, 2, 9, tzinfo=timezone.utc), "2024-11-01"),
            ("C00000009", None, -2.0, date(2024, 3, 1), datetime(2024, 3, 1, 9, tzinfo=timezone.utc), "2024-11-01")]
    df = spark.createDataFrame(rows, "customer_id string, visits int, spend double, joined date, seen timestamp, "
                                     "snapshot_date string").coalesce(1)
    DeltaRsTables(write_roots=[str(tmp_path / "lab")]).write(df, location, run_id="r", partition_by=["snapshot_date"])

    [stats] = pa.table(DeltaTable(location).get_add_actions(flatten=True)).to_pylist()
    assert stats["num_records"] == 2
    assert (stats["min.customer_id"], stats["max.customer_id"]) == ("C00000002", "C00000009")
    assert (stats["min.visits"], stats["null_count.visits"], stats["max.spend"]) == (3, 1, 1.5)
    assert str(stats["min.joined"]) == "2024-01-02"
    # readers skip files by them: a filter outside a file's bounds reads nothing of it
    assert DeltaTable(location).to_pyarrow_table(filters=[("customer_id", "=", "C00000005")]).num_rows == 0
    assert DeltaTable(location).to_pyarrow_table(filters=[("customer_id", "=", "C00000009")]).num_rows == 1
