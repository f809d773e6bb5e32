"""No data download: writes only under the environment's own buckets, no bucket shared between environments, and no
lab data upstream of prod inference or the CDP except the model binaries promoted through Nexus."""

import pytest
from dagster import AssetKey, DagsterEventType, Definitions, asset, define_asset_job, execute_job, reconstructable

from aiml_assets.definitions import build_definitions, executor_for
from aiml_assets.resources.egress import EgressRefused, check_lineage, check_location
from aiml_assets.models.assets import BINARY_KEY
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import ENVIRONMENTS, load_settings

REMOTE = ("lab", "uat", "prod")


def own_buckets(env: str) -> list[str]:
    return list(load_settings(env).storage.buckets.values())


@pytest.mark.parametrize("env", REMOTE)
def test_remote_tables_write_only_under_their_own_buckets(env, aiml_home):
    tables = build_resources(load_settings(env))["tables"]
    for bucket in own_buckets(env):
        assert tables._writable(f"{bucket}/customer_features") == f"{bucket}/customer_features"
    others = [b for other in REMOTE if other != env for b in own_buckets(other)]
    for location in [f"{b}/customer_features" for b in others] + ["/tmp/export", "/dbfs/tmp/x", "file:///tmp/x",
                                                                  "dbfs:/tmp/x", f"{own_buckets(env)[0]}/../other/x",
                                                                  f"{own_buckets(env)[0]}-copy/x"]:
        with pytest.raises(EgressRefused, match="outside this environment's buckets|not an s3:|'..'"):
            tables.write(None, location, run_id="r")  # refused before any data is touched
        with pytest.raises(EgressRefused):
            tables.vacuum(location, retain_hours=0)


def test_local_tables_write_only_under_the_aiml_home_buckets(aiml_home, tmp_path):
    tables = build_resources(load_settings("local"))["tables"]
    assert tables._writable(str(aiml_home / "buckets" / "lab" / "customer_features"))
    for location in [str(tmp_path / "elsewhere"), str(aiml_home / "buckets" / "lab" / ".." / ".." / "x"),
                     "s3://buk-aiml-lab/x", "relative/path"]:
        with pytest.raises(EgressRefused):
            tables.delete_partitions(location, [{"snapshot_date": "2026-11-01"}], run_id="r")


def test_tables_without_roots_write_nowhere(tmp_path):
    with pytest.raises(EgressRefused, match="none"):
        check_location(str(tmp_path / "x"), [])


def test_no_bucket_is_shared_between_environment_files():
    named = {env: {uri.removeprefix("s3://").split("/")[0] for uri in load_settings(env).storage.buckets.values()
                   if uri.startswith("s3://")} for env in ENVIRONMENTS}
    assert all(named[env] for env in REMOTE)
    for env in ENVIRONMENTS:
        for other in ENVIRONMENTS:
            assert env == other or not named[env] & named[other], (env, other)


@pytest.mark.parametrize(("env", "victim"), [("lab", "prod"), ("uat", "lab"), ("prod", "uat")])
def test_an_environment_naming_another_ones_bucket_is_refused(env, victim, aiml_home):
    settings = load_settings(env)
    stolen = next(iter(load_settings(victim).storage.buckets.values()))
    role = next(iter(settings.storage.buckets))
    storage = settings.storage.model_copy(update={"buckets": {**settings.storage.buckets, role: stolen}})
    with pytest.raises(EgressRefused, match=f"belongs to {victim}"):
        build_definitions(settings=settings.model_copy(update={"storage": storage}))


@asset(key=["lab", "customer_features"], group_name="lab_features")
def lab_features():
    return 1


def test_lab_data_feeding_prod_or_the_cdp_is_refused():
    for group in ("prod_inference", "uat_parallel_run", "cdp_publication"):
        @asset(key=["prod", "shortcut"], group_name=group, deps=[AssetKey(["lab", "customer_features"])])
        def shortcut():
            return 1

        with pytest.raises(EgressRefused, match="prod/shortcut .* is fed by lab data lab/customer_features"):
            check_lineage(Definitions(assets=[lab_features, shortcut]).resolve_asset_graph(), allowed=set())


