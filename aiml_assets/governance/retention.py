"""Perishable storage: the retention purge of an environment's perishable buckets, and the proof that it worked.

Age is write time. An object written more than `storage.retention_days` ago is past retention, just as the lab
assets' freshness policy (fail window = retention) counts from the materialization that wrote them.

Delta tables are purged through Delta, never from under it:
- a partition holding a file past retention is deleted in one commit;
- the files no version reads any more are vacuumed and the log checkpointed, and the log entries before the
  checkpoint that are past retention are removed, so nothing can be time-travelled back;
- a table left with nothing is removed whole and its catalog name dropped.

Everything else in the bucket that is past retention (leftovers, the noncurrent versions a deletion leaves on a
versioned bucket, delete markers) is destroyed version by version.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiml_assets.resources.storage import ObjectVersion, Storage

DELTA_LOG = "_delta_log"
_LOG_VERSION = re.compile(r"^(\d{20})\.")


@dataclass
class PurgeReport:
    role: str
    cutoff: datetime
    partitions_deleted: dict[str, list[str]] = field(default_factory=dict)  # table key -> ["column=value", ...]
    tables_removed: list[str] = field(default_factory=list)
    versions_destroyed: int = 0


def cutoff(now: datetime, retention_days: int) -> datetime:
    return now - timedelta(days=retention_days)


def past_retention(storage: Storage, role: str, limit: datetime) -> list[ObjectVersion]:
    """Every object version in the bucket written before `limit`: after a purge, none."""
    return [v for v in storage.versions(role) if v.last_modified < limit]


def delta_tables(versions: list[ObjectVersion]) -> set[str]:
    """The keys of the Delta tables in a bucket: the folders holding a `_delta_log`."""
    return {v.key.split(f"/{DELTA_LOG}/")[0] for v in versions if f"/{DELTA_LOG}/" in v.key}


def purge(storage: Storage, tables, catalog, *, role: str, retention_days: int, now: datetime, run_id: str,
          name_of: Callable[[str], str | None], log: Callable[[str], None] = print) -> PurgeReport:
    """Remove everything in the `role` bucket written before `now - retention_days`."""
    report = PurgeReport(role, cutoff(now, retention_days))
    surviving = set()
    for key in sorted(delta_tables(list(storage.versions(role)))):
        if _purge_table(storage, tables, catalog, role, key, run_id, name_of(key), report, log):
            surviving.add(key)
    _sweep(storage, tables, role, surviving, report)
    log(f"purge of the {role} bucket before {report.cutoff:%Y-%m-%d %H:%M} UTC: {report.versions_destroyed} object "
        f"versions destroyed, {len(report.tables_removed)} tables removed")
    return report


def _purge_table(storage, tables, catalog, role, key, run_id, name, report, log) -> bool:
    """Purge one Delta table; returns whether it still exists."""
    location, limit = storage.uri(role, key), report.cutoff
    objects = [v for v in storage.versions(role, f"{key}/") if v.is_latest and not v.delete_marker]
    if all(v.last_modified >= limit for v in objects):
        return True
    written = {v.key: v.last_modified for v in objects}
    live = tables.live_files(location)
    stale = {_partition(f) for f in live if written.get(f"{key}/{f}", limit) < limit}
    if stale == {_partition(f) for f in live}:  # nothing within retention (or an unpartitioned table past it)
        for version in storage.versions(role, f"{key}/"):
            storage.destroy(version, role)
            report.versions_destroyed += 1
        if name and catalog.exists(name):
            catalog.drop(name)
        report.tables_removed.append(key)
        log(f"{key}: every partition past retention; table removed" + (f", {name} dropped" if name else ""))
        return False
    by_column = defaultdict(list)
    for column, value in sorted(stale):
        by_column[column].append(value)
    for column, values in by_column.items():
        version = tables.delete_partitions(location, column, values, run_id=run_id)
        report.partitions_deleted[key] = [f"{column}={value}" for value in values]
        log(f"{key}: partitions {', '.join(values)} past retention deleted (table version {version})")
    tables.forget_history(location)
    _prune_log(storage, role, key, report)
    return True


def _partition(path: str) -> tuple[str, str] | None:
    first = path.split("/")[0]
    return tuple(first.split("=", 1)) if "=" in first else None


def _prune_log(storage, role, key, report) -> None:
    """Remove the log entries the latest checkpoint makes unnecessary, once they are past retention."""
    entries = [v for v in storage.versions(role, f"{key}/{DELTA_LOG}/") if _LOG_VERSION.match(v.key.rsplit("/", 1)[1])]
    checkpoints = [_log_version(v) for v in entries if ".checkpoint." in v.key]
    if not checkpoints:
        return
    for entry in entries:
        if _log_version(entry) < max(checkpoints) and entry.last_modified < report.cutoff:
            storage.destroy(entry, role)
            report.versions_destroyed += 1


def _log_version(entry: ObjectVersion) -> int:
    return int(_LOG_VERSION.match(entry.key.rsplit("/", 1)[1]).group(1))


def _sweep(storage, tables, role, surviving, report) -> None:
    """Destroy every version past retention, except what a surviving table's current version still needs."""
    needed = {f"{key}/{path}" for key in surviving for path in tables.live_files(storage.uri(role, key))}
    for version in past_retention(storage, role, report.cutoff):
        in_log = any(version.key.startswith(f"{key}/{DELTA_LOG}/") for key in surviving)
        if version.is_latest and not version.delete_marker and (version.key in needed or in_log):
            continue  # cannot go without breaking the table; the proving check will name it
        storage.destroy(version, role)
        report.versions_destroyed += 1
    _drop_bare_delete_markers(storage, role, "")


def _drop_bare_delete_markers(storage: Storage, role: str, prefix: str) -> None:
    """A delete marker over no version hides nothing; S3's lifecycle would remove it a day later."""
    by_key = defaultdict(list)
    for version in storage.versions(role, prefix):
        by_key[version.key].append(version)
    for versions in by_key.values():
        if all(v.delete_marker for v in versions):
            for marker in versions:
                storage.destroy(marker, role)


def destroy_noncurrent(storage: Storage, role: str, prefix: str) -> int:
    """Destroy the noncurrent versions and delete markers under `prefix` whatever their age (an erasure cannot wait
    for the bucket's lifecycle rule)."""
    doomed = [v for v in storage.versions(role, prefix) if not v.is_latest or v.delete_marker]
    for version in doomed:
        storage.destroy(version, role)
    return len(doomed)
