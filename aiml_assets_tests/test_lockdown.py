"""UAT and prod lockdown, attacked the ways a person who can launch runs and type tags would, and the legitimate
launches: the daemon's real schedule and sensor ticks (Dagster's scheduler and sensor loops on a real instance, the
run executed as its run worker would), CI's signed launch under a change request approved by a loopback ServiceNow,
and an in-window break-glass grant. Runs go through the executor Dagster really uses (`execute_run`/`execute_job`)."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from dagster import (AssetKey, DagsterEventType, DagsterInstance, RunsFilter, build_schedule_context, execute_job,
                     instance_for_test, reconstructable)
from dagster._core.execution.api import execute_run
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.external import JobSubsetSelector
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._scheduler.scheduler import launch_scheduled_runs

from aiml_assets.definitions import SCORING_JOB, build_definitions
from aiml_assets.governance.change_management import ChangeRequestRefused
from aiml_assets.governance.ci_launch import REMOTE_WORKSPACE, launch, signed_tags
from aiml_assets.governance.launch_signature import SIGNATURE_TAG
from aiml_assets.governance.lockdown import run_config_refusal
from aiml_assets.settings import load_settings
from aiml_assets_tests import launch_probe
from aiml_assets_tests.launch_probe import CI, PROBE, probe_job
from aiml_assets_tests.servicenow_stub import PASSWORD, USERNAME, servicenow

KEY = "a-key-only-ci-and-the-code-server-hold"
RELEASE = "v1.4.2"


def _steps_started(instance, run_id) -> int:
    return len(instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_START).records)


def _failure(instance, run_id) -> str:
    failure = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return str(failure[0].event_log_entry.dagster_event.event_specific_data.error) if failure else ""


def _launch(instance, tags=None, run_config=None):
    result = execute_job(reconstructable(probe_job), instance=instance, tags=tags or {}, run_config=run_config,
                         raise_on_error=False)
    return result.run_id, result.success


def assert_refused(instance, run_id, success, *reasons):
    assert not success and _steps_started(instance, run_id) == 0
    failure = _failure(instance, run_id)
    assert "refused before any step ran" in failure and all(reason in failure for reason in reasons), failure
    assert any(e["run_id"] == run_id for e in PROBE["audit"].read("run_refused"))


def assert_ran(instance, run_id, success):
    assert success and _steps_started(instance, run_id) == 1, _failure(instance, run_id)


@pytest.fixture
def instance():
    # the run launcher only records the launch (the test then executes the run, as the run worker would)
    with instance_for_test(overrides={
        "run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }) as instance:
        yield instance


@pytest.fixture
def daemon(instance):
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=launch_probe.__file__, attribute="defs"),
                                         location_name="probe")
    with create_test_daemon_workspace_context(InProcessTestWorkspaceLoadTarget(origin), instance) as context:
        yield context


TICKING = {"dagster/schedule_name": "probe_schedule", "dagster/sensor_name": "probe_sensor"}


def _ticked_runs(instance, tag):
    return instance.get_runs(RunsFilter(tags={tag: TICKING[tag]}))


def _run_as_worker(instance, run) -> bool:
    return execute_run(reconstructable(probe_job), run, instance).success


def _created(instance, run_id: str, tags: dict):
    """A run created straight in the instance's storage, as whoever holds its credentials can."""
    return instance.create_run_for_job(probe_job(), run_id=run_id, tags=tags)


