"""Perishable storage: the retention purge of an environment's perishable buckets, and the proof that it worked.

Age is the data's first write. An object written more than `storage.retention_days` ago is past retention; so is
a partition first written before then, however often it was rewritten since (an erasure or a re-materialization
does not restart its clock: each purge records every partition's first write, tables.FIRST_WRITTEN). Of that record
and the files' own write times the earlier counts, so a forged record can only bring a purge forward.

Delta tables are purged through Delta, never from under it. Each day, for each table:
- a partition past retention is deleted in one commit, and exactly its files destroyed;
- so is every file no longer live (replaced by a rewrite) written before the cutoff, although versions within the
  retention still read it: Delta's vacuum would keep it for a retention after its replacement;
- Delta's own vacuum, at the retention, destroys what no version of the retention period reads;
- then the log is checkpointed, after the delete: the checkpoint holds only what remains, statistics included;
- if either destroyed files, every log entry before that checkpoint is destroyed (`scrub_history`): the versions
  they hold, within the retention or not, read destroyed files, and their add actions and checkpoints hold those
  files' statistics (min/max customer ids). Time travel to before the purge ends, and nothing readable is lost;
- otherwise log entries past retention, up to the oldest checkpoint written within it, are destroyed, so versions
  within the retention can still be time-travelled to (bar its first day) and nothing older can;
- a table none of whose objects was written within the retention is removed whole, with its catalog name.

Every other version past retention in the bucket (noncurrent versions a deletion leaves on a versioned bucket,
delete markers, leftovers outside any table) is destroyed version by version. The current objects of a live table
are never deleted from under it: one past retention that the steps above did not remove is left for the proving
check to name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiml_assets.resources.storage import ObjectVersion, Storage, StoredObject
from aiml_assets.sql_identifiers import IDENTIFIER, ISO_DATE, UnsafeSqlValue

DELTA_LOG = "_delta_log"
_LOG_VERSION = re.compile(r"^(\d{20})\.")
# The partition columns of the asset tables (asset_tables: each is partitioned by its snapshot date) and the rule of
# their values. A Delta log is only data in a bucket: what it says goes into a DELETE and into keys only once checked.
PARTITION_COLUMNS = {"snapshot_date": ISO_DATE}


@dataclass
class PurgeReport:
    role: str
    cutoff: datetime
    retention: timedelta
    partitions_deleted: dict[str, list[str]] = field(default_factory=dict)  # table key -> ["column=value", ...]
    tables_removed: list[str] = field(default_factory=list)
    versions_destroyed: int = 0


def cutoff(now: datetime, retention_days: int) -> datetime:
    return now - timedelta(days=retention_days)


def past_retention(storage: Storage, role: str, limit: datetime) -> list[ObjectVersion]:
    """Every object version in the bucket written before `limit`: after a purge, none."""
    return [v for v in storage.versions(role) if v.last_modified < limit]


def delta_tables(objects: Iterable[ObjectVersion | StoredObject]) -> set[str]:
    """The keys of the Delta tables among a bucket's objects: the folders holding a `_delta_log`."""
    return {o.key.split(f"/{DELTA_LOG}/")[0] for o in objects if f"/{DELTA_LOG}/" in o.key}


def purge(storage: Storage, tables, catalog, *, role: str, retention_days: int, now: datetime, run_id: str,
          name_of: Callable[[str], str | None], log: Callable[[str], None] = print) -> PurgeReport:
    """Remove everything in the `role` bucket written before `now - retention_days`."""
    report = PurgeReport(role, cutoff(now, retention_days), timedelta(days=retention_days))
    surviving = set()
    for key in sorted(delta_tables(list(storage.versions(role)))):
        if _purge_table(storage, tables, catalog, role, key, run_id, name_of(key), report, log):
            surviving.add(key)
    _sweep(storage, role, surviving, report)
    log(f"purge of the {role} bucket before {report.cutoff:%Y-%m-%d %H:%M} UTC: {report.versions_destroyed} object "
        f"versions destroyed, {len(report.tables_removed)} tables removed")
    return report


