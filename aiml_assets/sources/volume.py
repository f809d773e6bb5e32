"""Completeness and volume of the EDP event products over the months the lab snapshots read.

The window: features read the 365 days before a snapshot, labels the label window after it (settings.features).
A run's snapshots are its partitions; a run without snapshot partitions judges what a default main run builds (the
latest `main_job_snapshots` snapshots whose label window the data completes). An environment without lab features
judges the scoring day's feature history. Only the months the data horizon has completed are judged: the horizon's
own month, when the data ends before its last day, holds a partial count.

Each event product counts its rows per calendar month of its event time (relationships.py declares which), and
what "has data" means depends on the product:
  - dense (transactions; holding openings, which EDP's customers make every month): every month has rows, and its
    rows are within `sources.volume_band` of the median of its non-empty neighbouring months (two either side, in
    the window). A month is flagged only when its distance from that median is also beyond chance (more than three
    Poisson standard deviations, 3 * sqrt(median)): at EDP's volumes the band decides, while a small local seed's
    sparse months are not flagged for noise.
  - sparse (campaign contacts: a product's campaign runs in some months only): a month without rows happens; two
    such months running are a gap. No volume band: a month's contacts follow how many campaigns ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import median

from aiml_assets.quality import Violation
from aiml_assets.settings import Settings
from aiml_assets.sources.horizon import DataHorizon

FEATURE_HISTORY = timedelta(days=365)  # the longest window a feature reads (features/customer_features.py WINDOWS)
NEIGHBOURS = 2  # months either side whose median a month's rows are compared with
CHANCE = 3.0  # Poisson standard deviations a month must be off its neighbours' median to be flagged
PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


@dataclass(frozen=True)
class MonthlyVolume:
    product: str
    column: str  # the event time whose calendar month a row counts in
    dense: bool  # every month has rows in a steady volume; sparse: never two months running without rows


def month_of(day: date) -> date:
    return day.replace(day=1)


def next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def _months(first: date, last: date) -> list[date]:
    months, month = [], month_of(first)
    while month <= last:
        months.append(month)
        month = next_month(month)
    return months


def _as_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:  # another job's partition (a product code): not a snapshot
        return None


def run_snapshots(tags: Mapping[str, str]) -> list[date] | None:
    """The snapshots a run builds, from its partition tags (one partition or a range); None if it has none."""
    if single := _as_date(tags.get(PARTITION_TAG)):
        return [single]
    start, end = (_as_date(tags.get(tag)) for tag in RANGE_TAGS)
    return _months(start, end) if start and end else None


def default_snapshots(settings: Settings, horizon: DataHorizon) -> list[date]:
    features = settings.features
    fillable = _months(features.snapshot_start, horizon.scoring_day)
    labelled = [s for s in fillable if horizon.completes_labels(s, features.label_window_days)]
    return labelled[-features.main_job_snapshots:]


def read_window(settings: Settings, horizon: DataHorizon, tags: Mapping[str, str]) -> tuple[date, date] | None:
    """[first day, end) that the run's lab snapshots read, or the scoring day's feature history; None if no
    snapshot can be filled."""
    if settings.features is None:
        return horizon.scoring_day - FEATURE_HISTORY, horizon.scoring_day
    snapshots = run_snapshots(tags) or default_snapshots(settings, horizon)
    if not snapshots:
        return None
    return min(snapshots) - FEATURE_HISTORY, max(snapshots) + timedelta(days=settings.features.label_window_days)


def complete_months(window: tuple[date, date], horizon: DataHorizon) -> list[date]:
    """The calendar months the window touches that the data horizon has completed."""
    start, end = window
    return [m for m in _months(start, end - timedelta(days=1)) if next_month(m) <= horizon.scoring_day]


def _beyond_chance(rows: int, expected: float) -> bool:
    return abs(rows - expected) > CHANCE * math.sqrt(expected)


def _dense_violations(volume: MonthlyVolume, counts: list[int], months: list[date],
                      band: tuple[float, float]) -> list[Violation]:
    low, high = band
    violations = []
    for i, (month, rows) in enumerate(zip(months, counts)):
        around = [n for n in counts[max(i - NEIGHBOURS, 0):i] + counts[i + 1:i + 1 + NEIGHBOURS] if n]
        if not around:
            continue
        expected = median(around)
        ratio = rows / expected
        if (low <= ratio <= high) or not _beyond_chance(rows, expected):
            continue
        found = "no rows (a gap)" if rows == 0 else f"{rows} rows, {ratio:.2f}x"
        violations.append(Violation(volume.column, f"monthly volume: {month:%Y-%m} has {found} against the median "
                                    f"{expected:g} of its neighbouring months (band {low}x-{high}x)", None))
    return violations


def _sparse_violations(volume: MonthlyVolume, counts: list[int], months: list[date]) -> list[Violation]:
    return [Violation(volume.column, f"monthly volume: {before:%Y-%m} and {month:%Y-%m} have no rows (a gap: a "
                      "sparse product may miss one month, never two running)", None)
            for before, month, previous, rows in zip(months, months[1:], counts, counts[1:])
            if previous == 0 and rows == 0]


def volume_violations(volume: MonthlyVolume, rows_by_month: Mapping[date, int], months: list[date],
                      band: tuple[float, float]) -> list[Violation]:
    """The gaps and out-of-band months of `volume`'s product among `months`, from its rows per month."""
    counts = [rows_by_month.get(month, 0) for month in months]
    if months and not any(counts):
        return [Violation(volume.column, f"monthly volume: no rows from {months[0]:%Y-%m} to {months[-1]:%Y-%m} "
                          "(the months the lab snapshots read)", None)]
    if volume.dense:
        return _dense_violations(volume, counts, months, band)
    return _sparse_violations(volume, counts, months)