def test_the_daemons_ticks_run_and_their_re_executions_and_forgeries_are_refused(instance, daemon, monkeypatch):
    monkeypatch.setenv("AIML_LAUNCH_SIGNING_KEY", KEY)  # the code server's, which signs what its schedules launch
    log, now = logging.getLogger("daemon"), datetime.now(UTC)
    list(launch_scheduled_runs(daemon, log, now, {}))  # the schedule starts; its ticks are the minutes after this
    # runs made ahead of the next ticks with the tags Dagster matches to adopt a run as a tick's own: typed ones, and
    # the signed tags and run key of the UI's preview of that tick (which evaluates the schedule in the code server)
    schedule, ahead = launch_probe.defs.get_schedule_def("probe_schedule"), set()
    for minute in range(1, 3):
        mark = (now + timedelta(minutes=minute)).replace(second=0, microsecond=0)
        marked = {"dagster/schedule_name": "probe_schedule", ".dagster/scheduled_execution_time": mark.isoformat()}
        _launch(instance, marked)
        [preview] = schedule.evaluate_tick(build_schedule_context(
            scheduled_execution_time=mark, repository_def=launch_probe.defs.get_repository_def())).run_requests
        ahead.add(_created(instance, make_new_run_id(), {**preview.tags, **marked,
                                                         "dagster/run_key": preview.run_key}).run_id)
    list(launch_scheduled_runs(daemon, log, now + timedelta(minutes=2), {}))
    list(execute_sensor_iteration(daemon, log, None, None))
    monkeypatch.setitem(PROBE, "now", now + timedelta(hours=3))  # the runs start late: the daemon was catching up
    daemons_runs = {tag: [run for run in _ticked_runs(instance, tag) if "dagster/tick" in run.tags] for tag in TICKING}
    assert all(len(runs) == 1 for runs in daemons_runs.values()), daemons_runs  # adopted none of the runs made ahead
    assert daemons_runs["dagster/schedule_name"][0].run_id not in ahead
    for tag, [ticked] in daemons_runs.items():
        assert_ran(instance, ticked.run_id, _run_as_worker(instance, ticked))

        # the same run again, after it was deleted, under its own id and tags
        instance.delete_run(ticked.run_id)
        assert_refused(instance, ticked.run_id, _run_as_worker(instance, _created(instance, ticked.run_id,
                                                                                    dict(ticked.tags))),
                       "its launch signature was used before")

        # a tick written straight into storage, listing a run made there too
        forged_id = make_new_run_id()
        real_tick = instance.schedule_storage.get_tick(int(ticked.tags["dagster/tick"]))
        forged_tick = instance.create_tick(real_tick.tick_data.with_run_info(run_id=forged_id))
        forged_run = _created(instance, forged_id, {tag: ticked.tags[tag], "dagster/tick": str(forged_tick.tick_id)})
        assert_refused(instance, forged_id, _run_as_worker(instance, forged_run), "aiml/launch_origin tag is None")

        # the UI's Re-execute: a new run with the parent's tags (schedule or sensor name and tick included)
        location = daemon.create_request_context().get_code_location("probe")
        remote_job = location.get_job(JobSubsetSelector(location_name="probe", repository_name="__repository__",
                                                        job_name="probe_job", op_selection=None))
        again = instance.create_reexecuted_run(request_context=daemon.create_request_context(), parent_run=ticked,
                                               code_location=location, remote_job=remote_job,
                                               strategy=ReexecutionStrategy.ALL_STEPS, use_parent_run_tags=True)
        assert again.tags[tag] == ticked.tags[tag] and again.tags["dagster/tick"] == ticked.tags["dagster/tick"]
        assert_refused(instance, again.run_id, _run_as_worker(instance, again), f"it re-executes run {ticked.run_id}")

        # a launch that types the schedule's or sensor's tags, naming its real tick
        forged = {tag: ticked.tags[tag], "dagster/tick": ticked.tags["dagster/tick"]}
        run_id, success = _launch(instance, forged)
        assert_refused(instance, run_id, success, f"tick {ticked.tags['dagster/tick']} did not launch run {run_id}")
        run_id, success = _launch(instance, {tag: ticked.tags[tag]})
        assert_refused(instance, run_id, success, "names no tick")
    sensor_tick = daemons_runs["dagster/sensor_name"][0].tags["dagster/tick"]
    run_id, success = _launch(instance, {"dagster/schedule_name": "probe_schedule", "dagster/tick": sensor_tick})
    assert_refused(instance, run_id, success, "is sensor probe_sensor's")