def _purge_table(storage, tables, catalog, role, key, run_id, name, report, log) -> bool:
    """Purge one Delta table; returns whether it still exists."""
    location, limit = storage.uri(role, key), report.cutoff
    versions = list(storage.versions(role, f"{key}/"))
    objects = {v.key: v for v in versions if v.is_latest and not v.delete_marker}
    if all(v.last_modified < limit for v in objects.values()):  # nothing of it written within the retention
        _destroy(storage, role, versions, report)
        if name and catalog.exists(name) and catalog.location(name).rstrip("/") == location.rstrip("/"):
            catalog.drop(name)
        report.tables_removed.append(key)
        log(f"{key}: nothing written within the retention; table removed" + (f", {name} dropped" if name else ""))
        return False
    files = defaultdict(list)  # partition -> its live files, as bucket keys
    for path in tables.live_files(location):
        files[_partition(key, path)].append(f"{key}/{path}")
    stale = _stale(files, objects, tables.record_first_writes(location, run_id=run_id), limit)
    if stale:
        version = tables.delete_partitions(location, [dict(p) for p in stale], run_id=run_id)
        tables.record_first_writes(location, run_id=run_id)  # forgets them: written again, they start afresh
        removed = {k for keys in stale.values() for k in keys}
        _destroy(storage, role, [v for v in versions if v.key in removed], report)
        report.partitions_deleted[key] = sorted(map(_label, stale))
        log(f"{key}: {len(stale)} partitions past retention deleted (table version {version})")
    live = {k for keys in files.values() for k in keys}
    replaced = [v for k, v in objects.items()
                if k not in live and f"/{DELTA_LOG}/" not in k and v.last_modified < limit]
    _destroy(storage, role, replaced, report)
    tables.vacuum(location, retain_hours=int(report.retention.total_seconds() // 3600))
    if stale or replaced:
        report.versions_destroyed += scrub_history(storage, tables, role, key)
    else:
        tables.checkpoint(location)
        _prune_log(storage, role, key, report)
    return True


def _label(partition: tuple[tuple[str, str], ...]) -> str:
    return "/".join(f"{column}={value}" for column, value in partition)


def _stale(files, objects, first_written: dict[str, int], limit: datetime) -> dict:
    """The partitions past retention: first written before `limit`, or every file of them written before it."""
    return {partition: keys for partition, keys in files.items() if partition and (
        first_written.get(_label(partition), limit.timestamp() * 1000) < limit.timestamp() * 1000
        or all(k in objects and objects[k].last_modified < limit for k in keys))}


def _destroy(storage, role, versions, report) -> None:
    for version in versions:
        storage.destroy(version, role)
    report.versions_destroyed += len(versions)


def _partition(key: str, path: str) -> tuple[tuple[str, str], ...]:
    """The Hive-style partition of a data file's path in the log of table `key`: ((column, value), ...), empty if
    unpartitioned; refused unless each column is a known partition column and its value follows that column's rule."""
    partition = tuple(tuple(part.split("=", 1)) for part in path.split("/")[:-1] if "=" in part)
    for column, value in partition:
        where = f"{key}: data file {path!r} in the Delta log"
        IDENTIFIER.check(column, f"{where}: partition column")
        if column not in PARTITION_COLUMNS:
            raise UnsafeSqlValue(f"{where}: partition column {column!r} is not a partition column of the asset "
                                 f"tables ({', '.join(PARTITION_COLUMNS)})")
        PARTITION_COLUMNS[column].check(value, f"{where}: partition {column}")
    return partition


def _log_entries(storage, role, key) -> list[ObjectVersion]:
    """The current versioned entries of a table's log: commits, checkpoints, checksums (not `_last_checkpoint`)."""
    return [v for v in storage.versions(role, f"{key}/{DELTA_LOG}/")
            if v.is_latest and not v.delete_marker and _LOG_VERSION.match(v.key.rsplit("/", 1)[1])]


def scrub_history(storage: Storage, tables, role: str, key: str) -> int:
    """Checkpoint the table at its latest version and destroy every log entry before it, and every noncurrent object
    version under the table: what the table held before (data, add actions and checkpoints with their statistics)
    is then nowhere in the bucket. Returns the object versions destroyed."""
    location = storage.uri(role, key)
    tables.checkpoint(location)
    latest = tables.version(location)
    doomed = [entry for entry in _log_entries(storage, role, key) if _log_version(entry) < latest]
    for entry in doomed:
        storage.destroy(entry, role)
    return len(doomed) + destroy_noncurrent(storage, role, f"{key}/")


def _prune_log(storage, role, key, report) -> None:
    """Destroy the log entries past retention that the oldest checkpoint written within it makes unnecessary."""
    entries = _log_entries(storage, role, key)
    recent = [_log_version(v) for v in entries if ".checkpoint." in v.key and v.last_modified >= report.cutoff]
    if recent:
        _destroy(storage, role, [entry for entry in entries
                                 if entry.last_modified < report.cutoff and _log_version(entry) <= min(recent)], report)


def _log_version(entry: ObjectVersion) -> int:
    return int(_LOG_VERSION.match(entry.key.rsplit("/", 1)[1]).group(1))


def _sweep(storage, role, surviving, report) -> None:
    """Destroy every version past retention except the current objects of the tables that remain, then the delete
    markers left over no version (they hide nothing; S3's lifecycle would remove them a day later)."""
    doomed, kept = [], defaultdict(list)
    for version in storage.versions(role):
        current = version.is_latest and not version.delete_marker
        # never a current object from under a live table; the proving check names it
        if version.last_modified < report.cutoff and not (
                current and any(version.key.startswith(f"{key}/") for key in surviving)):
            doomed.append(version)
        else:
            kept[version.key].append(version)
    doomed += [v for versions in kept.values() if all(m.delete_marker for m in versions) for v in versions]
    _destroy(storage, role, doomed, report)


def destroy_noncurrent(storage: Storage, role: str, prefix: str) -> int:
    """Destroy the noncurrent versions and delete markers under `prefix` whatever their age (an erasure cannot wait
    for the bucket's lifecycle rule)."""
    doomed = [v for v in storage.versions(role, prefix) if not v.is_latest or v.delete_marker]
    for version in doomed:
        storage.destroy(version, role)
    return len(doomed)
