"""Shared fixtures: one SparkSession per test session; a fresh AIML home and Dagster instance per test."""

from __future__ import annotations

import os

import boto3
import pytest
from dagster import DagsterInstance
from moto import mock_aws

from aiml_assets.resources.spark import SparkResource
from aiml_assets.settings import load_settings
from aiml_assets_tests.local_environment import TEST_ERASURE_KEY

# every audit log the tests build, here and in the subprocesses they start, chains its events under this key
os.environ.setdefault("AIML_AUDIT_KEY", "test-audit-key-not-a-secret")


@pytest.fixture(scope="session")
def spark():
    # Small and in-process: Spark on 2 cores is slow to start, so every test shares this one session.
    session = SparkResource(master="local[2]", shuffle_partitions=2, driver_memory="2g").get_session()
    yield session
    session.stop()


@pytest.fixture
def aiml_home(tmp_path, monkeypatch):
    home = tmp_path / "aiml_home"
    home.mkdir()
    monkeypatch.setenv("AIML_HOME", str(home))
    monkeypatch.setenv("AIML_ENV", "local")
    monkeypatch.setenv("AIML_ERASURE_KEY", TEST_ERASURE_KEY)
    load_settings.cache_clear()
    yield home
    load_settings.cache_clear()


@pytest.fixture
def instance(tmp_path, monkeypatch):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with DagsterInstance.ephemeral(tempdir=str(dagster_home)) as inst:
        yield inst


@pytest.fixture(scope="session")
def seeded_edp(tmp_path_factory):
    """A small local EDP seeded once per test session; tests point their own catalogs at its tables."""
    from aiml_assets.edp.seed import seed_edp
    from aiml_assets.resources.catalog import LocalCatalog

    home = tmp_path_factory.mktemp("seeded_edp")
    catalog = LocalCatalog(home=str(home))
    seed_edp(catalog, customers=1500, seed=7, products=load_settings("local").products, log=lambda _: None)
    return {name: catalog.location(name) for name in catalog.names()}


@pytest.fixture
def local_edp(aiml_home, seeded_edp):
    """This test's own AIML home whose catalog names the session's seeded EDP tables."""
    from aiml_assets.resources.catalog import LocalCatalog

    catalog = LocalCatalog(home=str(aiml_home))
    for name, location in seeded_edp.items():
        catalog.register(name, location, owner="EDP")
    return catalog


@pytest.fixture
def s3(monkeypatch):
    """An S3 client on moto's in-process S3 (boto3 only: delta-rs needs the moto server of test_retention)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with mock_aws():
        yield boto3.client("s3", region_name="eu-west-2")