@pytest.mark.parametrize(("tags", "reason"), [
    ({}, "no launch tags"),
    ({"aiml/requested_by": "j.smith", "aiml/change_request": "CHG0012345"}, "aiml/requested_by='j.smith'"),
    ({"aiml/requested_by": CI, "aiml/change_request": "CHG0012345"}, "no launch signing key"),
    ({"dagster/schedule_name": "probe_schedule", "dagster/tick": "9" * 30}, "names no tick"),
    ({"dagster/backfill": "abcdefgh"}, "part of backfill abcdefgh"),
    ({"dagster/sensor_name": "any_sensor", "dagster/tick": "999999"}, "tick 999999 is not on this instance"),
])
def test_runs_launched_by_hand_are_refused_before_any_step(instance, tags, reason):
    assert_refused(instance, *_launch(instance, tags), reason)


def _record(**overrides):
    start = datetime.now(UTC) - timedelta(hours=1)
    return {"number": "CHG0012345", "approval": "approved", "state": "-1", "u_release_tags": f"v1.4.1, {RELEASE}",
            "start_date": f"{start:%Y-%m-%d %H:%M:%S}",
            "end_date": f"{start + timedelta(hours=4):%Y-%m-%d %H:%M:%S}", **overrides}


@pytest.fixture
def ci_env(monkeypatch):
    monkeypatch.setenv("AIML_LAUNCH_SIGNING_KEY", KEY)  # the code server's copy; CI's is in `env` below
    records = {"CHG0012345": _record(), "CHG0000001": _record(number="CHG0000001", approval="requested"),
               "CHG0000002": _record(number="CHG0000002", start_date="2026-01-01 00:00:00",
                                     end_date="2026-01-01 04:00:00"),
               "CHG0000003": _record(number="CHG0000003", u_release_tags="v1.3.0")}
    with servicenow(records) as url:
        yield {"SERVICENOW_INSTANCE_URL": url, "SERVICENOW_USERNAME": USERNAME, "SERVICENOW_PASSWORD": PASSWORD,
               "AIML_LAUNCH_SIGNING_KEY": KEY}


def _signed(env, change_request="CHG0012345", settings=None, **launch):
    return signed_tags(settings or load_settings("prod"), env, **{
        "job": "probe_job", "partition": "", "run_config": {}, "change_request": change_request, "release": RELEASE,
        **launch})


def test_ci_launches_under_an_approved_change_once_and_forgeries_are_refused(instance, ci_env, monkeypatch):
    tags = _signed(ci_env)
    run_id, success = _launch(instance, tags)
    assert_ran(instance, run_id, success)
    [audited] = [e for e in PROBE["audit"].read("run_accepted") if e["run_id"] == run_id]
    assert audited["change_request"] == "CHG0012345" and audited["actor"] == CI and audited["details"]["origin"] == "ci"
    # the signed run, but choosing what of it runs, or how (tags Dagster reads before the signed partition tag)
    for extra, reason in [({"dagster/priority": "100"}, "dagster/priority"),
                          ({"dagster/partition/day": "2026-01-01"}, "dagster/partition/day"),
                          ({"dagster/max_retries": "5"}, "dagster/max_retries")]:
        assert_refused(instance, *_launch(instance, {**_signed(ci_env), **extra}), "tags its signature does not cover",
                       reason)
    result = execute_job(reconstructable(probe_job), instance=instance, tags=_signed(ci_env),
                         asset_selection=[AssetKey("touched")], raise_on_error=False)
    assert_refused(instance, result.run_id, result.success, "selects only some assets")
    uat_signed = {**_signed(ci_env, settings=load_settings("uat")), "aiml/requested_by": CI}  # were the keys shared
    assert_refused(instance, *_launch(instance, uat_signed), "did not sign this launch for prod")

    replay = f"launch signature was used before, by run {run_id}"
    assert_refused(instance, *_launch(instance, tags), replay)
    instance.delete_run(run_id)  # run storage forgets; the audit log does not
    assert_refused(instance, *_launch(instance, tags), replay)
    for forged, reason in [
        ({**tags, SIGNATURE_TAG: "0" * 64}, "does not match"),
        ({**tags, "aiml/change_request": "CHG7654321"}, "does not match"),
        ({**tags, "dagster/partition": "2026-11-01"}, "does not match"),
        ({**tags, "aiml/requested_by": "j.smith"}, "aiml/requested_by is not"),
        ({**tags, "aiml/launch_origin": "schedule:probe_schedule"}, "not 'ci'"),
        (_signed({**ci_env, "AIML_LAUNCH_SIGNING_KEY": "a-guessed-key"}), "does not match"),
    ]:
        assert_refused(instance, *_launch(instance, forged), reason)
    run_id, success = _launch(instance, _signed(ci_env), run_config={"ops": {}})
    assert_refused(instance, run_id, success, "does not match")  # signed for other run config

    fresh = _signed(ci_env)
    monkeypatch.setitem(PROBE, "now", datetime.now(UTC) + timedelta(minutes=61))
    assert_refused(instance, *_launch(instance, fresh), "expired at")
    monkeypatch.setitem(PROBE, "now", None)
    monkeypatch.setitem(PROBE, "release", "v1.5.0")
    assert_refused(instance, *_launch(instance, fresh), f"signed for release {RELEASE}, but this code location "
                                                        "runs v1.5.0")
    monkeypatch.setitem(PROBE, "release", None)
    assert_refused(instance, *_launch(instance, fresh), "no RELEASE.json")