@pytest.mark.parametrize("env", ["local", "uat", "prod"])
def test_the_real_graph_reaches_prod_from_the_lab_only_through_the_nexus_binary(env, aiml_home):
    graph = build_definitions(env).resolve_asset_graph()  # builds: the check passes with the binary allowed
    if env == "local":  # where lab and prod share one graph, the binary is the one edge the check lets through
        with pytest.raises(EgressRefused, match="fed by lab data models/"):
            check_lineage(graph, allowed=set())
    else:
        assert graph.get(BINARY_KEY).group_name == "model_versions"


@asset(required_resource_keys={"tables"})
def written(context) -> str:
    return context.resources.tables._writable("/tmp/anywhere")  # refused unless the roots were re-pointed


def lab_guarded_job():
    defs = Definitions(assets=[written], jobs=[define_asset_job("guarded", selection=[written])],
                       resources={"tables": build_resources(load_settings("lab"))["tables"]},
                       executor=executor_for(load_settings("local").model_copy(update={"environment": "lab"})))
    return defs.resolve_job_def("guarded")


def test_a_run_config_re_pointing_a_guarded_resource_is_refused_before_any_step(instance, aiml_home):
    override = {"resources": {"tables": {"config": {"write_roots": ["/"]}}}}
    result = execute_job(reconstructable(lab_guarded_job), instance=instance, run_config=override, raise_on_error=False)
    assert not result.success
    assert instance.get_records_for_run(result.run_id, of_type=DagsterEventType.STEP_START).records == []
    failure = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records[0]
    assert "its config sets resources (tables); a run may set only op config" in str(
        failure.event_log_entry.dagster_event.event_specific_data.error)


@pytest.mark.parametrize(("env", "name"), [("prod", "aiml_lab.lab.customer_features"),
                                           ("prod", "aiml_uat.inference.propensity_scores"),
                                           ("uat", "aiml_lab.lab.training_set"), ("lab", "aiml_prod.inference.x")])
def test_an_environment_reads_only_its_own_catalog_and_edp(env, name, aiml_home):
    catalog = build_resources(load_settings(env))["catalog"]
    with pytest.raises(EgressRefused, match=f"{name}: this environment may read only"):
        catalog.read(None, name)  # refused before any session is asked for
    with pytest.raises(EgressRefused):
        catalog.version(name)


@pytest.mark.parametrize(("env", "name"), [("lab", "edp.cdp.nba_propensity"), ("uat", "edp.cdp.nba_propensity"),
                                           ("prod", "edp.fdp.customers"), ("prod", "aiml_lab.lab.customer_features"),
                                           ("local", "edp.fdp.customers")])
def test_an_environment_writes_only_its_own_catalog_and_where_it_publishes(env, name, aiml_home):
    catalog = build_resources(load_settings(env))["catalog"]
    with pytest.raises(EgressRefused, match="may write only"):
        catalog.register(name, "s3://anywhere/x", owner="aiml-engineers")
    with pytest.raises(EgressRefused, match="may write only"):
        catalog.publish(name, "s3://anywhere/x", version_id="0" * 16, owner="o", comment="", properties={},
                        read_grants=[])
    with pytest.raises(EgressRefused, match="may write only"):
        catalog.drop(name)


def test_local_reads_and_writes_its_own_names(aiml_home, spark, tmp_path):
    catalog = build_resources(load_settings("local"))["catalog"]
    location = str(aiml_home / "buckets" / "lab" / "t")
    build_resources(load_settings("local"))["tables"].write(spark.range(3), location, run_id="r")
    catalog.register("aiml_local.lab.t", location, owner="aiml-engineers")
    assert catalog.read(spark, "aiml_local.lab.t").count() == 3
