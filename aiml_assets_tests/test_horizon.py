"""What a default run picks follows the EDP data, never the calendar: selection under several injected todays and
several seed end dates, and the horizon observed from the seeded sources."""

from datetime import date, timedelta

import pytest

from aiml_assets.definitions import MAIN_JOB, SCORING_JOB, build_definitions
from aiml_assets.local_run import local_horizon, plan
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import load_settings
from aiml_assets.sources.horizon import DataHorizon, DataHorizonExceeded, existing_keys

TODAYS = [date(2026, 12, 1), date(2027, 2, 28), date(2028, 2, 29), date(2030, 1, 1)]
END_DATES = [date(2026, 10, 31), date(2026, 11, 30), date(2027, 1, 31), date(2027, 2, 27)]


@pytest.fixture(scope="module")
def partitions():
    defs = build_definitions("local")
    return defs.resolve_job_def(MAIN_JOB).partitions_def, defs.resolve_job_def(SCORING_JOB).partitions_def


@pytest.mark.parametrize("today", TODAYS)
@pytest.mark.parametrize("end", END_DATES)
def test_snapshots_and_scoring_day_follow_the_data_whatever_today_is(partitions, today, end):
    settings, horizon = load_settings("local"), DataHorizon(end)
    if end >= today:  # data past today: its scoring day is not a partition yet, and that is said, not guessed
        with pytest.raises(DataHorizonExceeded, match=f"scoring day {end + timedelta(days=1)} is not a scoring"):
            plan(settings, horizon, today, *partitions)
        return
    chosen = plan(settings, horizon, today, *partitions)
    window = timedelta(days=settings.features.label_window_days)
    snapshots = [date.fromisoformat(s) for s in chosen.snapshots]
    assert len(snapshots) == settings.features.main_job_snapshots
    assert all(s + window <= end + timedelta(days=1) for s in snapshots)  # every label window is in the data
    following = (snapshots[-1].replace(day=28) + timedelta(days=4)).replace(day=1)
    assert following + window > end + timedelta(days=1)  # and the next monthly snapshot's would not be
    assert all(b.month - a.month in (1, -11) for a, b in zip(snapshots, snapshots[1:]))  # consecutive months
    assert chosen.scoring_day == (end + timedelta(days=1)).isoformat()
    # the same choice on every later day: the calendar only bounds which partitions exist
    assert chosen == plan(settings, horizon, today + timedelta(days=400), *partitions)


def test_the_clock_alone_would_pick_a_snapshot_the_data_cannot_label(partitions):
    # what the main job did before: the latest partitions that exist on 2026-12-01, for data ending 2026-10-31
    latest = existing_keys(partitions[0], date(2026, 12, 1))[-3:]
    assert latest[-1] == "2026-11-01"
    chosen = plan(load_settings("local"), DataHorizon(date(2026, 10, 31)), date(2026, 12, 1), *partitions)
    assert chosen.snapshots == ["2026-08-01", "2026-09-01", "2026-10-01"] and chosen.scoring_day == "2026-11-01"


def test_data_too_short_for_any_label_window_is_refused(partitions):
    first = date.fromisoformat(existing_keys(partitions[0], date(2026, 12, 1))[0])
    with pytest.raises(DataHorizonExceeded, match="no snapshot has a complete 30-day label window"):
        plan(load_settings("local"), DataHorizon(first + timedelta(days=10)), date(2026, 12, 1), *partitions)


def test_the_horizon_is_observed_from_the_sources(local_edp, spark):
    horizon = local_horizon(build_resources(load_settings("local")))
    assert horizon == DataHorizon(date(2026, 10, 31))  # conftest seeds to seed_edp's default end date
    assert horizon.fills_features(date(2026, 11, 1)) and not horizon.fills_features(date(2026, 11, 2))
    assert horizon.completes_labels(date(2026, 10, 1), 30) and not horizon.completes_labels(date(2026, 10, 3), 30)
