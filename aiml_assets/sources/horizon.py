"""The EDP data horizon: the last day the sources hold events for, and the partitions it can fill.

What a default run picks (the main job's snapshots, the scoring day) follows this horizon, never the calendar: the
partition definitions grow with the clock, the data does not. `today` only bounds the choice to partitions that
exist; it never moves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dagster import AssetKey, PartitionsDefinition
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# The daily, densest product: a day without transactions is a day EDP has not published yet. (Holdings and
# campaign responses are sparse: their latest event can be days old on a complete day.)
HORIZON_COLUMN = "transaction_ts"
PARTITION_TIMEZONE = ZoneInfo("Europe/London")


class DataHorizonExceeded(ValueError):
    """A partition the EDP data cannot fill: its features or labels would need events past the horizon."""


@dataclass(frozen=True)
class DataHorizon:
    last_event_day: date  # the sources hold events up to the end of this day

    @property
    def scoring_day(self) -> date:
        """Scores for a day use every event before it: the day after the horizon is the latest that is complete."""
        return self.last_event_day + timedelta(days=1)

    def fills_features(self, snapshot: date) -> bool:
        """Features as of `snapshot` use events strictly before it."""
        return snapshot <= self.scoring_day

    def completes_labels(self, snapshot: date, window_days: int) -> bool:
        """Labels take openings in [snapshot, snapshot + window): every day of the window must be in the data."""
        return snapshot + timedelta(days=window_days) <= self.scoring_day

    def describe(self) -> str:
        return f"the EDP data ends {self.last_event_day}"


def refuse_unfillable(key: AssetKey, horizon: DataHorizon, days: list[date],
                      problem: Callable[[DataHorizon, date], str | None]) -> None:
    """Before anything is written: refuses unless the data can fill every partition of the run (`problem` says why
    one cannot, or None)."""
    problems = [f"{day}: {why}" for day in days if (why := problem(horizon, day))]
    if problems:
        raise DataHorizonExceeded(f"{key.to_user_string()}: {horizon.describe()}; " + "; ".join(problems))


def horizon_of(latest_event: datetime | None) -> DataHorizon:
    if latest_event is None:
        raise DataHorizonExceeded("the EDP transactions hold no events: no partition can be filled")
    return DataHorizon(latest_event.date())


def observed_horizon(transactions: DataFrame) -> DataHorizon:
    return horizon_of(transactions.agg(F.max(HORIZON_COLUMN)).first()[0])


def existing_keys(partitions: PartitionsDefinition, today: date) -> list[str]:
    """The partition keys that exist on `today` (at its first moment, UK time: the partitions' own clock)."""
    return list(partitions.get_partition_keys(current_time=datetime.combine(today, time.min, PARTITION_TIMEZONE)))


def labelled_snapshots(partitions: PartitionsDefinition, horizon: DataHorizon, *, window_days: int, count: int,
                       today: date) -> list[str]:
    """The latest `count` snapshots whose label window the data completes, among those that exist on `today`."""
    existing = existing_keys(partitions, today)
    complete = [key for key in existing if horizon.completes_labels(date.fromisoformat(key), window_days)]
    if not complete:
        raise DataHorizonExceeded(f"{horizon.describe()}: no snapshot has a complete {window_days}-day label window "
                                  f"(the first snapshot that exists on {today}: {existing[0] if existing else 'none'})")
    return complete[-count:]


def scoring_partition(partitions: PartitionsDefinition, horizon: DataHorizon, today: date) -> str:
    """The day after the horizon, if it is a scoring partition on `today`."""
    key = horizon.scoring_day.isoformat()
    if key not in existing_keys(partitions, today):
        raise DataHorizonExceeded(f"{horizon.describe()}: scoring day {key} is not a scoring partition on {today} "
                                  "(before inference.scoring_start, or after today)")
    return key
