"""Prod lockdown: a run not started by a schedule, a sensor or CI with a change request is refused before any step
runs; each way of launching is tried through the executor Dagster really uses (`execute_job`, which the run
launcher also goes through; `execute_in_process` would swap the executor for an in-process one)."""

import pytest
from dagster import DagsterEventType, DagsterInstance, Definitions, asset, define_asset_job, execute_job, in_process_executor, reconstructable

from aiml_assets.definitions import SCORING_JOB, build_definitions
from aiml_assets.governance.lockdown import locked, refusal
from aiml_assets.settings import LockdownSettings, load_settings

CI = "svc-aiml-gitlab-prod"
LOCK = LockdownSettings(ci_principal=CI)


@asset
def touched() -> int:
    return 1


def locked_job():
    """A small job on the locked executor, so that the allowed launches can run to the end here."""
    job = define_asset_job("locked_job", selection=[touched])
    defs = Definitions(assets=[touched], jobs=[job], executor=locked(in_process_executor, LOCK, "prod"))
    return defs.resolve_job_def("locked_job")


def prod_scoring_job():
    return build_definitions("prod").resolve_job_def(SCORING_JOB)


LAUNCHES = {
    "schedule": ({"dagster/schedule_name": "daily_scoring_schedule"}, None),
    "sensor": ({"dagster/sensor_name": "edp_refreshed"}, None),
    "CI with a change request": ({"aiml/requested_by": CI, "aiml/change_request": "CHG0012345"}, None),
    "CI without a change request": ({"aiml/requested_by": CI}, "without an approved change request id"),
    "CI with a malformed change request": ({"aiml/requested_by": CI, "aiml/change_request": "CR-42"},
                                           "without an approved change request id"),
    "by hand from the UI": ({}, "no schedule, sensor or CI tags"),
    "by hand, naming a change request": ({"aiml/requested_by": "j.smith", "aiml/change_request": "CHG0012345"},
                                         "aiml/requested_by='j.smith'"),
    "a backfill from the UI": ({"dagster/backfill": "abcdefgh"}, "no schedule, sensor or CI tags"),
}


def _run(instance, job_fn, tags):
    return execute_job(reconstructable(job_fn), instance=instance, tags=tags, raise_on_error=False)


def _steps_started(instance, run_id) -> int:
    return len(instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_START).records)


def _failure(instance, run_id) -> str:
    failure = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return str(failure[0].event_log_entry.dagster_event.event_specific_data.error) if failure else ""


@pytest.mark.parametrize("launch", LAUNCHES, ids=list(LAUNCHES))
def test_each_way_of_launching_a_locked_run(instance, launch):
    tags, refused = LAUNCHES[launch]
    result = _run(instance, locked_job, tags)
    if refused is None:
        assert result.success and _steps_started(instance, result.run_id) == 1
        return
    assert not result.success and _steps_started(instance, result.run_id) == 0
    reason = _failure(instance, result.run_id)
    assert "prod is locked against runs launched by hand" in reason and refused in reason, reason
    assert refusal(tags, LOCK) is not None


def test_prod_scoring_launched_by_hand_is_refused_before_any_step(aiml_home, monkeypatch, tmp_path):
    for name in ("NEXUS_USERNAME", "NEXUS_PASSWORD", "DATABRICKS_HOST"):  # as the prod deployment has them
        monkeypatch.setenv(name, "set-by-the-deployment")
    # prod's multiprocess executor needs a persistent instance, as the deployment has
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        result = _run(instance, prod_scoring_job, {"aiml/requested_by": "j.smith"})
        assert not result.success and _steps_started(instance, result.run_id) == 0
        reason = _failure(instance, result.run_id)
    assert "refused before any step ran" in reason and "run " in reason and SCORING_JOB in reason, reason


def test_only_prod_is_locked(aiml_home):
    assert load_settings("prod").lockdown.ci_principal == CI
    for env in ("local", "lab", "uat"):
        assert load_settings(env).lockdown is None
        assert "not started by a schedule" not in build_definitions(env).resolve_job_def("main").executor_def.description