def test_a_signature_is_first_used_once_under_a_race(tmp_path, s3):
    """The ledger's create-if-absent: of many writers racing for one key, exactly one creates it (locally and on S3)."""
    from concurrent.futures import ThreadPoolExecutor

    from aiml_assets.resources.storage import LocalStorage, S3Storage

    s3.create_bucket(Bucket="buk-aiml-audit-test", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    # S3 makes the conditional write atomic; moto's in-process stand-in does not, so its writers go one by one
    for storage, writers in ((LocalStorage(home=str(tmp_path), buckets={"audit": "audit"}), 8),
                             (S3Storage(buckets={"audit": "s3://buk-aiml-audit-test"}), 1)):
        with ThreadPoolExecutor(writers) as pool:
            created = list(pool.map(lambda i: storage.create("audit", "launch_signatures/prod/abc", str(i).encode()),
                                    range(16)))
        assert created.count(True) == 1
        assert storage.get("audit", "launch_signatures/prod/abc") == str(created.index(True)).encode()


@pytest.mark.parametrize(("change_request", "env", "reason"), [
    ("CHG0000001", {}, "approval is 'requested'"),
    ("CHG0000002", {}, "outside its planned window"),
    ("CHG0000003", {}, f"release {RELEASE} is not listed"),
    ("CHG0999999", {}, "no such change request"),
    ("CR-42", {}, "does not match"),
    ("CHG0012345", {"SERVICENOW_PASSWORD": "wrong"}, "could not read the change request: HTTP Error 401"),
    ("CHG0012345", {"SERVICENOW_INSTANCE_URL": "http://servicenow.example.com"}, "over https only"),
    ("CHG0012345", {"AIML_LAUNCH_SIGNING_KEY": ""}, "cannot sign launches"),
])
def test_ci_signs_nothing_without_an_approved_change(ci_env, change_request, env, reason):
    with pytest.raises(ChangeRequestRefused, match=reason):
        _signed({**ci_env, **env}, change_request)


def test_aiml_launch_hands_the_signed_launch_to_dagster_job_launch(ci_env):
    calls = []
    code = launch(load_settings("prod"), ci_env, job=SCORING_JOB, partition="2026-11-02", run_config={},
                  change_request="CHG0012345", release=RELEASE, run=lambda command, check: calls.append(command)
                  or type("Done", (), {"returncode": 0})())
    [command] = calls
    assert code == 0 and command[1:3] == ["job", "launch"] and command[command.index("-j") + 1] == SCORING_JOB
    assert '"dagster/partition": "2026-11-02"' in command[command.index("--tags") + 1]
    assert command[command.index("-w") + 1] == str(REMOTE_WORKSPACE)
    assert launch(load_settings("prod"), ci_env, job=SCORING_JOB, partition="", run_config={},
                  change_request="CHG0000001", release=RELEASE, run=calls.append) == 1 and len(calls) == 1


NOW = datetime.now(UTC)


def _grant(**overrides):
    start = NOW - timedelta(minutes=30)
    return {"id": "BG-2026-001", "person": "j.smith", "environments": ["prod"],
            "reason": "Scores missing after the EDP outage", "incident": "INC0123456",
            "approval": {"role": "VP", "name": "a.person", "approved_at": start - timedelta(minutes=5)},
            "start": start, "end": start + timedelta(hours=2), **overrides}


@pytest.mark.parametrize(("grants", "tags", "reason"), [
    ([_grant()], {}, None),
    ([_grant()], {"aiml/requested_by": "k.jones"}, "it is j.smith's, not k.jones's"),
    ([_grant()], {"dagster/user": "k.jones"}, "is not its aiml/requested_by"),
    ([_grant(start=NOW - timedelta(hours=3), end=NOW - timedelta(hours=1))], {},
     "it ended at"),
    ([_grant(start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=2))], {},
     "after now"),
    ([_grant(end=NOW + timedelta(hours=3))], {}, "at most 2 hours"),
    ([_grant(approval={"role": "VP", "name": "j.smith", "approved_at": NOW - timedelta(hours=1)})], {},
     "a VP other than the holder must approve"),
    ([{k: v for k, v in _grant().items() if k != "approval"}], {}, "approval: Field required"),
    ([_grant(environments=["uat"])], {}, "not prod"),
    ([_grant(id="BG-2026-000", start=NOW - timedelta(days=3),
             end=NOW - timedelta(days=3, hours=-1)), _grant()], {},
     "earlier grant BG-2026-000 has no post-incident review"),
    ([_grant(id="BG-2026-000", start=NOW - timedelta(days=3),
             end=NOW - timedelta(days=3, hours=-1),
             review={"record": "PIR-2026-014", "reviewed_by": "b.person",
                     "reviewed_at": NOW - timedelta(days=1)}), _grant()], {}, None),
], ids=["in-window", "another-person", "platform-user-differs", "expired", "future", "over-2h", "self-approved",
        "unapproved", "other-environment", "unreviewed-earlier-grant", "reviewed-earlier-grant"])
def test_break_glass(instance, grants, tags, reason):
    PROBE["grants"].write_text(yaml.safe_dump({"grants": grants}))
    run_id, success = _launch(instance, {"aiml/break_glass": "BG-2026-001", "aiml/requested_by": "j.smith", **tags})
    if reason:
        return assert_refused(instance, run_id, success, reason)
    assert_ran(instance, run_id, success)
    [audited] = [e for e in PROBE["audit"].read("break_glass_run") if e["run_id"] == run_id]
    assert audited["actor"] == "j.smith" and audited["details"]["incident"] == "INC0123456"


@pytest.mark.parametrize("run_config", [
    {"resources": {"io_manager": {"config": {"base_dir": "/tmp/elsewhere"}}}},
    {"execution": {"config": {"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["os"]}}}}}},
    {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}},
])
def test_run_config_may_set_only_op_config(run_config):
    assert "a run may set only op config" in run_config_refusal(run_config)
    assert run_config_refusal({"ops": {"scores": {"config": {"canary_share": 0.1}}}}) is None


def uat_scoring_job():
    return build_definitions("uat").resolve_job_def(SCORING_JOB)


def prod_scoring_job():
    return build_definitions("prod").resolve_job_def(SCORING_JOB)


@pytest.mark.parametrize(("env", "job"), [("uat", uat_scoring_job), ("prod", prod_scoring_job)])
def test_scoring_launched_by_hand_is_refused_before_any_step(aiml_home, monkeypatch, tmp_path, env, job):
    for name in ("NEXUS_USERNAME", "NEXUS_PASSWORD", "DATABRICKS_HOST"):  # as the deployment has them
        monkeypatch.setenv(name, "set-by-the-deployment")
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:  # multiprocess needs a persistent one
        result = execute_job(reconstructable(job), instance=instance, tags={"aiml/requested_by": "j.smith"},
                             raise_on_error=False)
        assert not result.success and _steps_started(instance, result.run_id) == 0
        reason = _failure(instance, result.run_id)
    assert f"{env} is locked" in reason and SCORING_JOB in reason and "j.smith" in reason, reason


def test_uat_and_prod_are_locked_and_the_rest_are_not(aiml_home):
    assert load_settings("prod").lockdown.ci_principal == CI
    assert load_settings("uat").lockdown.ci_principal == "svc-aiml-gitlab-uat"
    for env in ("local", "lab"):
        assert load_settings(env).lockdown is None
        assert "tick of this instance" not in build_definitions(env).resolve_job_def("main").executor_def.description


@pytest.mark.parametrize("env", ["uat", "prod"])
def test_the_real_scoring_schedule_signs_what_its_executor_accepts(aiml_home, monkeypatch, env):
    from zoneinfo import ZoneInfo

    from aiml_assets.governance.launch_signature import SIGNED_TAGS, signature_refusal
    from aiml_assets.governance.lockdown import DAGSTER_LAUNCH_TAGS

    for name in ("NEXUS_USERNAME", "NEXUS_PASSWORD", "DATABRICKS_HOST"):
        monkeypatch.setenv(name, "set-by-the-deployment")
    monkeypatch.setenv("AIML_LAUNCH_SIGNING_KEY", KEY)
    defs = build_definitions(env)
    for summer in (False, True):  # 05:00 UK time in GMT and in BST
        tick = datetime(2027, 7 if summer else 1, 15, 5, tzinfo=ZoneInfo("Europe/London"))
        context = build_schedule_context(scheduled_execution_time=tick, repository_def=defs.get_repository_def())
        [request] = defs.get_schedule_def(f"{SCORING_JOB}_schedule").evaluate_tick(context).run_requests
        assert request.partition_key == tick.date().isoformat() and request.run_key == request.tags[SIGNATURE_TAG]
        assert set(request.tags) <= SIGNED_TAGS | DAGSTER_LAUNCH_TAGS
        verdict = dict(environment=env, origin=f"schedule:{SCORING_JOB}_schedule", job=SCORING_JOB, tags=request.tags,
                       run_config=request.run_config, key=KEY.encode(), release=None,
                       max_term=timedelta(hours=24))
        assert signature_refusal(**verdict, now=tick + timedelta(hours=3)) is None  # a late catch-up still runs
        assert "expired" in signature_refusal(**verdict, now=tick + timedelta(hours=25))
        other = "prod" if env == "uat" else "uat"
        assert "did not sign" in signature_refusal(**{**verdict, "environment": other}, now=tick)


@pytest.mark.parametrize("now", [datetime(2026, 12, 1, 9, tzinfo=UTC), datetime(2028, 2, 29, 23, 59, tzinfo=UTC),
                                 datetime(2030, 1, 1, 0, 0, tzinfo=UTC)])
def test_the_change_window_follows_the_injected_clock_not_the_calendar(now):
    from aiml_assets.governance.change_management import check_record

    window = {"start_date": f"{now - timedelta(hours=1):%Y-%m-%d %H:%M:%S}",
              "end_date": f"{now + timedelta(hours=1):%Y-%m-%d %H:%M:%S}"}
    record = {**_record(**window)}
    check_record("CHG0012345", record, RELEASE, now, "u_release_tags")  # in its window on that day
    for outside in (now - timedelta(hours=2), now + timedelta(hours=2)):
        with pytest.raises(ChangeRequestRefused, match="outside its planned window"):
            check_record("CHG0012345", record, RELEASE, outside, "u_release_tags")
